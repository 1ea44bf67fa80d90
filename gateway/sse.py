"""The SSE writer: `data:` lines, keep-alive comments, `[DONE]`; never compressed, never buffered.

Events are written as whole frames (one `write` per batch of complete events), so a keep-alive comment
can never land inside an event.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",  # nginx in front must not hold events back
}
KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


class ClientGone(Exception):
    """The client closed its connection; the stream stops and the upstream is closed."""


def frame(obj: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


class SSEWriter:
    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        self.events_sent = 0

    async def start(self) -> None:
        await self.response.prepare(self.request)

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def write(self, data: bytes) -> None:
        if self.client_gone():
            raise ClientGone
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError) as exc:  # reset, or "cannot write to closing transport"
            raise ClientGone from exc

    async def keepalive(self) -> None:
        await self.write(KEEPALIVE)

    async def finish(self, last: bytes = b"") -> None:
        """The last events and the end of the body, in one write."""
        if last and self.client_gone():
            raise ClientGone
        try:
            await self.response.write_eof(last)
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone from exc
