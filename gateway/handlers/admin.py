"""Admin routes (admin token only): what the operator needs to see that no client may."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.state import RUNTIME


async def egress(request: web.Request) -> web.Response:
    """Every pool and proxy with its health state, by name and host only: no URL, no credential."""
    pools = request.app[RUNTIME].egress.snapshot()
    return web.Response(body=orjson.dumps({"pools": pools}), content_type="application/json")
