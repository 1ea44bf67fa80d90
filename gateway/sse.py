"""The SSE writer: `data:` lines, keep-alive comments, `[DONE]`; never compressed, never buffered.

Events are written as whole frames (one `write` per batch of complete events), so a keep-alive comment
can never land inside an event.
"""

from __future__ import annotations

import asyncio
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
SEND_STALL_S = 60.0  # how long one write may wait for a client that takes nothing (cf. nginx's send_timeout)


class ClientGone(Exception):
    """The client closed its connection; the stream stops and the upstream is closed."""


def frame(obj: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


class SSEWriter:
    """Writes one stream. A client that keeps its connection open but takes nothing more (a suspended
    laptop, a wedged proxy) would hold a write, and with it the upstream, the hold and the stream slots,
    for ever: a watchdog (one timer a stream, nothing a write) cuts its connection once one write has
    waited for the client's window through a whole `SEND_STALL_S` period, and the stream ends as if the
    client had hung up. The body is unfinished, so the connection must not carry another response anyway.

    `stop()` ends the watchdog with the stream, however the stream ended: a timer left to run out would
    hold the request (its body included, up to `server.max_body_bytes`) for up to `SEND_STALL_S` after the
    stream, so a burst of short streams kept a minute of their bodies in memory."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        self.events_sent = 0
        self.writes = 0  # writes begun
        self.writing = False
        self.stalled = False
        self.ended = False
        self._watchdog: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """The response's headers (aiohttp writes them at once): a client that left while the upstream
        was thinking is found gone here."""
        try:
            await self.response.prepare(self.request)
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone from exc
        self._watchdog = asyncio.get_running_loop().call_later(SEND_STALL_S, self._watch, -1)

    def _watch(self, writing: int) -> None:
        """`writing`: the write in progress at the previous look (-1: none)."""
        self._watchdog = None
        transport = self.request.transport
        if self.ended or transport is None or transport.is_closing():
            return
        if self.writing and self.writes == writing:
            self.stalled = True
            transport.abort()  # wakes the waiting write
            return
        self._watchdog = asyncio.get_running_loop().call_later(SEND_STALL_S, self._watch,
                                                               self.writes if self.writing else -1)

    def stop(self) -> None:
        """The stream is over (finished, failed, cancelled or its client gone): no more watching."""
        self.ended = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def client_gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    async def write(self, data: bytes) -> None:
        if self.client_gone():
            raise ClientGone
        self.writes += 1
        self.writing = True
        try:
            await self.response.write(data)
        except (ConnectionError, RuntimeError) as exc:  # reset, or "cannot write to closing transport"
            raise ClientGone from exc
        finally:
            self.writing = False
        if self.stalled:
            raise ClientGone

    async def keepalive(self) -> None:
        await self.write(KEEPALIVE)

    async def finish(self, last: bytes = b"") -> None:
        """The last events and the end of the body, in one write."""
        if last and self.client_gone():
            raise ClientGone
        self.writes += 1
        self.writing = True
        try:
            await self.response.write_eof(last)
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone from exc
        finally:
            self.writing = False
            self.ended = True
        if self.stalled:
            raise ClientGone
