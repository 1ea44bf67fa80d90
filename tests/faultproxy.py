"""A TCP fault proxy for tests, in the test's own event loop: toxiproxy's idea in a hundred lines.

It sits between the gateway and a fake upstream and forwards bytes both ways, until a `Fault` tells it
to misbehave on the upstream's answer: reset the connection (RST, not FIN) before or after some bytes,
stall (keep both ends open and forward nothing more), close cleanly mid-answer, drip bytes slowly, add
latency, or be a black hole (accept and never answer). Positions are given on the answer's bytes as the
client would see them, with helpers for the usual cut points::

    async with FaultProxy(upstream_port) as proxy:
        proxy.fault = Fault("reset", at=after_events(3))   # cut the connection after the 3rd SSE event
        ...
        await proxy.until(lambda: proxy.open == 0)          # every connection closed again: none leaked

Counters (`opened`, `open`, `forwarded_up`, `forwarded_down`, `faults_fired`) change under a condition
that `until()` waits on, so tests synchronise on events rather than sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

HOST = "127.0.0.1"
HEAD_END = b"\r\n\r\n"
Position = Callable[[bytes], int | None]  # answer bytes so far -> where the fault fires (None: not yet)


def at_start(_seen: bytes) -> int:
    """Before the first byte of the answer: the request reached the upstream, its answer never returns."""
    return 0


def after_headers(seen: bytes) -> int | None:
    """Right after the response head (status line and headers)."""
    end = seen.find(HEAD_END)
    return None if end < 0 else end + len(HEAD_END)


def after_events(n: int) -> Position:
    """Right after the n-th SSE event of the body (its blank line), inside chunked framing or not."""
    def position(seen: bytes) -> int | None:
        head = after_headers(seen)
        if head is None:
            return None
        at = head
        for _ in range(n):
            found = seen.find(b"\n\n", at)
            if found < 0:
                return None
            at = found + 2
        return at + 2 if seen[at:at + 2] == b"\r\n" else at  # the chunk's own CRLF, when chunked
    return position


@dataclass
class Fault:
    """What to do to a connection's answer, and from where.

    kind: "reset" (RST both ways), "stall" (forward nothing more, keep open), "close" (FIN both ways),
    "slow" (forward `chunk` bytes every `delay_s`), "latency" (hold each piece `delay_s`), "black_hole"
    (accept, read, never connect upstream, never answer). `times`: how many new connections get it
    (None: all).
    """

    kind: Literal["reset", "stall", "close", "slow", "latency", "black_hole"]
    at: Position = at_start
    delay_s: float = 0.0
    chunk: int = 1
    times: int | None = None


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = HOST) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.fault: Fault | None = None
        self.opened = 0
        self.open = 0
        self.forwarded_up = 0
        self.forwarded_down = 0
        self.faults_fired = 0
        self.changed = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def url(self, path: str = "/v1") -> str:
        return f"http://{HOST}:{self.port}{path}"

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds (checked at every counter change); TimeoutError otherwise."""
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    async def _bump(self, **deltas: int) -> None:
        async with self.changed:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)
            self.changed.notify_all()

    def _take_fault(self) -> Fault | None:
        fault = self.fault
        if fault is None or fault.times == 0:
            return None
        if fault.times is not None:
            fault.times -= 1
        return fault

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        await self._bump(opened=1, open=1)
        up_writer: asyncio.StreamWriter | None = None
        try:
            fault = self._take_fault()
            if fault is not None and fault.kind == "black_hole":
                await self._bump(faults_fired=1)
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            pipes = [asyncio.ensure_future(self._pipe_up(reader, up_writer)),
                     asyncio.ensure_future(self._pipe_down(up_reader, writer, fault))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None and not w.transport.is_closing():
                    w.close()
            self._tasks.discard(task)
            await asyncio.shield(self._bump(open=-1))

    async def _pipe_up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
            await self._bump(forwarded_up=len(data))

    async def _pipe_down(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         fault: Fault | None) -> None:
        seen = bytearray()
        while data := await reader.read(65536):
            sent = len(seen)
            seen += data
            cut = fault.at(bytes(seen)) if fault is not None and fault.kind in ("reset", "stall", "close") else None
            if fault is None or cut is None:
                await self._forward(writer, data, fault)
                continue
            assert fault is not None
            await self._forward(writer, bytes(seen[sent:max(cut, sent)]), None)
            await self._bump(faults_fired=1)
            if fault.kind == "stall":
                await asyncio.Event().wait()  # until cancelled: the client gives up and closes its side
            if fault.kind == "reset":
                _arm_reset(writer)
            return

    async def _forward(self, writer: asyncio.StreamWriter, data: bytes, fault: Fault | None) -> None:
        if not data:
            return
        if fault is not None and fault.kind == "latency":
            await asyncio.sleep(fault.delay_s)
        pieces = [data] if fault is None or fault.kind != "slow" else \
            [data[i:i + fault.chunk] for i in range(0, len(data), fault.chunk)]
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(fault.delay_s if fault is not None else 0)
            writer.write(piece)
            await writer.drain()
            await self._bump(forwarded_down=len(piece))


def _arm_reset(writer: asyncio.StreamWriter) -> None:
    """Make closing this connection send RST instead of FIN (SO_LINGER on, zero seconds)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
