"""TLS end to end: an https upstream reached directly, inside a SOCKS5 tunnel and through an https proxy.

Real providers are https only, so this is the path production takes: the gateway must verify the
upstream's certificate inside the tunnel (the proxy only relays bytes) and, for an `https://` proxy, the
proxy's own certificate too. A throwaway CA (trustme) signs both; the gateway runs as a real process that
trusts it through SSL_CERT_FILE, as an operator with a private CA would set it.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from fakes.openai_upstream import FakeOpenAI, make_app
from harness import PROVIDER_KEY, GatewayProcess
from proxies import Microsocks, PProxy, free_port

from egress import proxy
from gateway import keys
from gateway.store import RedisStore

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The CA bundle and one leaf (for 127.0.0.1 and localhost) used by the upstream and the proxy."""
    base = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    files = {"ca": base / "ca.pem", "cert": base / "cert.pem", "key": base / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    for pem in leaf.cert_chain_pems[1:]:
        pem.write_to_path(str(files["cert"]), append=True)
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return {name: str(path) for name, path in files.items()}


@pytest.fixture
async def tls_upstream(tls_files: dict[str, str]) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    runner = web.AppRunner(make_app(fake))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    yield fake, f"https://127.0.0.1:{port}/v1"
    await runner.cleanup()


@pytest.fixture
def socks() -> Iterator[Microsocks]:
    with Microsocks() as proxy:
        yield proxy


@pytest.fixture
def https_proxy(tls_files: dict[str, str]) -> Iterator[PProxy]:
    with PProxy("https", tls_files=(tls_files["cert"], tls_files["key"])) as proxy:
        yield proxy


def config(upstream: str, redis_url: str, prefix: str, proxy_url: str | None) -> str:
    pool = f"""
egress:
  pools:
    out:
      proxies: [{{name: p1, url: "{proxy_url}"}}]
      health: {{interval_s: 3600}}
""" if proxy_url else ""
    return f"""
store: {{url: "{redis_url}", prefix: "{prefix}"}}
retries: {{max_retries: 0}}
{pool}
providers:
  tls:
    kind: openai
    base_url: "{upstream}"
    api_key: "{PROVIDER_KEY}"
    egress: {"out" if proxy_url else "direct"}
    timeouts: {{connect_s: 3, first_byte_s: 5, between_chunks_s: 5}}
models:
  tls/gpt-4o: {{price: {{input_per_mtok: 1, output_per_mtok: 2}}}}
"""


async def serve(tmp_path: Path, redis_url: str, upstream: str, proxy_url: str | None,
                env: dict[str, str]) -> tuple[GatewayProcess, str]:
    prefix = f"tls{uuid.uuid4().hex}:"
    path = tmp_path / f"{prefix[:-1]}.yaml"
    path.write_text(config(upstream, redis_url, prefix, proxy_url))
    store = RedisStore(redis_url, prefix=prefix)
    plain, record = keys.new_record("tls", 10_000_000_000)
    await store.create_key(record)
    await store.close()
    return GatewayProcess(path, env), plain


async def ask(gw: GatewayProcess, key: str, stream: bool = False) -> tuple[int, Any]:
    body = {"model": "tls/gpt-4o", "messages": MESSAGES, "stream": stream}
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        return resp.status, (await resp.text() if stream else await resp.json())


@pytest.mark.parametrize("route", ["direct", "socks5", "https-proxy"])
async def test_https_upstream_verified_on_every_route(route: str, tmp_path: Path, redis_url: str,
                                                      tls_files: dict[str, str], tls_upstream: Any,
                                                      request: pytest.FixtureRequest) -> None:
    fake, upstream = tls_upstream
    proxy = None if route == "direct" else request.getfixturevalue("socks" if route == "socks5" else "https_proxy")
    gw, key = await serve(tmp_path, redis_url, upstream, proxy.url if proxy else None,
                          {"SSL_CERT_FILE": tls_files["ca"]})
    with gw:
        status, answer = await ask(gw, key)
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"]
        status, text = await ask(gw, key, stream=True)
        assert status == 200 and "data: [DONE]" in text
    assert len(fake.requests) == 2
    assert fake.requests[0].headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    if proxy is not None:
        port = upstream.split(":")[2].split("/")[0]
        assert proxy.targets() and all(t.endswith(f":{port}") for t in proxy.targets())


@pytest.mark.parametrize("route", ["direct", "socks5"])
async def test_an_untrusted_upstream_certificate_is_refused_and_says_why(
        route: str, tmp_path: Path, redis_url: str, tls_upstream: Any, request: pytest.FixtureRequest) -> None:
    fake, upstream = tls_upstream
    proxy = request.getfixturevalue("socks") if route == "socks5" else None
    gw, key = await serve(tmp_path, redis_url, upstream, proxy.url if proxy else None, {})  # no private CA
    with gw:
        for _ in range(4):  # were the proxy blamed, it would be ejected after 3 and the answer turn into a 503
            status, answer = await ask(gw, key)
            assert status == 502, answer
            assert answer["error"]["code"] == "upstream_tls_error"
            assert "certificate" in answer["error"]["message"].lower()
    assert fake.requests == []  # nothing reached the upstream unverified


def test_a_library_release_that_moved_an_overridden_hook_stops_the_import() -> None:
    """The connectors override private methods of aiohttp and aiohttp-socks; a rename upstream would leave the
    override dead and the TLS pinning silently off, so the gateway refuses to start instead."""
    proxy.check_overrides()  # the installed versions have them all

    class Moved:
        async def _connect_via_proxy_v2(self) -> None: ...

    with pytest.raises(ImportError, match="_connect_via_proxy is gone"):
        proxy.check_overrides(((Moved, "_connect_via_proxy"),))
