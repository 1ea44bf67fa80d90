"""Processing tiers (`service_tier`) through the running gateway, on both stores: OpenAI sells flex at about half
and priority at about twice the standard price, Anthropic names the tier it used in `usage.service_tier`. A
request may ask only for a tier the model prices (else 400, nothing sent, nothing charged), and is charged by the
tier its answer says served it, so a client cannot make the operator pay priority prices at standard ones."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from harness import Gateway
from test_apis_e2e import assert_charged
from test_billing_e2e import key_state, nano, settled

from gateway.catalog import Price
from gateway.config import ConfigError
from gateway.config_load import parse
from gateway.state import RUNTIME

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
TIERS: dict[str, dict[str, Any]] = {
    "oai/gpt-4o": {"price": {"input_per_mtok": 2.5, "output_per_mtok": 10, "service_tiers": {
        "priority": {"input_per_mtok": 5, "output_per_mtok": 20},
        "flex": {"input_per_mtok": 1.25, "output_per_mtok": 5}}}},
    "claude/sonnet": {"price": {"input_per_mtok": 3, "output_per_mtok": 15, "service_tiers": {
        "priority": {"input_per_mtok": 6, "output_per_mtok": 30},
        "fast": {"input_per_mtok": 18, "output_per_mtok": 90}}}},
}
# docs-chat-default.response.json: 19 prompt and 10 completion tokens; nano-dollars per token at each tier
STANDARD_COST = 19 * 2_500 + 10 * 10_000
PRIORITY_COST = 19 * 5_000 + 10 * 20_000
FLEX_COST = 19 * 1_250 + 10 * 5_000
STREAM_PRIORITY_COST = 14 * 5_000 + 30 * 20_000  # sdk-stream-text-with-usage.sse: 14 prompt, 30 completion
CLAUDE_PRIORITY_COST = 705 * 6_000 + 25 * 30_000  # sdk-messages-end-turn.response.json
CLAUDE_STREAM_PRIORITY_COST = 11 * 6_000 + 6 * 30_000  # sdk-stream-basic.sse
CLAUDE_FAST_COST = 705 * 18_000 + 25 * 90_000
CLAUDE_STANDARD_COST = 705 * 3_000 + 25 * 15_000


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def tiered(request: pytest.FixtureRequest, make_api_gateway: Any) -> Gateway:
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    gateway: Gateway = await make_api_gateway(TIERS, store_url)
    gateway.extra["upstreams"].openai.reset()
    return gateway


def openai_fake(gateway: Gateway) -> Any:
    return gateway.extra["upstreams"].openai


async def test_a_priority_answer_is_charged_at_the_priority_price(tiered: Gateway) -> None:
    openai_fake(tiered).served_tier = "priority"
    before, _, _ = await key_state(tiered)
    raw = await tiered.openai().chat.completions.with_raw_response.create(
        model="oai/gpt-4o", messages=MESSAGES, service_tier="priority")  # type: ignore[arg-type]
    body = json.loads(raw.content)
    assert openai_fake(tiered).last.body["service_tier"] == "priority"  # asked of the upstream as the client did
    assert body["service_tier"] == "priority"
    assert nano(body["billing"]["request_cost"]) == PRIORITY_COST == nano(body["usage"]["cost"])
    record = await assert_charged(tiered, before, PRIORITY_COST, body["id"], "chat")
    assert record["service_tier"] == "priority"


async def test_priority_served_at_the_standard_tier_costs_the_standard_price(tiered: Gateway) -> None:
    openai_fake(tiered).served_tier = "default"  # OpenAI may serve a priority request at the standard tier
    before, _, _ = await key_state(tiered)
    answer = await tiered.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                           service_tier="priority")
    assert nano((answer.model_extra or {})["billing"]["request_cost"]) == STANDARD_COST
    record = await assert_charged(tiered, before, STANDARD_COST, answer.id, "chat")
    assert "service_tier" not in record


@pytest.mark.parametrize(("asked", "served", "cost"), [
    ("flex", "flex", FLEX_COST),
    # `auto` defers to the operator's OpenAI project, which may serve priority: the answer says so
    ("auto", "priority", PRIORITY_COST),
], ids=["flex", "project-default-priority"])
async def test_the_tier_an_answer_names_sets_the_price(tiered: Gateway, asked: str, served: str, cost: int) -> None:
    openai_fake(tiered).served_tier = served
    before, _, _ = await key_state(tiered)
    answer = await tiered.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                           service_tier=asked)  # type: ignore[arg-type]
    await assert_charged(tiered, before, cost, answer.id, "chat")


async def test_a_streamed_priority_answer_is_charged_at_the_priority_price(tiered: Gateway) -> None:
    openai_fake(tiered).served_tier = "priority"
    before, _, _ = await key_state(tiered)
    stream = await tiered.openai().chat.completions.create(
        model="oai/gpt-4o", messages=MESSAGES, stream=True, service_tier="priority",  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].usage is not None
    assert nano((chunks[-1].usage.model_extra or {})["cost"]) == STREAM_PRIORITY_COST
    await assert_charged(tiered, before, STREAM_PRIORITY_COST, chunks[0].id, "chat")


async def test_a_tier_without_a_price_is_refused_before_anything_is_sent(make_api_gateway: Any) -> None:
    gateway: Gateway = await make_api_gateway({})  # gpt-4o without tiers
    fake = openai_fake(gateway)
    fake.reset()
    before, _, _ = await key_state(gateway)
    for tier in ("priority", "flex", "scale"):
        with pytest.raises(openai.BadRequestError) as caught:
            await gateway.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                           service_tier=tier)  # type: ignore[arg-type]
        error = caught.value.body
        assert isinstance(error, dict) and error["code"] == "unsupported_value" and error["param"] == "service_tier"
        assert tier in error["message"]
    for tier in ("auto", "default"):  # the standard tier, by the names clients send for it
        await gateway.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                       service_tier=tier)  # type: ignore[arg-type]
    await settled(gateway)
    assert len(fake.requests) == 2
    balance, _, _ = await key_state(gateway)
    assert balance == before - 2 * STANDARD_COST


async def test_a_fallback_without_the_tier_is_skipped(make_api_gateway: Any) -> None:
    gateway: Gateway = await make_api_gateway({"oai/gpt-4o": {**TIERS["oai/gpt-4o"], "fallbacks": ["claude/sonnet"]}})
    fake = openai_fake(gateway)
    fake.reset()
    fake.status = 500
    sent = len(gateway.extra["upstreams"].anthropic.requests)
    with pytest.raises(openai.InternalServerError):
        await gateway.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                       service_tier="priority")
    assert len(gateway.extra["upstreams"].anthropic.requests) == sent  # priority has no price on claude/sonnet


async def test_a_dropped_service_tier_serves_the_standard_tier(make_api_gateway: Any) -> None:
    gateway: Gateway = await make_api_gateway({"oai/gpt-4o": {"params": {"drop": ["service_tier"]}}})
    fake = openai_fake(gateway)
    fake.reset()
    before, _, _ = await key_state(gateway)
    answer = await gateway.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                            service_tier="priority")
    assert "service_tier" not in fake.last.body
    await assert_charged(gateway, before, STANDARD_COST, answer.id, "chat")


async def test_an_unpriced_tier_an_answer_names_is_billed_at_the_model_price_and_logged(
        make_api_gateway: Any, log_lines: Any) -> None:
    gateway: Gateway = await make_api_gateway({})
    fake = openai_fake(gateway)
    fake.reset()
    fake.served_tier = "priority"  # the operator's project serves priority by default, and it has no price here
    before, _, _ = await key_state(gateway)
    answer = await gateway.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    await assert_charged(gateway, before, STANDARD_COST, answer.id, "chat")
    assert any(line.get("service_tier") == "priority" and line.get("level") == "warning" for line in log_lines())


async def test_the_hold_covers_the_tier_asked_for(tiered: Gateway) -> None:
    """A priority request holds at the priority price: a balance that covers the standard worst case only is
    refused up front, not charged past what it held."""
    runtime = tiered.app[RUNTIME]
    balance, _, _ = await key_state(tiered)
    await runtime.store.topup(tiered.key_id, -balance + 1_500_000)  # $0.0015
    # 100 output tokens at most: standard worst case ~0.0010 USD, priority ~0.0020 USD
    await tiered.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES, max_tokens=100)  # type: ignore[arg-type]
    with pytest.raises(openai.APIStatusError) as caught:
        await tiered.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                      max_tokens=100, service_tier="priority")
    assert caught.value.status_code == 402


async def test_a_native_claude_message_served_at_priority_is_charged_so(tiered: Gateway,
                                                                       claude_of: Any) -> None:
    tiered.extra["upstreams"].anthropic.usage = {"service_tier": "priority"}
    before, _, _ = await key_state(tiered)
    client = claude_of(tiered)
    message = await client.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES)
    assert nano((message.model_extra or {})["billing"]["request_cost"]) == CLAUDE_PRIORITY_COST
    await assert_charged(tiered, before, CLAUDE_PRIORITY_COST, message.id, "messages")
    before, _, _ = await key_state(tiered)
    async with client.messages.stream(model="claude/sonnet", max_tokens=100, messages=MESSAGES) as stream:
        final = await stream.get_final_message()
    await assert_charged(tiered, before, CLAUDE_STREAM_PRIORITY_COST, final.id, "messages")
    tiered.extra["upstreams"].anthropic.usage = None


async def test_chat_to_claude_at_priority_is_charged_so(tiered: Gateway) -> None:
    tiered.extra["upstreams"].anthropic.usage = {"service_tier": "priority"}
    before, _, _ = await key_state(tiered)
    answer = await tiered.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                           service_tier="priority")
    assert "service_tier" not in tiered.extra["upstreams"].anthropic.last.body  # Claude has no such request field
    await assert_charged(tiered, before, CLAUDE_PRIORITY_COST, answer.id, "chat")
    tiered.extra["upstreams"].anthropic.usage = None


def test_the_standard_tier_cannot_be_priced_apart() -> None:
    doc = {"providers": {"oai": {"kind": "openai", "base_url": "https://api.openai.com/v1"}},
           "models": {"oai/m": {"price": {"input_per_mtok": 1, "service_tiers": {"default": {"input_per_mtok": 2}}}}}}
    with pytest.raises(ConfigError, match=r"service_tiers.*standard tier"):
        parse(json.dumps(doc), {})


def test_a_tier_is_priced_by_name_and_the_standard_names_are_the_model_price() -> None:
    priority = Price(5, 20, 5, 0)
    price = Price(1, 2, 1, 0, tiers=(("priority", priority),))
    assert price.tier("priority") is priority
    assert all(price.tier(name) is price for name in ("", "auto", "default", "standard", "standard_only"))
    assert price.tier("flex") is None


async def test_claude_fast_mode_is_charged_at_its_price(tiered: Gateway, claude_of: Any) -> None:
    """Anthropic's `speed: "fast"` (2-6x the price) reaches Claude on the native route with the client's
    `anthropic-beta`, and `usage.speed` says whether it ran fast."""
    upstream = tiered.extra["upstreams"].anthropic
    upstream.usage = {"speed": "fast"}
    before, _, _ = await key_state(tiered)
    client = claude_of(tiered)
    message = await client.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           extra_body={"speed": "fast"},
                                           extra_headers={"anthropic-beta": "fast-mode-2026-02-01"})
    assert upstream.last.body["speed"] == "fast"
    record = await assert_charged(tiered, before, CLAUDE_FAST_COST, message.id, "messages")
    assert record["service_tier"] == "fast"
    upstream.usage = {"speed": "standard"}  # fast capacity ran out: served at the standard speed and price
    before, _, _ = await key_state(tiered)
    message = await client.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           extra_body={"speed": "fast"})
    await assert_charged(tiered, before, CLAUDE_STANDARD_COST, message.id, "messages")
    upstream.usage = None


@pytest.mark.parametrize(("field", "value"), [("speed", "fast"), ("inference_geo", "us"), ("service_tier", "priority")])
async def test_an_unpriced_claude_tier_is_refused_on_the_native_route(make_api_gateway: Any, claude_of: Any,
                                                                       field: str, value: str) -> None:
    gateway: Gateway = await make_api_gateway({})
    upstream = gateway.extra["upstreams"].anthropic
    sent = len(upstream.requests)
    before, _, _ = await key_state(gateway)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude_of(gateway).messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                                 extra_body={field: value})
    error = caught.value.body
    assert isinstance(error, dict) and error["error"]["type"] == "invalid_request_error"
    assert field in error["error"]["message"]
    assert len(upstream.requests) == sent
    await settled(gateway)
    assert (await key_state(gateway))[0] == before
    for standard in ({"speed": "standard"}, {"inference_geo": "global"}, {"service_tier": "standard_only"}):
        await claude_of(gateway).messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                                 extra_body=standard)


async def test_gemini_serves_and_charges_the_standard_tier_whatever_is_asked(make_api_gateway: Any) -> None:
    """No translation to Gemini carries a tier, and its answers name none: the standard tier is what runs, so
    it is what is charged (a priced flex is not a discount the operator never got), and no tier is refused."""
    gateway: Gateway = await make_api_gateway({"google/flash": {"price": {
        "input_per_mtok": 0.1, "output_per_mtok": 0.4,
        "service_tiers": {"flex": {"input_per_mtok": 0.05, "output_per_mtok": 0.2}}}}})
    charges = []
    for extra in ({}, {"service_tier": "flex"}, {"service_tier": "priority"}):
        before, _, _ = await key_state(gateway)
        await gateway.openai().chat.completions.create(model="google/flash", messages=MESSAGES,  # type: ignore[arg-type]
                                                       extra_body=extra)
        await settled(gateway)
        charges.append(before - (await key_state(gateway))[0])
    assert charges[0] > 0 and charges == [charges[0]] * 3


async def test_the_model_list_shows_the_tiers_a_model_prices(tiered: Gateway) -> None:
    """A client chooses a tier by what it costs: /v1/models lists each priced tier's token prices."""
    listed = {model.id: model async for model in tiered.openai().models.list()}
    pricing = (listed["oai/gpt-4o"].model_extra or {})["pricing"]
    assert pricing["service_tiers"]["priority"]["input_per_mtok"] == 5
    assert pricing["service_tiers"]["flex"]["output_per_mtok"] == 5
    assert set(pricing["service_tiers"]) == {"priority", "flex"}
    assert (listed["google/flash"].model_extra or {})["pricing"]["service_tiers"] == {}
