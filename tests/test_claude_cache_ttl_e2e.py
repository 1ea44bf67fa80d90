"""Claude's 1-hour prompt-cache writes through the running gateway, on both stores: Anthropic bills a write kept
for an hour (`cache_control: {"type": "ephemeral", "ttl": "1h"}`) at twice the input price, a 5-minute one at
1.25x, and says which were which in `usage.cache_creation`. The key is charged as the operator is, natively on
/v1/messages and through /v1/chat/completions, streamed or not."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from harness import Gateway
from test_apis_e2e import assert_charged
from test_billing_e2e import key_state, nano

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
# 12 fresh input tokens, 2,000 read from the cache, 300 written to it (100 for 5 minutes, 200 for an hour)
CACHED_USAGE = {"input_tokens": 12, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}
# claude/sonnet (apis_config): input 3, cache read 0.3, cache write 3.75, no 1-hour price (so 2 x input = 6),
# output 15 USD per Mtok; in nano-dollars per token: 3,000 / 300 / 3,750 / 6,000 / 15,000
PROMPT_COST = 12 * 3_000 + 2000 * 300 + 100 * 3_750 + 200 * 6_000
CREATE_COST = PROMPT_COST + 25 * 15_000  # sdk-messages-end-turn.response.json: 25 output tokens
STREAM_COST = PROMPT_COST + 6 * 15_000  # sdk-stream-basic.sse: 6 output tokens


@pytest.fixture
def cached(api_gateway: Gateway) -> Gateway:
    api_gateway.extra["upstreams"].anthropic.usage = {**CACHED_USAGE, "output_tokens": 25}
    return api_gateway


async def test_a_native_message_pays_one_hour_writes_at_their_price(cached: Gateway,
                                                                   claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(cached)
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES)
    assert message.usage.cache_creation is not None  # Anthropic's own usage reaches the client as it came
    assert message.usage.cache_creation.ephemeral_1h_input_tokens == 200
    assert nano((message.model_extra or {})["billing"]["request_cost"]) == CREATE_COST
    await assert_charged(cached, before, CREATE_COST, message.id, "messages")


async def test_a_native_stream_pays_one_hour_writes_at_their_price(cached: Gateway,
                                                                  claude: anthropic.AsyncAnthropic) -> None:
    cached.extra["upstreams"].anthropic.usage = CACHED_USAGE  # the recorded stream's 6 output tokens
    before, _, _ = await key_state(cached)
    async with claude.messages.stream(model="claude/sonnet", max_tokens=100, messages=MESSAGES) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    delta = next(e for e in events if e.type == "message_delta")
    assert nano((delta.model_extra or {})["billing"]["request_cost"]) == STREAM_COST
    await assert_charged(cached, before, STREAM_COST, final.id, "messages")


async def test_chat_to_claude_pays_one_hour_writes_and_says_how_many(cached: Gateway) -> None:
    before, _, _ = await key_state(cached)
    answer = await cached.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.usage is not None and answer.usage.prompt_tokens == 2312
    details = answer.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == 2000
    assert details.cache_write_tokens == 300
    assert (details.model_extra or {})["cache_write_1h_tokens"] == 200
    assert nano((answer.model_extra or {})["billing"]["request_cost"]) == CREATE_COST
    await assert_charged(cached, before, CREATE_COST, answer.id, "chat")


async def test_a_chat_stream_to_claude_pays_one_hour_writes(cached: Gateway) -> None:
    cached.extra["upstreams"].anthropic.usage = CACHED_USAGE
    before, _, _ = await key_state(cached)
    stream = await cached.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                           stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert (usage.prompt_tokens_details.model_extra or {})["cache_write_1h_tokens"] == 200
    assert nano((usage.model_extra or {})["cost"]) == STREAM_COST
    await assert_charged(cached, before, STREAM_COST, chunks[0].id, "chat")


async def test_web_searches_are_charged_apiece(cached: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    """Anthropic bills its web_search server tool at $10 per 1,000 searches beside the tokens; the key pays
    `price.per_web_search` (by default that same $0.01) for each, natively, streamed or not."""
    fake = cached.extra["upstreams"].anthropic
    searched = {"server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1}}
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    fake.usage = {**CACHED_USAGE, **searched, "output_tokens": 25}
    before, _, _ = await key_state(cached)
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           tools=tools)  # type: ignore[arg-type]
    cost = CREATE_COST + 3 * 10_000_000
    assert nano((message.model_extra or {})["billing"]["request_cost"]) == cost
    await assert_charged(cached, before, cost, message.id, "messages")
    fake.usage, before = {**CACHED_USAGE, **searched}, before - cost
    async with claude.messages.stream(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                      tools=tools) as stream:  # type: ignore[arg-type]
        final = await stream.get_final_message()
    await assert_charged(cached, before, STREAM_COST + 3 * 10_000_000, final.id, "messages")


async def test_an_operators_one_hour_price_is_the_one_charged(make_api_gateway: Any) -> None:
    gw = await make_api_gateway({"claude/sonnet": {"price": {
        "input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3, "cache_write_per_mtok": 3.75,
        "cache_write_1h_per_mtok": 7.5}}})
    gw.extra["upstreams"].anthropic.usage = {**CACHED_USAGE, "output_tokens": 25}
    before, _, _ = await key_state(gw)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    message = await client.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES)
    await client.close()
    cost = CREATE_COST - 200 * 6_000 + 200 * 7_500
    await assert_charged(gw, before, cost, message.id, "messages")
    models = await gw.openai().models.retrieve("claude/sonnet")
    assert (models.model_extra or {})["pricing"]["cache_write_1h_per_mtok"] == 7.5
