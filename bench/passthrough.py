"""The reference: a bare aiohttp pass-through (one shared ClientSession, no auth, no accounting).

    python bench/passthrough.py --port 9001 --upstream http://127.0.0.1:9000
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from aiohttp.typedefs import Handler

SESSION = web.AppKey("session", aiohttp.ClientSession)
URL = web.AppKey("url", str)


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app[SESSION].post(request.app[URL], data=body,
                                         headers={"Content-Type": "application/json"}) as upstream:
        resp = web.StreamResponse(status=upstream.status,
                                  headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")})
        await resp.prepare(request)
        async for data in upstream.content.iter_any():
            await resp.write(data)
        await resp.write_eof()
        return resp


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    yield
    await app[SESSION].close()


def arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    return parser.parse_args()


def serve(handler: Handler, port: int, upstream: str, *contexts: Any) -> None:
    """`handler` on POST /v1/chat/completions, relaying to `upstream` through one shared session: the
    pass-through, and `floor.py` served exactly as it is (`contexts`: its own resources)."""
    app = web.Application()
    app[URL] = upstream.rstrip("/") + "/v1/chat/completions"
    app.cleanup_ctx.append(session_ctx)
    app.cleanup_ctx.extend(contexts)
    app.router.add_post("/v1/chat/completions", handler)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                loop=uvloop.new_event_loop(), backlog=4096)


def main() -> None:
    args = arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    serve(relay, args.port, args.upstream)


if __name__ == "__main__":
    main()
