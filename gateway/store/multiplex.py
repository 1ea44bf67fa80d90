"""One pipelined Redis connection per process for the two scripts every request runs (admit, settle).

redis-py checks a connection out of its pool for every command and keeps it until the reply came back,
so N concurrent requests hold N connections and pay a checkout, a health check and a full command
packing each time; in the benchmark (bench/README.md) that was the largest single cost per request.
Redis answers the commands of one connection strictly in order, so concurrent callers can share one
socket: each call appends a future to a FIFO, writes its command, and the protocol resolves futures in
the order replies arrive (parsed by hiredis, the parser redis-py itself uses when installed).

Failure semantics match the rest of the store: every failure is a redis-py exception (`ConnectionError`,
`TimeoutError`, `ResponseError`) for `RedisStore._boundary` to turn into `StoreError`; `ReplyLost` marks
the failures after which a command may still have run (it was sent, its reply never came). Nothing is retried
here except an EVALSHA refused with NOSCRIPT (after a Redis restart), which did not run and is resent
as EVAL. A timeout drops the connection (as redis-py does): the server may be stuck, and every caller
behind it would time out too. The next call reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


class ReplyLost(RedisConnectionError):
    """The connection failed with this command sent or queued: it may have run."""


class ReplyTimeout(ReplyLost, RedisTimeoutError):
    """No reply in time; the connection was dropped, and the command may have run."""


class _Protocol(asyncio.Protocol):
    """Replies matched to waiting futures in order; a future whose caller gave up still takes its reply.

    One watchdog timer per connection, not one per command: replies come in order, so the oldest command
    waiting is the one to time; the timer is re-armed for the next one only when it fires.
    """

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(encoding="utf-8")
        self.waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # (caller, its deadline), in send order
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self._outgoing: list[bytes] = []
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None

    def send(self, command: bytes, future: asyncio.Future[Any]) -> None:
        """Send a command: at once when no other is in flight (nothing to share a write with, and the
        caller is waiting), else queued so that the commands of one event-loop turn leave in one write."""
        loop = self.loop
        if self.lost:  # never sent: no watchdog would time it, and no reply will come
            future.set_exception(RedisConnectionError("connection to redis lost"))
            return
        self.waiting.append((future, loop.time() + self._timeout_s))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._watch)
        if len(self.waiting) == 1 and self.transport is not None and not self.lost:
            self.transport.write(command)
            return
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(command)

    def _watch(self) -> None:
        self._watchdog = None
        if not self.waiting or self.lost:
            return
        left = self.waiting[0][1] - asyncio.get_running_loop().time()
        if left <= 0:
            self.abort(ReplyTimeout(f"redis did not answer within {self._timeout_s:g} s"))
        else:
            self._watchdog = asyncio.get_running_loop().call_later(left, self._watch)

    def _flush(self) -> None:
        data, self._outgoing = b"".join(self._outgoing), []
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            while (reply := self.reader.gets()) is not False:
                future, _ = self.waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.abort(ReplyLost(f"redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail_all(ReplyLost("connection to redis lost"))

    def abort(self, error: Exception) -> None:
        self.lost = True
        self._fail_all(error)
        if self.transport is not None:
            self.transport.abort()

    def _fail_all(self, error: Exception) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self.waiting:
            future, _ = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)


class Multiplexed:
    """Commands from any number of tasks over one connection, opened lazily and again after a failure."""

    def __init__(self, url: str, connect_timeout_s: float, timeout_s: float, scripts: tuple[str, ...] = ()) -> None:
        options: dict[str, Any] = dict(parse_url(url))
        self._path: str | None = options.get("path")
        self._host: str = options.get("host", "localhost")
        self._port: int = int(options.get("port", 6379))
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._db = int(options.get("db", 0) or 0)
        self._ssl = _tls_context(options) if urlsplit(url).scheme == "rediss" else None
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._scripts = scripts
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None

    async def call(self, *args: Any) -> Any:
        """One command's reply; a Redis error reply is raised as ResponseError."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        reply = await self._send(protocol, args)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def script(self, source: str, sha: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL when the server has not seen the script (first use, or after a restart)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call("EVAL", source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None

    @staticmethod
    def _send(protocol: _Protocol, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """The command on its way, its reply to come in the future returned (awaited by the caller: no
        coroutine of its own, and the protocol's loop rather than asking for the running one)."""
        future: asyncio.Future[Any] = protocol.loop.create_future()
        protocol.send(hiredis.pack_command(args), future)
        return future

    async def _connect(self) -> _Protocol:
        """Concurrent callers share one connection attempt."""
        if self._connecting is None:
            self._connecting = connecting = asyncio.ensure_future(self._open())
            connecting.add_done_callback(self._connected)  # cleared even when every caller gave up
        return await asyncio.shield(self._connecting)

    def _connected(self, connecting: asyncio.Future[_Protocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: an attempt no caller awaited any more is not an error to log

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._path:
                    _, protocol = await loop.create_unix_connection(self._new_protocol, self._path)
                else:
                    _, protocol = await loop.create_connection(self._new_protocol, self._host, self._port,
                                                               ssl=self._ssl)
                for command in self._handshake():
                    reply = await self._send(protocol, command)
                    if isinstance(reply, hiredis.ReplyError):
                        protocol.abort(RedisConnectionError("redis refused the connection setup"))
                        raise ResponseError(f"{command[0]} failed: {reply}")
        except TimeoutError as exc:
            raise RedisTimeoutError("timed out connecting to redis") from exc
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to redis: {exc.strerror or type(exc).__name__}") from exc
        self._protocol = protocol
        return protocol

    def _new_protocol(self) -> _Protocol:
        return _Protocol(self._timeout_s)

    def _handshake(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if self._password is not None:
            auth = (self._username, self._password) if self._username else (self._password,)
            commands.append(("AUTH", *auth))
        if self._db:
            commands.append(("SELECT", self._db))
        # Loaded up front, so a request's EVALSHA runs the first time: a NOSCRIPT detour (after a Redis
        # restart) would send the command again a round trip later, behind other clients' commands.
        commands.extend(("SCRIPT", "LOAD", source) for source in self._scripts)
        return commands


def _tls_context(options: dict[str, Any]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def sha1(source: str) -> str:
    """The name Redis gives a script (EVALSHA's argument)."""
    return hashlib.sha1(source.encode()).hexdigest()
