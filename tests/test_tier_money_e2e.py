"""Processing tiers where money went wrong: premiums that stack (Claude fast mode run in the US), a stream cut
short that forgot the tier its chunks named, a discount no answer confirmed, a tier priced with fewer token
prices than its model, and a generation record naming another tier than the one charged."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from harness import Gateway
from test_apis_e2e import assert_charged, generation
from test_billing_e2e import key_state, nano, settled

from gateway.config import ConfigError
from gateway.config_load import parse
from gateway.state import RUNTIME

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
GPT4O = {"price": {"input_per_mtok": 2.5, "output_per_mtok": 10, "service_tiers": {
    "priority": {"input_per_mtok": 5, "output_per_mtok": 20},
    "flex": {"input_per_mtok": 1.25, "output_per_mtok": 5}}}}
SONNET = {"price": {"input_per_mtok": 3, "output_per_mtok": 15, "service_tiers": {
    "fast": {"input_per_mtok": 18, "output_per_mtok": 90},
    "us": {"input_per_mtok": 3.3, "output_per_mtok": 16.5}}}}
# sdk-messages-end-turn.response.json: 705 prompt and 25 completion tokens; fast (6x) with US inference on top
# (1.1x): Anthropic applies the data-residency multiplier over fast mode's price
CLAUDE_FAST_US_COST = 705 * 19_800 + 25 * 99_000
STREAM_STANDARD_COST = 14 * 2_500 + 30 * 10_000  # sdk-stream-text-with-usage.sse: 14 prompt, 30 completion
STREAM_PRIORITY_COST = 14 * 5_000 + 30 * 20_000


@pytest.fixture
async def tiered(make_api_gateway: Any) -> Gateway:
    gateway: Gateway = await make_api_gateway({"oai/gpt-4o": GPT4O, "claude/sonnet": SONNET})
    gateway.extra["upstreams"].openai.reset()
    return gateway


@pytest.fixture
async def claude(tiered: Gateway) -> Any:
    client = anthropic.AsyncAnthropic(base_url=tiered.url, api_key=tiered.key, max_retries=0)
    yield client
    await client.close()


async def test_claude_fast_mode_in_the_us_is_charged_both_premiums(tiered: Gateway, claude: Any) -> None:
    """Anthropic's data-residency multiplier (`inference_geo: "us"`, 1.1x) applies on top of fast mode's price:
    a request asking both was charged the fast price alone, the operator paying 10% of 6x more than the key."""
    tiered.extra["upstreams"].anthropic.usage = {"speed": "fast", "inference_geo": "us"}
    before, _, _ = await key_state(tiered)
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           extra_body={"speed": "fast", "inference_geo": "us"},
                                           extra_headers={"anthropic-beta": "fast-mode-2026-02-01"})
    assert nano((message.model_extra or {})["billing"]["request_cost"]) == CLAUDE_FAST_US_COST
    record = await assert_charged(tiered, before, CLAUDE_FAST_US_COST, message.id, "messages")
    assert record["service_tier"] == "fast+us"


async def test_the_hold_covers_both_premiums_a_request_asks_for(tiered: Gateway, claude: Any) -> None:
    """A balance that covers the hold of a fast request does not cover one that is fast and in the US too."""
    tiered.extra["upstreams"].anthropic.usage = {"speed": "fast"}
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           extra_body={"speed": "fast"})
    fast_hold = nano((message.model_extra or {})["billing"]["reserved"])
    await settled(tiered)
    balance, _, _ = await key_state(tiered)
    await tiered.app[RUNTIME].store.topup(tiered.key_id, fast_hold - balance)
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                     extra_body={"speed": "fast", "inference_geo": "us"})
    assert caught.value.status_code == 402


async def test_a_stream_cut_short_is_charged_at_the_tier_its_chunks_named(tiered: Gateway) -> None:
    """OpenAI names the serving tier on every chunk; a stream that ends before its usage chunk (the client hung
    up, the upstream broke) is billed an estimate, which was priced at the standard tier even when every chunk
    said priority (an OpenAI project whose default tier is priority): hanging up early halved the bill."""
    fake = tiered.extra["upstreams"].openai
    fake.served_tier, fake.close_mid_stream_after = "priority", 3
    before, _, _ = await key_state(tiered)
    stream = await tiered.openai().chat.completions.create(
        model="oai/gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    ids = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            ids.append(chunk.id)
    await settled(tiered)
    record = await generation(tiered, ids[0])
    assert record["estimated"] is True
    cost = int(record["tokens_prompt"]) * 5_000 + int(record["tokens_completion"]) * 20_000
    assert int(record["tokens_completion"]) > 0
    await assert_charged(tiered, before, cost, ids[0], "chat")


async def test_a_discount_no_answer_confirms_is_not_given(tiered: Gateway, claude: Any) -> None:
    """A flex request on /v1/messages to an OpenAI model goes to OpenAI as flex, and OpenAI may serve it at the
    standard tier: an answer naming no tier confirms no discount, so it is charged the standard price, not flex."""
    fake = tiered.extra["upstreams"].openai
    before, _, _ = await key_state(tiered)
    async with claude.messages.stream(model="oai/gpt-4o", max_tokens=100, messages=MESSAGES,
                                      extra_body={"service_tier": "flex"}) as stream:
        final = await stream.get_final_message()
    assert fake.last.body["service_tier"] == "flex"
    await assert_charged(tiered, before, STREAM_STANDARD_COST, final.id, "messages")


async def test_the_record_names_the_tier_the_charge_used(tiered: Gateway) -> None:
    """An answer that names no tier is charged at the dearer tier asked for, and an answer naming a tier with no
    price here at the standard one: the generation record (and usage export) must name what was charged."""
    fake = tiered.extra["upstreams"].openai
    before, _, _ = await key_state(tiered)
    stream = await tiered.openai().chat.completions.create(  # the recorded stream names no tier
        model="oai/gpt-4o", messages=MESSAGES, stream=True, service_tier="priority",  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    record = await assert_charged(tiered, before, STREAM_PRIORITY_COST, chunks[0].id, "chat")
    assert record["service_tier"] == "priority"
    fake.served_tier = "scale"  # a tier this gateway has no price for
    before, _, _ = await key_state(tiered)
    answer = await tiered.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    record = await assert_charged(tiered, before, 19 * 2_500 + 10 * 10_000, answer.id, "chat")
    assert not record.get("service_tier")


@pytest.mark.parametrize("left_out", ["output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok"])
def test_a_tier_must_price_every_kind_of_token_its_model_prices(left_out: str) -> None:
    """A tier priced with fewer fields than its model's price billed the rest at 0 (output: free flex output) or
    at the tier's input price (cache reads 10x too dear, Claude's cache writes too cheap): refused at load."""
    prices = {"input_per_mtok": 6, "output_per_mtok": 30, "cached_input_per_mtok": 0.6, "cache_write_per_mtok": 7.5}
    tier = {name: value for name, value in prices.items() if name != left_out}
    doc = {"providers": {"claude": {"kind": "anthropic", "base_url": "https://api.anthropic.com"}},
           "models": {"claude/m": {"price": {"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3,
                                             "cache_write_per_mtok": 3.75, "service_tiers": {"priority": tier}}}}}
    with pytest.raises(ConfigError, match=rf"priority.*{left_out}"):
        parse(json.dumps(doc), {})
    doc["models"]["claude/m"]["price"]["service_tiers"]["priority"] = prices  # type: ignore[index]
    parse(json.dumps(doc), {})


async def test_a_premium_without_a_price_adds_nothing_to_those_priced(tiered: Gateway, claude: Any,
                                                                      log_lines: Any) -> None:
    """Claude served at fast speed in a geography this gateway does not price is charged the fast price (and the
    operator told), not the standard one."""
    tiered.extra["upstreams"].anthropic.usage = {"speed": "fast", "inference_geo": "eu"}
    before, _, _ = await key_state(tiered)
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           extra_body={"speed": "fast"})
    record = await assert_charged(tiered, before, 705 * 18_000 + 25 * 90_000, message.id, "messages")
    assert record["service_tier"] == "fast"
    assert any(line.get("service_tier") == "eu" and line.get("level") == "warning" for line in log_lines())
