"""GET /v1/models: OpenAI's list shape, each entry with its price, vision flag and token limits."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.auth import model_allowed
from gateway.state import KEY, RUNTIME


async def list_models(request: web.Request) -> web.Response:
    snapshot = request.app[RUNTIME].snapshot
    record = request[KEY]
    created = int(snapshot.loaded_at)
    data = [route.public_info(created) for mid, route in snapshot.catalog.routes.items()
            if model_allowed(record, mid)]
    return web.Response(body=orjson.dumps({"object": "list", "data": data}), content_type="application/json")
