"""What reaches a provider is built by the gateway, never copied from the client: an allowlist of headers,
the configured base URL, the configured (or BYOK) key — never the client's gateway key, hop-by-hop
headers, X-Forwarded-* or cookies."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest
from fakes.openai_upstream import FakeOpenAI
from harness import PROVIDER_KEY, Gateway, gateway_config, start_gateway

from gateway.catalog import Catalog
from gateway.config_load import parse
from providers import registry
from providers.types import ChatRequest

MESSAGES = [{"role": "user", "content": "hi"}]

# what aiohttp's client adds to every request, plus what the adapters set themselves
TRANSPORT = {"host", "content-length", "content-type", "accept", "accept-encoding", "user-agent"}
ADAPTER_HEADERS = {
    "openai": {"authorization"},
    "anthropic": {"x-api-key", "anthropic-version"},
    "gemini": {"x-goog-api-key"},
}
HOSTILE_HEADERS = {
    "X-Forwarded-For": "10.0.0.1",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "X-Real-IP": "10.0.0.1",
    "Forwarded": "for=10.0.0.1",
    "Connection": "keep-alive, X-Smuggle",
    "Keep-Alive": "timeout=99",
    "X-Smuggle": "1",
    "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
    "Proxy-Connection": "keep-alive",
    "Upgrade-Insecure-Requests": "1",
    "Cookie": "session=abc",
    "X-Api-Key": "sk-client-side-key-000000000",
    "OpenAI-Organization": "org-client",
    "Anthropic-Version": "1999-01-01",
    "X-Upstream-Base-Url": "http://10.0.0.1/v1",
    "X-Goog-Api-Key": "AIzaClientKey0000000000000000000",
}


async def test_only_allowlisted_headers_reach_the_provider(gateway: Gateway) -> None:
    body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "hi"}],
            "base_url": "http://10.0.0.1/v1", "api_base": "http://10.0.0.1/v1"}
    async with aiohttp.ClientSession() as http, http.post(
            gateway.url + "/v1/chat/completions", json=body, headers={**gateway.auth(), **HOSTILE_HEADERS}) as r:
        assert r.status == 200, await r.text()
    sent = gateway.fake.last
    names = {name.lower() for name in sent.headers}
    assert names <= TRANSPORT | ADAPTER_HEADERS["openai"], names - TRANSPORT
    assert sent.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
    assert gateway.key not in str(sent.headers) and gateway.key not in sent.raw.decode()
    assert sent.path == "/v1/chat/completions"  # the configured base URL; the body's base_url changed nothing


async def test_byok_key_replaces_the_configured_one_and_nothing_else(gateway: Gateway) -> None:
    byok = "sk-client-own-key-0123456789"
    body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http, http.post(
            gateway.url + "/v1/chat/completions", json=body,
            headers={**gateway.auth(), "X-Provider-Api-Key": byok, **HOSTILE_HEADERS}) as r:
        assert r.status == 200
    sent = gateway.fake.last
    assert sent.headers["Authorization"] == f"Bearer {byok}"
    assert {name.lower() for name in sent.headers} <= TRANSPORT | ADAPTER_HEADERS["openai"]
    assert PROVIDER_KEY not in str(sent.headers)


CONFIG = """
providers:
  oai: {kind: openai, base_url: "https://api.example/v1", api_key: "sk-oai-000000000000"}
  claude: {kind: anthropic, base_url: "https://claude.example", api_key: "sk-ant-000000000000"}
  google: {kind: gemini, base_url: "https://gemini.example", api_key: "AIza0000000000000000000"}
models:
  oai/m: {}
  claude/m: {max_output_tokens: 100}
  google/m: {}
"""


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("stream", [False, True])
def test_adapters_build_headers_from_their_allowlist_only(kind: str, stream: bool) -> None:
    """The translators see only the body: whatever a client puts there, no header and no URL comes of it."""
    catalog = Catalog(parse(CONFIG, {}))
    route = next(r for r in catalog.routes.values() if r.provider.kind == kind)
    body = {"model": route.model_id, "messages": [{"role": "user", "content": "hi"}],
            "headers": {"X-Forwarded-For": "10.0.0.1"}, "extra_headers": {"Cookie": "a=b"},
            "base_url": "http://10.0.0.1", "url": "http://10.0.0.1"}
    req = registry.get(kind).build_request(ChatRequest(body=body, stream=stream), route.target("k-123"))
    assert {name.lower() for name in req.headers} <= TRANSPORT | ADAPTER_HEADERS[kind]
    assert req.url.startswith(route.provider.base_url)
    assert "10.0.0.1" not in req.url


async def test_a_cookie_an_upstream_sets_never_rides_on_a_later_request(
        aiohttp_server: Any, fake_openai: tuple[FakeOpenAI, str]) -> None:
    """Providers behind a CDN set cookies (Cloudflare's `__cf_bm`); the gateway's sessions are shared by
    every client, so a kept cookie would carry one client's state into every other's requests. The
    upstream is reached by host name here: aiohttp's default jar ignores cookies from IP addresses."""
    fake, upstream_url = fake_openai
    gw = await start_gateway(aiohttp_server, gateway_config(upstream_url.replace("127.0.0.1", "localhost")), fake)
    try:
        client = gw.openai()
        fake.status, fake.fail_times = 400, 1
        fake.error_headers = {"Set-Cookie": "__cf_bm=one-clients-state; Path=/; HttpOnly"}
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert len(fake.requests) == 2
        assert "Cookie" not in fake.last.headers and "one-clients-state" not in fake.last.raw.decode()
    finally:
        await gw.close()
