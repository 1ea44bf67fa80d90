"""GET /openapi.json: this gateway's OpenAPI description, with the running config's model ids as examples."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway import openapi
from gateway.state import RUNTIME


async def openapi_json(request: web.Request) -> web.Response:
    catalog = request.app[RUNTIME].snapshot.catalog
    return web.Response(body=orjson.dumps(openapi.document(list(catalog.routes))), content_type="application/json")
