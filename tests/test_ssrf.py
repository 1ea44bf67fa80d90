"""SSRF: the only URLs the gateway fetches itself (image URLs inlined for Gemini) are https, public, pinned
to the address that was checked, re-checked after every redirect, and bounded in size and time.

Real TLS servers on loopback stand in for "the internet": a test guard treats 127.0.0.1 as public and
everything else (127.0.0.2 included) as private; the production guard is exercised on every spelling of
a private address, where it must refuse before any connection is made. Through proxies that resolve names
locally (`socks5://`, `socks4://`: real microsocks and pproxy on loopback), a patched `getaddrinfo` makes
test names resolve to chosen loopback addresses, since the proxy library resolves with it too.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from proxies import Microsocks, PProxy

from egress.pool import Egress, PoolSpec
from egress.proxy import ProxySpec
from gateway import fetch, images, pipeline
from gateway.errors import InvalidRequest

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
PUBLIC = ipaddress.IPv4Address("127.0.0.1")


@dataclass
class Site:
    """A TLS image server: its URL, the requests it saw, and a stall to hang /slow on."""

    url: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    stall: asyncio.Event = field(default_factory=asyncio.Event)


def _site_app(site_ref: list[Site]) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        site = site_ref[0]
        site.seen.append((request.path, request.headers.get("Host", "")))
        if request.path == "/cat.png":
            return web.Response(body=PNG, content_type="image/png")
        if request.path == "/redirect":
            raise web.HTTPFound(request.query["to"])
        if request.path == "/loop":
            raise web.HTTPFound("/loop")
        if request.path == "/page":
            return web.Response(text="<html></html>", content_type="text/html")
        if request.path == "/lagging":  # each within its own time limit, slow together
            await asyncio.sleep(0.3)
            return web.Response(body=PNG, content_type="image/png")
        if request.path in ("/big", "/big-chunked"):
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            if request.path == "/big":
                response.content_length = 5000
            await response.prepare(request)
            for _ in range(5):
                await response.write(b"\x00" * 1000)
            return response
        await site.stall.wait()  # /slow
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def sites(aiohttp_server: Any, ca: trustme.CA) -> AsyncIterator[dict[str, Site]]:
    """`public` on 127.0.0.1 and `private` on 127.0.0.2, both with certificates the test session trusts."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("images.test", "evil.test", "127.0.0.1", "127.0.0.2").configure_cert(ctx)
    made: dict[str, Site] = {}
    for name, host in (("public", "127.0.0.1"), ("private", "127.0.0.2")):
        ref: list[Site] = []
        server = await aiohttp_server(_site_app(ref), host=host, ssl=ctx)
        ref.append(Site(str(server.make_url("")).rstrip("/")))
        made[name] = ref[0]
    yield made
    for site in made.values():
        site.stall.set()


@pytest.fixture
async def session(ca: trustme.CA) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that trusts the test CA and counts every request it starts."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    trace = aiohttp.TraceConfig()
    started: list[str] = []

    async def on_start(_s: Any, _c: Any, params: aiohttp.TraceRequestStartParams) -> None:
        started.append(str(params.url))

    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), trace_configs=[trace]) as http:
        http.started = started  # type: ignore[attr-defined]
        yield http


class Resolver:
    """Stands in for DNS (names are not ours to register): answers from a table and counts lookups."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table, self.calls = table, 0

    async def __call__(self, host: str, _port: int) -> list[str]:
        self.calls += 1
        if host not in self.table:
            raise OSError("no such name")
        return self.table[host]


def test_guard(resolver: Resolver | None = None) -> fetch.Guard:
    return fetch.Guard(resolve_locally=True, refuse=lambda ip: ip != PUBLIC,
                       resolve=resolver or Resolver({"images.test": ["127.0.0.1"]}))


test_guard.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


REFUSED_URLS = [
    "http://93.184.216.34/cat.png",  # plain http, even to a public address
    "ftp://93.184.216.34/cat.png",
    "file:///etc/passwd",
    "https://127.0.0.1/cat.png",
    "https://127.0.0.1:8443/cat.png",
    "https://2130706433/cat.png",  # 127.0.0.1 in decimal
    "https://0x7f000001/cat.png",  # in hex
    "https://0177.0.0.1/cat.png",  # in octal
    "https://127.1/cat.png",  # short form
    "https://0/cat.png",  # 0.0.0.0
    "https://[::1]/cat.png",
    "https://[::ffff:127.0.0.1]/cat.png",  # IPv4-mapped
    "https://[::ffff:7f00:1]/cat.png",
    "https://[::ffff:169.254.169.254]/latest/meta-data/",
    "https://[64:ff9b::a00:1]/cat.png",  # NAT64 of 10.0.0.1
    "https://[2002:7f00:1::]/cat.png",  # 6to4 of 127.0.0.1
    "https://10.1.2.3/cat.png",
    "https://172.16.0.1/cat.png",
    "https://192.168.1.1/cat.png",
    "https://100.64.0.1/cat.png",  # carrier-grade NAT
    "https://169.254.169.254/latest/meta-data/",  # cloud metadata
    "https://2852039166/latest/meta-data/",  # the same, in decimal
    "https://[fd00:ec2::254]/latest/meta-data/",  # AWS's IPv6 metadata address
    "https://[fe80::1]/cat.png",
    "https://224.0.0.1/cat.png",
    "https://localhost/cat.png",
    "https://images.localhost/cat.png",
    "https://metadata.google.internal/computeMetadata/v1/",
    "https://intranet/cat.png",  # single-label names are local by definition
    "https://user:pass@10.0.0.1/cat.png",
]


@pytest.mark.parametrize("resolve_locally", [True, False], ids=["direct", "through-proxy"])
@pytest.mark.parametrize("url", REFUSED_URLS)
async def test_private_and_non_https_urls_are_refused_before_connecting(
        session: aiohttp.ClientSession, url: str, resolve_locally: bool) -> None:
    with pytest.raises(fetch.Refused):
        await fetch.fetch(session, url, fetch.Guard(resolve_locally), 1000, 5)
    assert session.started == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("addresses", "refused"), [
    pytest.param(["127.0.0.1"], True, id="loopback"),
    pytest.param(["::1"], True, id="loopback-v6"),
    pytest.param(["::ffff:10.0.0.1"], True, id="mapped-private"),
    pytest.param(["93.184.216.34", "10.0.0.1"], True, id="one-private-among-public"),
    pytest.param(["169.254.169.254"], True, id="metadata"),
])
async def test_a_name_resolving_to_a_private_address_is_refused(
        session: aiohttp.ClientSession, addresses: list[str], refused: bool) -> None:
    guard = fetch.Guard(True, resolve=Resolver({"evil.example": addresses}))
    with pytest.raises(fetch.Refused, match="resolves to a private"):
        await fetch.fetch(session, "https://evil.example/cat.png", guard, 1000, 5)
    assert session.started == []  # type: ignore[attr-defined]


async def test_fetch_connects_to_the_address_it_checked(session: aiohttp.ClientSession,
                                                        sites: dict[str, Site]) -> None:
    """One lookup, and the connection goes to that address: a DNS answer that changes after the check
    (rebinding) is never asked for. TLS and Host still carry the name."""
    port = sites["public"].url.rsplit(":", 1)[1]
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    got = await fetch.fetch(session, f"https://images.test:{port}/cat.png", test_guard(resolver), 1000, 5)
    assert got == fetch.Fetched("image/png", PNG)
    assert resolver.calls == 1
    assert sites["public"].seen == [("/cat.png", f"images.test:{port}")]
    assert session.started == [f"https://127.0.0.1:{port}/cat.png"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("target", ["private", "http", "metadata"])
async def test_redirects_are_checked_again(session: aiohttp.ClientSession, sites: dict[str, Site],
                                           target: str) -> None:
    to = {"private": sites["private"].url + "/cat.png",
          "http": sites["public"].url.replace("https:", "http:") + "/cat.png",
          "metadata": "https://169.254.169.254/latest/meta-data/"}[target]
    with pytest.raises(fetch.Refused):
        await fetch.fetch(session, sites["public"].url + "/redirect?to=" + to, test_guard(), 1000, 5)
    assert [path for path, _ in sites["public"].seen] == ["/redirect"]
    assert sites["private"].seen == []


async def test_a_checked_redirect_is_followed_and_loops_are_cut(session: aiohttp.ClientSession,
                                                               sites: dict[str, Site]) -> None:
    public = sites["public"].url
    got = await fetch.fetch(session, f"{public}/redirect?to={public}/cat.png", test_guard(), 1000, 5)
    assert got.data == PNG
    with pytest.raises(fetch.Refused, match="redirects more than"):
        await fetch.fetch(session, public + "/loop", test_guard(), 1000, 5)
    assert len(sites["public"].seen) == 2 + fetch.MAX_REDIRECTS + 1


@pytest.mark.parametrize(("path", "why"), [
    pytest.param("/big", "larger than 1000", id="declared-too-large"),
    pytest.param("/big-chunked", "larger than 1000", id="streamed-too-large"),
    pytest.param("/page", "not of type image", id="not-an-image"),
    pytest.param("/slow", "longer than 0.5 s", id="too-slow"),
])
async def test_size_type_and_time_limits(session: aiohttp.ClientSession, sites: dict[str, Site], path: str,
                                         why: str) -> None:
    with pytest.raises(fetch.Refused, match=why):
        await fetch.fetch(session, sites["public"].url + path, test_guard(), 1000, 0.5)


async def test_inlining_refuses_with_a_clear_400(session: aiohttp.ClientSession) -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://[::ffff:127.0.0.1]/cat.png"}}]}]}
    with pytest.raises(InvalidRequest) as info:
        await images.inline_remote_images(body, session, resolve_locally=True)
    assert info.value.code == "invalid_image_url" and info.value.status == 400
    assert "private" in info.value.message


async def test_inlining_fetches_under_the_guard(session: aiohttp.ClientSession, sites: dict[str, Site]) -> None:
    url = sites["public"].url + "/cat.png"
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    inlined = await images.inline_remote_images(body, session, resolve_locally=True, guard=test_guard())
    assert inlined["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert body["messages"][0]["content"][0]["image_url"]["url"] == url  # the client's body is left alone


async def test_inlining_fetches_images_of_openai_tool_messages(session: aiohttp.ClientSession,
                                                               sites: dict[str, Site]) -> None:
    """Chat to Gemini: an image a tool returned by URL is fetched like any other (Gemini takes bytes only)."""
    url = sites["public"].url + "/cat.png"
    body = {"messages": [{"role": "tool", "tool_call_id": "c1", "content": [
        {"type": "text", "text": "shot"}, {"type": "image_url", "image_url": {"url": url}}]}]}
    assert images.has_remote_images(body)
    inlined = await images.inline_remote_images(body, session, resolve_locally=True, guard=test_guard())
    text, image = inlined["messages"][0]["content"]
    assert text == {"type": "text", "text": "shot"}
    assert image["image_url"]["url"] == f"data:image/png;base64,{base64.b64encode(PNG).decode()}"
    assert [path for path, _ in sites["public"].seen] == ["/cat.png"]


async def test_inlining_fetches_anthropic_url_images_under_the_guard(session: aiohttp.ClientSession,
                                                                     sites: dict[str, Site]) -> None:
    """/v1/messages to Gemini: Anthropic's url image blocks, also inside a tool_result, become base64 blocks."""
    url = sites["public"].url + "/cat.png"
    image = {"type": "image", "source": {"type": "url", "url": url}, "cache_control": {"type": "ephemeral"}}
    body = {"messages": [{"role": "user", "content": [
        image, {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "see"}, image]}]}]}
    assert images.has_images(body) and images.has_remote_images(body)
    inlined = await images.inline_remote_images(body, session, resolve_locally=True, guard=test_guard())
    block, result = inlined["messages"][0]["content"]
    expected = {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()}
    assert block == {**image, "source": expected} and result["content"][1] == {**image, "source": expected}
    assert result["content"][0] == {"type": "text", "text": "see"}
    assert not images.has_remote_images(inlined) and images.has_images(inlined)
    assert body["messages"][0]["content"][0] is image and image["source"]["url"] == url  # the client's body as it was
    assert [path for path, _ in sites["public"].seen] == ["/cat.png", "/cat.png"]


async def test_inlining_refuses_a_private_anthropic_url_image(session: aiohttp.ClientSession) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://169.254.169.254/latest/meta-data/"}}]}]}]}
    with pytest.raises(InvalidRequest) as info:
        await images.inline_remote_images(body, session, resolve_locally=True)
    assert info.value.code == "invalid_image_url"
    assert session.started == []  # type: ignore[attr-defined]


# Through a proxy. `socks5://` and `socks4://` resolve names locally (aiohttp-socks with rdns off): the
# gateway's own resolver answers, so the addresses can be checked here and the tunnel pinned to the one
# checked. `socks5h://`, `socks4a://` and HTTP(S) CONNECT proxies resolve at the proxy.

LOCAL_DNS_SCHEMES = {"direct": True, "socks5": True, "socks4": True,
                     "socks5h": False, "socks4a": False, "http": False, "https": False}


@pytest.fixture
async def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Names the event loop's `getaddrinfo` answers with a chosen address (the gateway's resolver and the
    proxy library's both use it); other names resolve as usual. `dns["?asked"]` lists the names asked."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    table: dict[str, Any] = {"?asked": []}

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            table["?asked"].append(host)
            return await real(table[host], port, *args, **kwargs)
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return table


@pytest.fixture
def trusting_egress(ca: trustme.CA, monkeypatch: pytest.MonkeyPatch) -> None:
    """Egress sessions verify with aiohttp's default context: make it trust the test CA, for this test only."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    monkeypatch.setattr(aiohttp.connector, "_SSL_CONTEXT_VERIFIED", ctx)


@pytest.fixture
async def named_site(aiohttp_server: Any, ca: trustme.CA) -> Site:
    """A TLS image server on 127.0.0.1 whose certificate names `images.test` only (not its address)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("images.test").configure_cert(ctx)
    ref: list[Site] = []
    server = await aiohttp_server(_site_app(ref), host="127.0.0.1", ssl=ctx)
    ref.append(Site(str(server.make_url("")).rstrip("/")))
    return ref[0]


@pytest.fixture
def proxy(request: pytest.FixtureRequest) -> Iterator[Microsocks | PProxy | None]:
    """A locally-resolving proxy on loopback for the scheme in `request.param` (None for the direct route)."""
    if request.param == "direct":
        yield None
        return
    with Microsocks() if request.param == "socks5" else PProxy(request.param) as server:
        yield server


async def _egress(scheme: str, url: str = "socks5://127.0.0.1:1") -> Egress:
    """An egress with one pool `p` of one proxy, its URL's scheme set to `scheme` (nothing is connected yet)."""
    egress = Egress()
    await egress.configure({"p": PoolSpec("p", (ProxySpec("x", scheme + url[url.index(":"):]),))})
    return egress


def _route(pool: str) -> Any:
    return SimpleNamespace(provider=SimpleNamespace(egress=pool), provider_name="gemini")


@pytest.mark.parametrize(("scheme", "resolves_locally"), LOCAL_DNS_SCHEMES.items())
async def test_the_guard_checks_addresses_wherever_the_gateway_resolves_the_name(
        monkeypatch: pytest.MonkeyPatch, scheme: str, resolves_locally: bool) -> None:
    """The pipeline fetches images along the provider's own way out, and checks the host's addresses on
    every route where the gateway resolves the name: direct, socks5:// and socks4://."""
    guards: list[fetch.Guard] = []

    async def fake_fetch(_session: Any, _url: str, guard: fetch.Guard, *_args: Any) -> fetch.Fetched:
        guards.append(guard)
        return fetch.Fetched("image/png", PNG)

    monkeypatch.setattr(images.fetch, "fetch", fake_fetch)
    egress = await _egress("socks5" if scheme == "direct" else scheme)
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://images.test/cat.png"}}]}]}
    try:
        await pipeline._inline_images(egress, _route("direct" if scheme == "direct" else "p"), "k", frozenset(), body)
    finally:
        await egress.close()
    assert [guard.resolve_locally for guard in guards] == [resolves_locally]


@pytest.mark.parametrize("proxy", ["direct", "socks5", "socks4"], indirect=True)
async def test_a_name_resolving_to_a_private_address_is_refused_through_a_locally_resolving_proxy(
        proxy: Microsocks | PProxy | None, sites: dict[str, Site], dns: dict[str, Any],
        trusting_egress: None) -> None:
    """The production guard, the pipeline's way in: the same 400 as on the direct route, no tunnel opened."""
    dns["evil.test"] = "127.0.0.2"  # where the "private" site listens
    url = sites["private"].url.replace("127.0.0.2", "evil.test") + "/cat.png"
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    egress = await _egress(proxy.scheme if proxy else "socks5", proxy.url if proxy else "socks5://127.0.0.1:1")
    try:
        with pytest.raises(InvalidRequest) as info:
            await pipeline._inline_images(egress, _route("p" if proxy else "direct"), "k", frozenset(), body)
    finally:
        await egress.close()
    assert info.value.code == "invalid_image_url"
    assert info.value.message == (f"Image URL {url!r} cannot be used: its host resolves to a private, loopback "
                                  "or link-local address.")
    assert dns["?asked"] == ["evil.test"]  # resolved once, by the guard
    assert sites["private"].seen == []
    if proxy is not None:
        assert proxy.targets() == []


@pytest.mark.parametrize("proxy", ["socks5", "socks4"], indirect=True)
async def test_a_name_resolving_to_an_allowed_address_is_fetched_through_the_proxy_pinned(
        proxy: Microsocks | PProxy, named_site: Site, dns: dict[str, Any], trusting_egress: None) -> None:
    """One lookup; the proxy is asked for the checked address (a later DNS answer is never used), and TLS
    (SNI and certificate check) and Host keep the name: the site's certificate names images.test only."""
    assert proxy is not None
    dns["images.test"] = "127.0.0.2"  # what the name would rebind to, had anyone but the guard resolved it
    port = named_site.url.rsplit(":", 1)[1]
    resolver = Resolver({"images.test": ["127.0.0.1"]})
    egress = await _egress(proxy.scheme, proxy.url)
    try:
        exit_ = egress.plan("p")[0]
        guard = fetch.Guard(LOCAL_DNS_SCHEMES[proxy.scheme], refuse=lambda ip: ip != PUBLIC, resolve=resolver)
        got = await fetch.fetch(exit_.session, f"https://images.test:{port}/cat.png", guard, 1000, 5)
    finally:
        await egress.close()
    assert got == fetch.Fetched("image/png", PNG)
    assert resolver.calls == 1
    assert named_site.seen == [("/cat.png", f"images.test:{port}")]
    assert proxy.targets() == [f"127.0.0.1:{port}"]  # the tunnel went to the checked address, via the proxy
    assert dns["?asked"] == []  # the proxy library resolved nothing


@pytest.mark.parametrize("scheme", ["socks5h", "socks4a", "http"])  # resolved at the proxy: no DNS here
async def test_a_proxy_that_fails_an_image_fetch_is_a_clear_400_not_a_crash(scheme: str) -> None:
    """aiohttp-socks raises its own errors (neither aiohttp's nor OSError) when the proxy refuses or is down: the
    relay catches them, the image fetch let them escape as a 500 `internal_error` with a logged traceback."""
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.png"}}]}]}
    egress = await _egress(scheme, f"{scheme}://user:pw@127.0.0.1:1")  # nothing listens on port 1
    try:
        with pytest.raises(InvalidRequest) as info:
            await pipeline._inline_images(egress, _route("p"), "k", frozenset(), body)
    finally:
        await egress.close()
    assert info.value.code == "invalid_image_url" and info.value.status == 400
    assert "fetching it failed" in info.value.message


async def test_a_requests_images_are_inlined_within_one_size_budget(session: aiohttp.ClientSession,
                                                                   sites: dict[str, Site],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """MAX_IMAGE_BYTES bounds all the images of one request, not each: a thousand URLs of 20 MB images (for a
    hold of ~$0.50 on a Gemini model) were all fetched and held in memory at once, 20 GB of them."""
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 10 * len(PNG))
    url = sites["public"].url + "/cat.png"
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"{url}?{i}"}} for i in range(30)]}]}
    with pytest.raises(InvalidRequest) as info:
        await images.inline_remote_images(body, session, resolve_locally=True, guard=test_guard())
    assert info.value.code == "invalid_image_url" and info.value.status == 400
    assert "together" in info.value.message
    assert len(sites["public"].seen) == 11  # the one past the budget is cut off as it comes
    few = {"messages": [{"role": "user", "content": body["messages"][0]["content"][:10]}]}  # type: ignore[index]
    inlined = await images.inline_remote_images(few, session, resolve_locally=True, guard=test_guard())
    assert all(part["image_url"]["url"].startswith("data:image/png") for part in inlined["messages"][0]["content"])


async def test_a_requests_image_fetches_share_one_time_limit(session: aiohttp.ClientSession, sites: dict[str, Site],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """FETCH_TIMEOUT_S bounded each fetch, one after another: fifty URLs that each answer just inside it held a
    request (its hold, its stream slot, a worker's memory) for fifty times as long. They share one limit now."""
    monkeypatch.setattr(images, "FETCH_TOTAL_S", 1.0)
    url = sites["public"].url + "/lagging"
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"{url}?{i}"}} for i in range(10)]}]}
    started = time.monotonic()
    with pytest.raises(InvalidRequest) as info:
        await images.inline_remote_images(body, session, resolve_locally=True, guard=test_guard())
    assert time.monotonic() - started < 2.0
    assert info.value.code == "invalid_image_url" and info.value.status == 400
    assert "more than 1 s to fetch together" in info.value.message
    assert len(sites["public"].seen) <= 4
