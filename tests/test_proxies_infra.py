"""The proxy servers of `proxies.py` really proxy: real processes on loopback, real clients, counted tunnels.

Clients are what the gateway uses: aiohttp with aiohttp_socks' ProxyConnector (SOCKS4/5 and HTTP CONNECT),
plus aiohttp's own `proxy=`. The upstream is the fake OpenAI app (GET /v1/models), which records each
request's peer address and, with `allowed_peers`, refuses every other peer with 451.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp_socks import ProxyConnectionError, ProxyConnector, ProxyError, ProxyTimeoutError
from fakes.openai_upstream import FakeOpenAI, make_app
from proxies import (
    HOST,
    BlackHole,
    Dante,
    Microsocks,
    PProxy,
    ProxyProcess,
    Tinyproxy,
    accepts,
    free_port,
    living_members,
    wait_listening,
)

TIMEOUT = aiohttp.ClientTimeout(total=10, sock_connect=3)


class Upstream:
    def __init__(self, fake: FakeOpenAI, port: int) -> None:
        self.fake = fake
        self.port = port

    def url(self, host: str = HOST) -> str:
        return f"http://{host}:{self.port}/v1/models"

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    fake = FakeOpenAI()
    server = await aiohttp_server(make_app(fake), host=HOST)
    return Upstream(fake, server.port)


@pytest.fixture
def start() -> Iterator[Callable[[Callable[[], ProxyProcess]], ProxyProcess]]:
    """Start proxies made by a factory; every one is closed at teardown, whatever the test did."""
    made: list[ProxyProcess] = []

    def start(factory: Callable[[], ProxyProcess]) -> ProxyProcess:
        proxy = factory()
        made.append(proxy)
        proxy.start()
        return proxy

    yield start
    for proxy in made:
        proxy.close()


def connector(proxy_url: str, rdns: bool | None = None) -> ProxyConnector:
    """What the gateway must do too: python-socks knows no `socks5h://`, and its SOCKS5 default is
    rdns=True (name sent to the proxy), so `socks5://` needs an explicit rdns=False to resolve locally."""
    parts = urlsplit(proxy_url)
    if parts.scheme == "socks5h":
        proxy_url, rdns = urlunsplit(parts._replace(scheme="socks5")), True
    elif parts.scheme == "socks5" and rdns is None:
        rdns = False
    return ProxyConnector.from_url(proxy_url, rdns=rdns)


async def get(proxy_url: str | None, url: str, times: int = 1, rdns: bool | None = None) -> list[int]:
    """`times` sequential GETs over ONE session (one keep-alive connection); the statuses."""
    conn = connector(proxy_url, rdns) if proxy_url else None
    async with aiohttp.ClientSession(connector=conn, timeout=TIMEOUT) as session:
        statuses = []
        for _ in range(times):
            async with session.get(url) as resp:
                await resp.read()
                statuses.append(resp.status)
        return statuses


# proxy id -> (factory, whether targets() carries the port: tinyproxy logs the host only)
PROXIES: dict[str, tuple[Callable[[], ProxyProcess], bool]] = {
    "microsocks": (lambda: Microsocks(), True),
    "microsocks-auth": (lambda: Microsocks(user="gw user", password="p@ss:w/rd"), True),
    "pproxy-socks5": (lambda: PProxy("socks5"), True),
    "pproxy-socks5-auth": (lambda: PProxy("socks5", user="gw", password="s3cret"), True),
    "pproxy-socks4": (lambda: PProxy("socks4"), True),
    "pproxy-http": (lambda: PProxy("http"), True),
    "pproxy-http-auth": (lambda: PProxy("http", user="gw", password="s3cret"), True),
    "tinyproxy": (lambda: Tinyproxy(), False),
    "tinyproxy-auth": (lambda: Tinyproxy(user="gw", password="s3cret"), False),
    "dante": (lambda: Dante(), True),
}
AUTH = [name for name in PROXIES if name.endswith("-auth")]
RDNS: dict[str, Callable[[], ProxyProcess]] = {
    "microsocks": Microsocks, "pproxy-socks5": PProxy, "dante-debug": lambda: Dante(debug=True)}


@pytest.mark.parametrize("name", PROXIES)
async def test_relays_over_one_tunnel_per_keepalive_connection(name: str, start: Any, upstream: Upstream) -> None:
    factory, with_port = PROXIES[name]
    proxy = start(factory)
    assert urlsplit(proxy.url).port == proxy.port
    assert await get(proxy.url, upstream.url(), times=5) == [200] * 5
    assert [r.peer for r in upstream.fake.requests] == [HOST] * 5
    assert await proxy.await_tunnels(1) == 1
    assert await get(proxy.url, upstream.url(), times=2) == [200, 200]  # a new session: a new connection
    assert await proxy.await_tunnels(2) == 2
    await asyncio.sleep(0.1)  # nothing late in the log
    assert proxy.targets() == [upstream.target if with_port else HOST] * 2


# How a refused login surfaces in the client: ProxyError with the proxy's reply, except pproxy's SOCKS5,
# which just closes the connection (no RFC 1929 failure reply): a bare IncompleteReadError, not wrapped.
# tinyproxy answers a wrong password with 401 (not 407) and missing credentials with 407.
REFUSED: dict[str, type[Exception]] = {name: ProxyError for name in AUTH} | {
    "pproxy-socks5-auth": asyncio.IncompleteReadError}


@pytest.mark.parametrize("name", AUTH)
async def test_wrong_or_missing_credentials_are_refused(name: str, start: Any, upstream: Upstream) -> None:
    proxy = start(PROXIES[name][0])
    no_userinfo = f"{proxy.scheme}://{HOST}:{proxy.port}"
    for url in (proxy.url_for(password="wrong"), no_userinfo):
        with pytest.raises(REFUSED[name]):
            await get(url, upstream.url())
    assert await get(proxy.url, upstream.url()) == [200]  # and the right ones still work
    with pytest.raises(REFUSED[name]):  # no IP whitelisting after a success (pproxy: --auth=-1)
        await get(proxy.url_for(password="wrong"), upstream.url())
    assert len(upstream.fake.requests) == 1
    assert await proxy.await_tunnels(1) == 1


@pytest.mark.parametrize("name", RDNS)
async def test_socks5h_resolves_the_name_at_the_proxy(name: str, start: Any, upstream: Upstream) -> None:
    proxy = start(RDNS[name])
    assert await get(proxy.url_for("socks5h"), upstream.url("localhost")) == [200]
    assert await get(proxy.url_for("socks5"), upstream.url("localhost")) == [200]  # rdns=False: client resolves
    assert await proxy.await_tunnels(2) == 2
    assert proxy.targets() == [f"localhost:{upstream.port}", upstream.target]


async def test_http_connect_sends_the_name_to_the_proxy(start: Any, upstream: Upstream) -> None:
    tiny = start(lambda: Tinyproxy())
    assert await get(tiny.url, upstream.url("localhost")) == [200]
    assert await tiny.await_tunnels(1) == 1
    assert tiny.targets() == ["localhost"]


@pytest.mark.parametrize("name", ["tinyproxy", "pproxy-http"])
async def test_aiohttp_own_proxy_argument(name: str, start: Any, upstream: Upstream) -> None:
    """aiohttp's `proxy=` sends an http:// request in absolute form (no CONNECT); the proxy still connects."""
    proxy = start(PROXIES[name][0])
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        for _ in range(3):
            async with session.get(upstream.url(), proxy=proxy.url) as resp:
                assert resp.status == 200
    assert await proxy.await_tunnels(1) >= 1


@pytest.mark.parametrize("factory", [
    lambda: Microsocks(bind_out="127.0.0.2"),
    lambda: Microsocks(user="u", password="p", bind_out="127.0.0.2"),
    lambda: Tinyproxy(bind_out="127.0.0.2"),
    lambda: Dante(bind_out="127.0.0.2"),
], ids=["microsocks", "microsocks-auth", "tinyproxy", "dante"])
async def test_upstream_serves_only_the_proxy_outgoing_address(factory: Any, start: Any, upstream: Upstream) -> None:
    proxy = start(factory)
    upstream.fake.allowed_peers = {"127.0.0.2"}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, session.get(upstream.url()) as resp:
        assert resp.status == 451
        assert await resp.json() == {"error": {
            "message": "connections from 127.0.0.1 are blocked in this region",
            "type": "invalid_request_error", "param": None, "code": "unavailable_for_legal_reasons"}}
    assert await get(proxy.url, upstream.url()) == [200]
    assert [r.peer for r in upstream.fake.requests] == ["127.0.0.1", "127.0.0.2"]
    upstream.fake.reset()
    assert upstream.fake.allowed_peers is None


async def test_fake_upstream_refuses_chat_from_other_peers(upstream: Upstream) -> None:
    upstream.fake.allowed_peers = {"127.0.0.9"}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        url = f"http://{HOST}:{upstream.port}/v1/chat/completions"
        async with session.post(url, json={"model": "gpt-4o", "messages": []}) as resp:
            assert resp.status == 451
            assert (await resp.json())["error"]["code"] == "unavailable_for_legal_reasons"
    assert upstream.fake.last.peer == HOST


@pytest.mark.parametrize("name", ["microsocks-auth", "pproxy-socks5", "pproxy-http", "tinyproxy", "dante"])
async def test_stop_then_start_on_the_same_port(name: str, start: Any, upstream: Upstream) -> None:
    proxy = start(PROXIES[name][0])
    port = proxy.port
    conn = connector(proxy.url)
    async with aiohttp.ClientSession(connector=conn, timeout=TIMEOUT) as session:
        async with session.get(upstream.url()) as resp:
            assert resp.status == 200
        proxy.stop()
        assert not proxy.running and not accepts(port)
        with pytest.raises((aiohttp.ClientError, ProxyConnectionError)):
            async with session.get(upstream.url()) as resp:  # the pooled tunnel died with the proxy
                await resp.read()
        with pytest.raises(ProxyConnectionError):
            await get(proxy.url, upstream.url())
        proxy.start()
        assert proxy.port == port and proxy.running
        async with session.get(upstream.url()) as resp:
            assert resp.status == 200
    assert await proxy.await_tunnels(2) == 2  # counted across the restart


async def test_many_requests_one_tunnel(start: Any, upstream: Upstream) -> None:
    proxy = start(lambda: Microsocks(user="u", password="p"))
    assert await get(proxy.url, upstream.url(), times=200) == [200] * 200
    assert proxy.tunnels() == 1


@pytest.mark.parametrize("scheme", ["socks5", "socks4", "http"])
async def test_black_hole_handshake_is_bounded_by_the_connect_timeout(scheme: str, upstream: Upstream) -> None:
    with BlackHole(scheme) as hole:
        assert hole.url == f"{scheme}://{HOST}:{hole.port}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=0.4)
        began = time.monotonic()
        async with aiohttp.ClientSession(connector=connector(hole.url), timeout=timeout) as session:
            with pytest.raises(ProxyTimeoutError):
                await session.get(upstream.url())
        assert 0.35 < time.monotonic() - began < 1.5
        assert hole.accepted() == 1
    assert not accepts(hole.port)
    assert upstream.fake.requests == []


async def test_black_hole_holds_connections_until_stopped() -> None:
    with BlackHole() as hole:
        reader, writer = await asyncio.open_connection(HOST, hole.port)
        writer.write(b"\x05\x01\x00")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        hole.stop()
        assert await asyncio.wait_for(reader.read(1), 2) == b""  # closed by stop()
        writer.close()
        hole.start()  # same port again
        assert accepts(hole.port)


@pytest.mark.parametrize("name", ["microsocks", "pproxy-socks5", "tinyproxy", "dante"])
def test_close_leaves_no_process_and_no_files(name: str) -> None:
    proxy = PROXIES[name][0]()
    with pytest.raises(RuntimeError, match="boom"), proxy:  # a failing test body
        pgid = proxy.pid or 0
        assert pgid and living_members(pgid)
        raise RuntimeError("boom")
    assert living_members(pgid) == []  # dante's helpers included (at most zombies awaiting PID 1)
    assert not proxy.dir.exists()
    assert not accepts(proxy.port)


def test_start_refuses_a_taken_port() -> None:
    with BlackHole() as squatter:  # it would answer the readiness probe in the proxy's place
        proxy = Microsocks(port=squatter.port)
        with pytest.raises(RuntimeError, match="taken"):
            proxy.start()
        assert not proxy.running
        proxy.close()


def test_start_failure_reports_the_log() -> None:
    proxy = Tinyproxy()
    proxy.command = lambda: [proxy.binary, "-d", "-c", str(proxy.dir / "missing.conf")]  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="did not start"):
        proxy.start()
    assert not proxy.running
    proxy.close()


def test_helpers() -> None:
    port = free_port()
    assert not accepts(port)
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        wait_listening(port, timeout=0.2)
    assert time.monotonic() - began < 1


def test_a_test_redis_whose_free_port_was_taken_moves_once_and_then_keeps_its_port() -> None:
    """Parallel suites on one machine race for free ports: a server that lost the race before it first ran
    takes another port; once running it keeps its port, as the fault tests' restarts need."""
    import socket

    from redis_server import HOST, RedisServer, answers_ping

    server = RedisServer()
    taken = server.port
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((HOST, taken))
        squatter.listen()
        try:
            server.start()
            assert server.port != taken and answers_ping(server.port)
            moved = server.port
            server.restart()
            assert server.port == moved and answers_ping(moved)
        finally:
            server.close()
