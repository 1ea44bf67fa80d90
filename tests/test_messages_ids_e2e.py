"""What the official anthropic SDK reads off /v1/messages beyond the body, on both stores: the `request-id`
header Anthropic's API sends on every response (the SDK's `message._request_id` and `err.request_id`), and the
error `type` of an overloaded provider, the gateway's own concurrency cap included."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest
from apis_config import Upstreams, config_doc
from harness import Gateway, start_gateway

from gateway.config_load import parse

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]


# -- request-id ----------------------------------------------------------------------------------------


async def test_a_message_carries_its_request_id(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    assert raw.headers["request-id"] == raw.headers["X-Request-Id"]
    message = await raw.parse()
    assert message._request_id == raw.headers["X-Request-Id"]
    translated = await claude.messages.create(model="oai/gpt-4o", max_tokens=10, messages=MESSAGES,
                                              extra_headers={"X-Request-Id": "client-chosen-id-7"})
    assert translated._request_id == "client-chosen-id-7"


async def test_a_stream_carries_its_request_id(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    for model in ("claude/sonnet", "oai/gpt-4o"):
        async with claude.messages.stream(model=model, max_tokens=10, messages=MESSAGES) as stream:
            assert (await stream.get_final_message()).content
            assert stream.request_id and stream.request_id == stream.response.headers["X-Request-Id"]


async def test_an_error_carries_its_request_id(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude.messages.create(model="nobody/nothing", max_tokens=10, messages=MESSAGES)
    assert info.value.request_id and info.value.request_id == info.value.body["request_id"]  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError) as refused:
        async with anthropic.AsyncAnthropic(base_url=api_gateway.url, api_key="gw-nope", max_retries=0) as other:
            await other.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES, stream=True)
    assert refused.value.request_id == refused.value.response.headers["X-Request-Id"]
    fake = api_gateway.extra["upstreams"].anthropic
    fake.status, fake.error_body = 529, fake.overloaded_body()
    with pytest.raises(anthropic.APIStatusError) as upstream:
        async with claude.messages.stream(model="claude/sonnet", max_tokens=10, messages=MESSAGES) as stream:
            await stream.get_final_message()
    assert upstream.value.request_id == upstream.value.response.headers["X-Request-Id"]
    assert upstream.value.request_id != "req_011CFakeAnthropicUpstream0001"  # the gateway's id, not Anthropic's


async def test_count_tokens_carries_its_request_id(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    raw = await claude.messages.with_raw_response.count_tokens(model="claude/sonnet", messages=MESSAGES)
    assert raw.request_id == raw.headers["X-Request-Id"]


async def test_chat_answers_keep_openais_header_only(api_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            api_gateway.url + "/v1/chat/completions", headers=api_gateway.auth(),
            json={"model": "oai/gpt-4o", "messages": MESSAGES}) as r:
        assert r.status == 200 and r.headers["X-Request-Id"] and "request-id" not in r.headers


# -- overloaded ----------------------------------------------------------------------------------------


@pytest.fixture
async def capped(aiohttp_server: Any, all_upstreams: Upstreams) -> AsyncIterator[Gateway]:
    """api_gateway's config with one request at a time to the Claude provider."""
    doc = config_doc(all_upstreams.urls, "", f"t{uuid.uuid4().hex}:")
    doc["providers"]["claude"]["max_concurrency"] = 1
    gateway = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
    gateway.extra["upstreams"] = all_upstreams
    yield gateway
    await gateway.close()


async def test_the_gateways_own_overload_is_an_overloaded_error(capped: Gateway) -> None:
    fake = capped.extra["upstreams"].anthropic
    fake.delay_before_headers_s = 0.5
    client = anthropic.AsyncAnthropic(base_url=capped.url, api_key=capped.key, max_retries=0)
    first = asyncio.create_task(client.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES))
    while not fake.requests:
        await asyncio.sleep(0.01)
    for stream in (False, True):
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES, stream=stream)
        assert info.value.status_code == 503 and info.value.response.headers["Retry-After"] == "1"
        error = info.value.body["error"]  # type: ignore[index]
        assert (error["type"], error["code"]) == ("overloaded_error", "provider_overloaded")
    assert (await first).content
    await client.close()


@pytest.mark.parametrize(("status", "body", "anthropic_type"), [
    pytest.param(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                 "overloaded_error", id="529-overloaded"),
    pytest.param(503, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                 "overloaded_error", id="503-overloaded"),
    pytest.param(500, {"type": "error", "error": {"type": "api_error", "message": "Internal server error"}},
                 "api_error", id="500-api-error"),
])
async def test_upstream_failures_keep_anthropics_type(api_gateway: Gateway, claude: anthropic.AsyncAnthropic,
                                                      status: int, body: dict[str, Any], anthropic_type: str) -> None:
    fake = api_gateway.extra["upstreams"].anthropic
    fake.status, fake.error_body = status, body
    for stream in (False, True):
        with pytest.raises(anthropic.APIStatusError) as info:
            await claude.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES, stream=stream)
        assert info.value.body["error"]["type"] == anthropic_type  # type: ignore[index]
