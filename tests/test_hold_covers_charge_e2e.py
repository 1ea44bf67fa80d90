"""The hold placed before the upstream call covers what the request is then charged, where it did not: xAI's reasoning
beyond `max_tokens`, a `service_tier` asked on `/v1/messages` of an OpenAI model (held at it, never sent: the account's
default tier served), and a preset's `speed` / `inference_geo` (held, or charged, at a tier Claude was never asked
for). Each case checks what reached the upstream, the billing block (`request_cost` never above `reserved`) and the
ledger (the balance moved by exactly the cost, no hold left)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
import test_upstream_oddities as oddities
from apis_config import config_doc
from fakes.openai_upstream import FakeOpenAI
from harness import Gateway, start_gateway
from test_apis_e2e import assert_charged
from test_billing_e2e import key_state, nano, settled
from test_compat_upstreams import answer, client_usage_and_bill
from test_upstream_oddities import RawUpstream, call, ledger

from gateway.config_load import parse
from gateway.state import RUNTIME

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
raw_upstream = oddities.raw_upstream  # an upstream that answers the bytes a test gives it


async def set_balance(gateway: Gateway, balance: int) -> None:
    await settled(gateway)
    now, _, _ = await key_state(gateway)
    await gateway.app[RUNTIME].store.topup(gateway.key_id, balance - now)


# -- xAI: reasoning counted beside completion_tokens, not bounded by max_tokens ----------------------------------

# 1 and 2 USD per million tokens: a token costs 1,000 / 2,000 nano-dollars
GROK = {"upstream": "grok-3-mini", "price": {"input_per_mtok": 1, "output_per_mtok": 2},
        "params": {"reasoning_beyond_max_tokens": True}, "reasoning": {"efforts": ["low", "high"]}}
# max_tokens 100 bounded the answer's text; the reasoning beside it (xAI: in total_tokens only) went on for 3,000
BEYOND = {"prompt_tokens": 20, "completion_tokens": 100, "total_tokens": 3_120,
          "completion_tokens_details": {"reasoning_tokens": 3_000}}
BEYOND_COST = 20 * 1_000 + 3_100 * 2_000


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def xai(request: pytest.FixtureRequest, aiohttp_server: Any,
              raw_upstream: RawUpstream) -> AsyncIterator[tuple[Gateway, RawUpstream]]:
    """A gateway whose provider `xai` is the raw upstream, serving grok-3-mini."""
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    doc = config_doc({"openai": raw_upstream.url + "/v1", "anthropic": raw_upstream.url,
                      "gemini": raw_upstream.url}, store_url, f"t{uuid.uuid4().hex}:")
    doc["providers"]["xai"] = {"kind": "openai", "base_url": raw_upstream.url + "/v1", "api_key": "xai-test-0000"}
    doc["models"]["xai/grok-3-mini"] = GROK
    gw = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), FakeOpenAI())
    yield gw, raw_upstream
    await gw.close()


def grok(stream: bool, **fields: Any) -> dict[str, Any]:
    body = {"model": "xai/grok-3-mini", "messages": MESSAGES, "max_tokens": 100, "stream": stream, **fields}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_xai_reasoning_beyond_max_tokens_is_within_the_hold(xai: tuple[Gateway, RawUpstream],
                                                                  stream: bool) -> None:
    """xAI counts reasoning beside `completion_tokens`, and `max_tokens` bounds the answer's text only: a request
    held at 100 output tokens was charged 3,100, past its hold (a short balance served, the rest a shortfall)."""
    gw, up = xai
    before = await ledger(gw)
    up.answer = answer(json.loads(json.dumps(BEYOND)), stream)
    status, raw = await call(gw, "/v1/chat/completions", grok(stream, reasoning_effort="high"))
    assert status == 200, raw
    got, bill = client_usage_and_bill(raw, stream)
    assert got["completion_tokens"] == 3_100 and got["completion_tokens_details"]["reasoning_tokens"] == 3_000
    assert nano(bill["request_cost"]) == BEYOND_COST <= nano(bill["reserved"])
    after = await ledger(gw)
    assert before[0] - after[0] == BEYOND_COST and after[2] == 0
    assert up.requests[-1]["body"]["max_tokens"] == 100  # the client's bound is what xAI is sent


async def test_xai_balance_short_of_the_reasoning_room_is_refused_before_anything_is_sent(
        xai: tuple[Gateway, RawUpstream]) -> None:
    """A balance that covers 100 output tokens but not the reasoning xAI may add to them gets 402, nothing sent."""
    gw, up = xai
    await set_balance(gw, 1_000_000)  # $0.001: 100 output tokens are 200,000 nano-dollars, 3,100 are 6,200,000
    sent = len(up.requests)
    status, raw = await call(gw, "/v1/chat/completions", grok(False))
    assert status == 402, raw
    assert json.loads(raw)["error"]["code"] == "insufficient_quota"
    assert len(up.requests) == sent
    assert (await ledger(gw))[2] == 0


async def test_legacy_completions_on_such_a_model_hold_the_reasoning_room_too(xai: tuple[Gateway, RawUpstream]) -> None:
    """/v1/completions to a chat model goes as one chat turn: its `max_tokens` (16 by default) bounds the text only."""
    gw, up = xai
    up.answer = answer(json.loads(json.dumps(BEYOND)), False)
    status, raw = await call(gw, "/v1/completions", {"model": "xai/grok-3-mini", "prompt": "Hello"})
    assert status == 200, raw
    bill = json.loads(raw)["billing"]
    assert nano(bill["request_cost"]) == BEYOND_COST <= nano(bill["reserved"])
    assert nano(bill["reserved"]) >= (16 + 4_096) * 2_000  # billing.default_max_output_tokens of room


async def test_a_model_whose_max_tokens_bounds_reasoning_is_held_at_max_tokens(
        xai: tuple[Gateway, RawUpstream]) -> None:
    """Only the routes whose reasoning goes beyond max_tokens hold room for it: gpt-4o's hold is unchanged."""
    gw, up = xai
    up.answer = answer({"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}, False)
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES,
                                                          "max_tokens": 100})
    assert status == 200, raw
    # the prompt estimate (a few tokens at 2,500) and 100 output tokens at 10,000
    assert 1_000_000 < nano(json.loads(raw)["billing"]["reserved"]) < 1_100_000


# -- /v1/messages on an OpenAI model: the service_tier asked is the one OpenAI is sent --------------------------

GPT4O = {"price": {"input_per_mtok": 2.5, "output_per_mtok": 10, "service_tiers": {
    "priority": {"input_per_mtok": 5, "output_per_mtok": 20},
    "flex": {"input_per_mtok": 1.25, "output_per_mtok": 5}}}}
PER_TOKEN = {"default": (2_500, 10_000), "priority": (5_000, 20_000), "flex": (1_250, 5_000)}
# what a /v1/messages `service_tier` becomes for OpenAI: Anthropic's `standard_only` is OpenAI's `default`
SENT = {None: None, "auto": "auto", "standard_only": "default", "flex": "flex", "priority": "priority"}


def served(sent: str | None, account_default: str | None) -> str:
    """The tier OpenAI serves a request sent `sent`: `auto` or none is the project's default tier."""
    return sent if sent not in (None, "auto") else (account_default or "default")


@pytest.mark.parametrize("account_default", [None, "priority"], ids=["no-default", "default-priority"])
@pytest.mark.parametrize("asked", list(SENT), ids=[str(a) for a in SENT])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_messages_service_tier_reaches_openai_and_the_hold_covers_what_it_serves(
        make_api_gateway: Any, claude_of: Any, account_default: str | None, asked: str | None,
        stream: bool) -> None:
    """The translation left `service_tier` behind, while the hold read it: `flex` on an account whose default tier is
    priority was held at the standard price, served at priority (nothing asked otherwise) and charged past its hold."""
    providers = {"oai": {"default_service_tier": account_default}} if account_default else None
    gateway: Gateway = await make_api_gateway({"oai/gpt-4o": GPT4O}, providers=providers)
    fake = gateway.extra["upstreams"].openai
    fake.reset()
    tier = served(SENT[asked], account_default)
    fake.served_tier = tier
    before, _, _ = await key_state(gateway)
    claude = claude_of(gateway)
    extra = {} if asked is None else {"service_tier": asked}
    if stream:
        async with claude.messages.stream(model="oai/gpt-4o", max_tokens=100, messages=MESSAGES,
                                          extra_body=extra) as events:
            message = await events.get_final_message()
        prompt, completion = 14, 30  # sdk-stream-text-with-usage.sse
    else:
        message = await claude.messages.create(model="oai/gpt-4o", max_tokens=100, messages=MESSAGES,
                                               extra_body=extra)
        prompt, completion = 19, 10  # docs-chat-default.response.json
    assert fake.last.body.get("service_tier") == SENT[asked]
    per_input, per_output = PER_TOKEN[tier]
    cost = prompt * per_input + completion * per_output
    record = await assert_charged(gateway, before, cost, message.id, "messages")
    assert cost <= nano(record["reserved"])
    assert nano(record["reserved"]) >= 100 * per_output  # the worst case at the tier served, however long the answer


# -- a preset's speed and inference_geo reach Claude, held and charged at fast+us --------------------------------

SONNET = {"price": {"input_per_mtok": 3, "output_per_mtok": 15, "service_tiers": {
    "fast": {"input_per_mtok": 18, "output_per_mtok": 90},
    "us": {"input_per_mtok": 3.3, "output_per_mtok": 16.5}}}}
PRESET = {"fast-us": {"model": "claude/sonnet", "params": {"speed": "fast", "inference_geo": "us"}}}
FAST_US = (19_800, 99_000)  # fast (6x) with US inference (1.1x) on top, per token
COUNTS = {"messages": (705, 25), "chat": (705, 25)}  # sdk-messages-end-turn.response.json, whatever is asked


async def ask_preset(gateway: Gateway, claude: anthropic.AsyncAnthropic, endpoint: str) -> tuple[str, dict[str, Any]]:
    if endpoint == "messages":
        message = await claude.messages.create(model="@preset/fast-us", max_tokens=100, messages=MESSAGES)
        return message.id, (message.model_extra or {})["billing"]
    done = await gateway.openai().chat.completions.create(model="@preset/fast-us", messages=MESSAGES,  # type: ignore[arg-type]
                                                          max_tokens=100)
    return done.id, (done.model_extra or {})["billing"]


@pytest.mark.parametrize("endpoint", ["messages", "chat"])
async def test_a_presets_speed_and_inference_geo_reach_claude_and_are_charged_there(
        make_api_gateway: Any, claude_of: Any, endpoint: str) -> None:
    """On /v1/messages the preset's speed and inference_geo were left out (not Anthropic fields to the preset code):
    Claude served the standard tier unasked; on chat they were held at fast+us and never sent."""
    gateway: Gateway = await make_api_gateway({"claude/sonnet": SONNET}, presets=PRESET)
    upstream = gateway.extra["upstreams"].anthropic
    upstream.usage = {"speed": "fast", "inference_geo": "us"}
    before, _, _ = await key_state(gateway)
    gen_id, bill = await ask_preset(gateway, claude_of(gateway), endpoint)
    sent = upstream.last
    assert (sent.body.get("speed"), sent.body.get("inference_geo")) == ("fast", "us")
    assert "fast-mode-2026-02-01" in sent.headers.get("anthropic-beta", "")
    prompt, completion = COUNTS[endpoint]
    cost = prompt * FAST_US[0] + completion * FAST_US[1]
    assert nano(bill["request_cost"]) == cost
    # 100 output tokens at fast+us (the recorded answer's 705 prompt tokens are no estimate of "Hello")
    assert nano(bill["reserved"]) >= 100 * FAST_US[1]
    record = await assert_charged(gateway, before, cost, gen_id, endpoint)
    assert record["service_tier"] == "fast+us"
    upstream.usage = None


@pytest.mark.parametrize("endpoint", ["messages", "chat"])
async def test_a_balance_short_of_a_presets_tier_is_refused_before_anything_is_sent(
        make_api_gateway: Any, claude_of: Any, endpoint: str) -> None:
    """100 output tokens at the standard price (1,500,000 nano-dollars and the prompt) are covered, at fast+us
    (9,900,000) not: the preset's tier is what the hold must cover."""
    gateway: Gateway = await make_api_gateway({"claude/sonnet": SONNET}, presets=PRESET)
    upstream = gateway.extra["upstreams"].anthropic
    await set_balance(gateway, 3_000_000)
    sent = len(upstream.requests)
    with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as caught:
        await ask_preset(gateway, claude_of(gateway), endpoint)
    assert caught.value.status_code == 402
    assert len(upstream.requests) == sent
