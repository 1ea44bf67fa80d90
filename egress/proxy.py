"""Proxy URL -> pooled client session, and the probes that test a way out.

One `aiohttp.ClientSession` per way out (direct, or one per proxy), created once and reused across
requests so tunnels stay alive. SOCKS4/5 and HTTP(S) CONNECT proxies go through aiohttp-socks, whose
connector runs the proxy handshake inside aiohttp's connect step — so the handshake is bounded by the
request's connect timeout — and tunnels TLS to the upstream inside the proxy connection.

`socks5h://` resolves names at the proxy (no DNS query leaves the gateway's region); `socks5://` resolves
locally, as curl does (so do `socks4://`; `socks4a://` and HTTP(S) CONNECT proxies resolve at the proxy).
Where names are resolved locally, a caller may resolve one itself, check the address and ask for it (a URL
with the address as its host and `server_hostname` set to the name): the tunnel then goes to that address
and TLS verifies the name, as it does on the direct route.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from ssl import SSLContext, SSLError
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
import aiohttp_socks
import python_socks
import python_socks._errors
from aiohttp.client_proto import ResponseHandler
from aiohttp_socks import ProxyConnector, ProxyType
from python_socks.async_.asyncio.v2 import Proxy

# No cap per upstream host: a stream holds its connection for minutes, so a cap here would queue the
# 257th concurrent stream behind the others with no error and no deadline (the benchmark's 1,000 open
# streams to one host saw it). Overload is refused up front instead, by the gateway's admission.
CONNECTIONS_PER_HOST = 0
# The longest an idle connection stays pooled (aiohttp's default): a request may ask for less (`max_idle_s`).
# Long enough to save a TLS handshake between a cloud provider's requests, which keep connections far longer.
POOL_IDLE_S = 15.0

# What the proxy libraries raise when a way out fails; aiohttp-socks' own errors are bare Exceptions.
PROXY_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp_socks.ProxyError, aiohttp_socks.ProxyConnectionError, aiohttp_socks.ProxyTimeoutError,
    python_socks._errors.ProxyException, python_socks._errors.IncompleteReadError)
PROXY_TIMEOUTS: tuple[type[BaseException], ...] = (TimeoutError, aiohttp_socks.ProxyTimeoutError)
# How a proxy refuses the gateway's credentials: an HTTP proxy's status (tinyproxy answers a wrong password 401),
# python-socks' SOCKS5 replies (wrong password; credentials required but none configured). A proxy that just
# closes the socket on a bad login (pproxy) cannot be told from one that fails otherwise.
_AUTH_STATUSES = frozenset({401, 407})
_SOCKS_AUTH_REFUSALS = ("Username and password authentication failure", "No acceptable authentication methods")

_TYPES = {"socks5": ProxyType.SOCKS5, "socks5h": ProxyType.SOCKS5, "socks4": ProxyType.SOCKS4,
          "socks4a": ProxyType.SOCKS4, "http": ProxyType.HTTP, "https": ProxyType.HTTP}
LOCAL_DNS_SCHEMES = frozenset({"socks5", "socks4"})  # the gateway resolves the name, the proxy gets an address


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """A proxy as configured. `url` holds credentials: never log it; `label` is what may be shown."""

    name: str
    url: str
    region: str | None = None

    @property
    def host(self) -> str:
        """host:port as a URL writes it: an IPv6 address in brackets, so its own colons are not the port's."""
        parts = urlsplit(self.url)
        host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
        return f"{host}:{parts.port or _default_port(parts.scheme)}"

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def resolves_locally(self) -> bool:
        """Whether names are resolved here, by the gateway, and the proxy is handed an address."""
        return self.scheme in LOCAL_DNS_SCHEMES


@dataclass(frozen=True, slots=True)
class _Parsed:
    type: ProxyType
    host: str
    port: int
    username: str | None
    password: str | None
    rdns: bool
    tls: bool


def failure_outcome(exc: BaseException) -> str:
    """The `gateway_egress_requests_total` outcome of a way out that failed before the request left:
    `auth_error` (the proxy refused the configured credentials: the fix is the config, not the proxy),
    `timeout`, or `connect_error`."""
    if isinstance(exc, (aiohttp_socks.ProxyError, python_socks.ProxyError)) and (  # aiohttp-socks re-raises its own
            exc.error_code in _AUTH_STATUSES or str(exc).startswith(_SOCKS_AUTH_REFUSALS)):
        return "auth_error"
    return "timeout" if isinstance(exc, PROXY_TIMEOUTS) else "connect_error"


def sendable_credentials(scheme: str, user: str, password: str) -> None:
    """Credentials a proxy handshake can carry, checked once at config load: the proxy library refused the others
    at every connect with a ValueError no failover catches (a 500 per request). SOCKS5 sends ASCII with a length byte
    (RFC 1929); HTTP Basic auth's user-id ends at its first ':' (RFC 7617), and bytes beyond ASCII are read in
    whatever charset the proxy assumes. The message names the rule, never the value."""
    for what, value in (("user name", user), ("password", password)):
        if not all(" " <= c <= "~" for c in value):
            raise ValueError(f"the proxy {what} must be printable ASCII (percent-encoded in the URL as needed)")
        if len(value) > 255:
            raise ValueError(f"the proxy {what} must be at most 255 characters (SOCKS5 sends its length in a byte)")
    if ":" in user and scheme in ("http", "https"):
        raise ValueError("an HTTP proxy's user name may not hold ':' (Basic auth ends the user name there)")


def _default_port(scheme: str) -> int:
    return {"http": 8080, "https": 443}.get(scheme, 1080)


def _parse(url: str) -> _Parsed:
    parts = urlsplit(url)
    return _Parsed(type=_TYPES[parts.scheme], host=parts.hostname or "", port=parts.port or _default_port(parts.scheme),
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None,
                   rdns=parts.scheme not in LOCAL_DNS_SCHEMES, tls=parts.scheme == "https")


def _proxy_ssl(p: _Parsed) -> ssl.SSLContext | None:
    return ssl.create_default_context() if p.tls else None


def _proxy(p: _Parsed) -> Proxy:
    return Proxy(proxy_type=p.type, host=p.host, port=p.port, username=p.username, password=p.password,
                 rdns=p.rdns, proxy_ssl=_proxy_ssl(p))


class _Watched:
    """A connector that marks the calling task's `Progress` once a request has its connection, times each
    new one (TCP + proxy handshake + TLS), and reuses a pooled one only if it was idle less than the
    request's `max_idle_s`.

    This used to be an aiohttp TraceConfig, which dispatches six signals with their parameter objects
    on every request (about 4 % of the gateway's instructions per request); a contextvar read once per
    request does the same job here.
    """

    on_connect: Callable[[float], None] | None = None
    _conns: Any  # aiohttp's pool: ConnectionKey -> deque of (protocol, time.monotonic() at release)
    _cleanup_closed_disabled: bool  # aiohttp's: SSL transports it closes are aborted later unless disabled
    _cleanup_closed_transports: list[Any]

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        conn = await super().connect(req, traces, timeout)  # type: ignore[misc]
        progress = _WATCHED.get()
        if progress is not None:
            progress.connected = True
        return conn

    def _get(self, key: Any, traces: Any) -> Any:
        """aiohttp's own pick from the pool (its coroutine, returned unawaited: no frame of ours per request),
        after closing the connections to `key` idle longer than the request's `max_idle_s`: the upstream may
        be closing one just as the request goes out on it, and a request whose body was sent is never resent.
        aiohttp's connector has one idle limit for every host (POOL_IDLE_S), where servers of local models close
        theirs after 5 s (uvicorn, llama-server) or 2 s (gunicorn)."""
        progress = _WATCHED.get()
        if progress is not None and progress.max_idle_s is not None and progress.max_idle_s < POOL_IDLE_S:
            self._forget_idle(key, progress.max_idle_s)
        return aiohttp.BaseConnector._get(self, key, traces)  # type: ignore[arg-type]  # neither subclass has one

    def _forget_idle(self, key: Any, max_idle_s: float) -> None:
        idle = self._conns.get(key)
        if not idle:
            return
        too_old = time.monotonic() - max_idle_s  # aiohttp's clock for the pool
        while idle and idle[0][1] <= too_old:  # oldest first: aiohttp appends each as it is released
            proto = idle.popleft()[0]
            transport = proto.transport
            proto.close()
            if key.is_ssl and not self._cleanup_closed_disabled:  # as aiohttp's own pick closes one
                self._cleanup_closed_transports.append(transport)

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        started = time.perf_counter()
        proto = await super()._create_connection(req, traces, timeout)  # type: ignore[misc]
        if self.on_connect is not None:
            self.on_connect(time.perf_counter() - started)
        return proto


class _DirectConnector(_Watched, aiohttp.TCPConnector):
    pass


# The TLS name aiohttp asked for, from `_wrap_create_connection` down to `_connect_via_proxy` (same task).
_TLS_NAME: ContextVar[str | None] = ContextVar("egress_tls_name", default=None)


class _TunnelHandler(ResponseHandler):
    """Keeps the tunnel's StreamWriter alive: its `__del__` would close the transport (aiohttp-socks does the same)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter) -> None:
        super().__init__(loop)
        self._writer = writer


class _ProxyConnector(_Watched, ProxyConnector):
    """aiohttp-socks' connector, which verifies the upstream's certificate against the tunnel's destination.
    A request that names its TLS server (`server_hostname`, as a fetch pinned to a checked address does)
    gets its tunnel to the URL's host (the address) and TLS with that name instead."""

    def __init__(self, parsed: _Parsed, **kwargs: Any) -> None:
        super().__init__(proxy_type=parsed.type, host=parsed.host, port=parsed.port, username=parsed.username,
                         password=parsed.password, rdns=parsed.rdns, proxy_ssl=_proxy_ssl(parsed), **kwargs)
        self._parsed = parsed

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        token = _TLS_NAME.set(kwargs.get("server_hostname"))
        try:
            return await super()._wrap_create_connection(*args, **kwargs)
        finally:
            _TLS_NAME.reset(token)

    async def _connect_via_proxy(self, host: str, port: int, ssl: SSLContext | None = None,
                                 timeout: float | None = None) -> Any:
        """The tunnel, then TLS to the upstream inside it (with the name asked for, else the tunnel's host).

        Done here rather than by aiohttp-socks, which runs both TLS handshakes in one call: a certificate
        an `https://` proxy presents that fails verification is the proxy's failure (fail over, count it
        against the proxy), not the upstream's (`upstream_tls_error`), so it must not reach the caller as
        a bare certificate error."""
        try:  # one deadline for the proxy handshake and TLS, as aiohttp-socks has
            async with asyncio.timeout(timeout):
                try:
                    stream = await _proxy(self._parsed).connect(dest_host=host, dest_port=port, timeout=timeout)
                except SSLError as exc:
                    raise python_socks.ProxyError(f"TLS to the proxy failed ({exc.reason or type(exc).__name__})") \
                        from exc
                if ssl is None:
                    return self._adopt(stream)
                try:
                    await stream.start_tls(hostname=_TLS_NAME.get() or host, ssl_context=ssl)
                except BaseException:
                    await stream.close()
                    raise
        except TimeoutError as exc:
            raise python_socks.ProxyTimeoutError(f"Proxy connection timed out: {timeout}") from exc
        return self._adopt(stream)

    def _adopt(self, stream: Any) -> tuple[asyncio.Transport, ResponseHandler]:
        transport = stream.writer.transport
        protocol = _TunnelHandler(self._loop, stream.writer)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return transport, protocol


# Private methods of aiohttp and aiohttp-socks that the connectors above override. A release that renamed
# one would silence its override without an error: fetches pinned to a checked address would lose their TLS
# name, a proxy's bad certificate would be blamed on the provider, requests would not mark their connection,
# and a local model's server would be sent requests on connections it is closing.
_OVERRIDDEN = ((ProxyConnector, "_connect_via_proxy"), (ProxyConnector, "_wrap_create_connection"),
               (aiohttp.TCPConnector, "_create_connection"), (aiohttp.TCPConnector, "connect"),
               (aiohttp.TCPConnector, "_get"))


def check_overrides(hooks: tuple[tuple[type, str], ...] = _OVERRIDDEN) -> None:
    """Refuse to start on library versions whose hooks moved (run at import)."""
    for owner, name in hooks:
        if not callable(getattr(owner, name, None)):
            raise ImportError(f"{owner.__module__}.{owner.__qualname__}.{name} is gone, and egress.proxy "
                              "overrides it: install the aiohttp and aiohttp-socks versions pyproject.toml names")


check_overrides()


def make_connector(spec: ProxySpec | None,
                   on_connect: Callable[[float], None] | None = None) -> aiohttp.BaseConnector:
    connector: _Watched
    if spec is None:
        connector = _DirectConnector(limit=0, limit_per_host=CONNECTIONS_PER_HOST, keepalive_timeout=POOL_IDLE_S,
                                     ttl_dns_cache=300)
    else:
        connector = _ProxyConnector(_parse(spec.url), limit=0, limit_per_host=CONNECTIONS_PER_HOST,
                                    keepalive_timeout=POOL_IDLE_S)
    connector.on_connect = on_connect
    return connector  # type: ignore[return-value]


@dataclass(slots=True)
class Progress:
    """How far the request sent inside `watching(progress)` got: did it get a connection (new or
    reused) to the upstream, and may its body have gone out on it?

    A failure before `connected` never reached the upstream, whatever exception the proxy library raised
    (pproxy, for one, just closes the socket on a bad login): safe to retry on another way out. aiohttp
    writes a request as soon as it has its connection, so from then on it counts as sent: the upstream
    may be acting on it, and it is never resent.

    `max_idle_s` is the request's word to the connector: a pooled connection idle this long is closed, not
    reused (None: the pool's own limit for every host, POOL_IDLE_S).
    """

    connected: bool = False
    max_idle_s: float | None = None


_WATCHED: ContextVar[Progress | None] = ContextVar("egress_progress", default=None)


class watching:  # lower case: used like a function, `with watching(progress):`
    """Within the block, requests of this task mark `progress` (one request at a time per task)."""

    __slots__ = ("_progress", "_token")

    def __init__(self, progress: Progress) -> None:
        self._progress = progress

    def __enter__(self) -> Progress:
        self._token = _WATCHED.set(self._progress)
        return self._progress

    def __exit__(self, *_exc: object) -> None:
        _WATCHED.reset(self._token)


def make_session(spec: ProxySpec | None = None,
                 on_connect: Callable[[float], None] | None = None) -> aiohttp.ClientSession:
    """A session with no total timeout (the caller bounds connect, first byte and silences itself) and no
    cookie jar: every client shares it, so an upstream's cookie must not ride on the next client's request."""
    return aiohttp.ClientSession(
        connector=make_connector(spec, on_connect),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def probe_tcp(spec: ProxySpec, host: str, port: int, timeout: float) -> float:
    """Open (and close) a tunnel to host:port through the proxy; the seconds it took."""
    proxy = _proxy(_parse(spec.url))
    started = time.perf_counter()
    stream = await proxy.connect(dest_host=host, dest_port=port, timeout=timeout)
    elapsed = time.perf_counter() - started
    await stream.close()
    return elapsed


async def probe_http(spec: ProxySpec, url: str, timeout: float) -> float:
    """Any HTTP answer through the proxy counts: the way out works, whatever the status.

    On a session of its own, closed after it: a kept-alive tunnel of the proxy's pooled session would pass
    a probe while the proxy takes no new connection (the ones requests need), and a probe's connect is not
    a request's (the pooled session times those for `gateway_egress_connect_seconds`)."""
    started = time.perf_counter()
    async with make_session(spec) as session, session.get(url, timeout=aiohttp.ClientTimeout(total=timeout),
                                                          allow_redirects=False) as resp:
        await resp.read()
    return time.perf_counter() - started
