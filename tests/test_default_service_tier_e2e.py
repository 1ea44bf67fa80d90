"""A processing tier the provider account applies unasked (`providers.*.default_service_tier`): an Anthropic
organisation on Priority Tier runs requests with the default `service_tier: "auto"` at priority when it has the
capacity, an OpenAI project whose default tier is priority serves `auto` (or no `service_tier`) at priority, and
each bills it. The charge follows the tier the answer names; the hold must cover that tier too, else a key with a
short balance is served past it and the operator pays the shortfall."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai
import pytest
from harness import Gateway
from test_apis_e2e import assert_charged
from test_billing_e2e import key_state, nano, settled

from gateway.catalog import Catalog
from gateway.config import ConfigError
from gateway.config_load import parse
from gateway.state import RUNTIME

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
MODELS: dict[str, dict[str, Any]] = {
    "oai/gpt-4o": {"price": {"input_per_mtok": 2.5, "output_per_mtok": 10, "service_tiers": {
        "priority": {"input_per_mtok": 5, "output_per_mtok": 20},
        "flex": {"input_per_mtok": 1.25, "output_per_mtok": 5}}}},
    "claude/sonnet": {"price": {"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3,
                                "cache_write_per_mtok": 3.75, "service_tiers": {
        "priority": {"input_per_mtok": 6, "output_per_mtok": 30, "cached_input_per_mtok": 0.6,
                     "cache_write_per_mtok": 7.5},
        "us": {"input_per_mtok": 3.3, "output_per_mtok": 16.5, "cached_input_per_mtok": 0.33,
               "cache_write_per_mtok": 4.125}}}},
}
ACCOUNTS = {"oai": {"default_service_tier": "priority"}, "claude": {"default_service_tier": "priority"}}
# the recorded answers' counts (prompt, completion) by route, and each model's nano-dollars per token
COUNTS = {"chat": (19, 10), "chat-stream": (14, 30), "messages": (705, 25), "messages-stream": (11, 6)}
PER_TOKEN = {("oai", "standard"): (2_500, 10_000), ("oai", "priority"): (5_000, 20_000),
             ("claude", "standard"): (3_000, 15_000), ("claude", "priority"): (6_000, 30_000)}
ROUTES = list(COUNTS)
# 100 output tokens at most: a balance above the standard worst case and below the priority one
SHORT_BALANCE = {"chat": 1_500_000, "chat-stream": 1_500_000, "messages": 2_250_000, "messages-stream": 2_250_000}


def cost(route: str, tier: str) -> int:
    prompt, completion = COUNTS[route]
    per_input, per_output = PER_TOKEN[("claude" if route.startswith("messages") else "oai", tier)]
    return prompt * per_input + completion * per_output


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def store_url(request: pytest.FixtureRequest) -> str:
    return "" if request.param == "memory" else str(request.getfixturevalue("redis_url"))


@pytest.fixture
async def account(make_api_gateway: Any, store_url: str) -> Gateway:
    gateway: Gateway = await make_api_gateway(MODELS, store_url, providers=ACCOUNTS)
    reset(gateway)
    return gateway


def reset(gateway: Gateway) -> None:
    gateway.extra["upstreams"].openai.reset()
    gateway.extra["upstreams"].anthropic.usage = None


def serve(gateway: Gateway, route: str, tier: str | None) -> None:
    """Make the route's fake upstream name `tier` in its answer ("standard": the name its provider gives the
    standard tier; None: as recorded)."""
    if route.startswith("chat"):
        gateway.extra["upstreams"].openai.served_tier = {"standard": "default"}.get(tier or "", tier)
    else:
        gateway.extra["upstreams"].anthropic.usage = None if tier is None else {"service_tier": tier}


def sent(gateway: Gateway, route: str) -> int:
    fake = gateway.extra["upstreams"].openai if route.startswith("chat") else gateway.extra["upstreams"].anthropic
    return len(fake.requests)


async def ask(gateway: Gateway, claude: anthropic.AsyncAnthropic, route: str,
              extra: dict[str, Any] | None = None) -> str:
    """One request of `route` with the official SDK (100 output tokens at most); its generation id."""
    body = extra or {}
    if route == "chat":
        answer = await gateway.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                                max_tokens=100, extra_body=body)
        return answer.id
    if route == "chat-stream":
        stream = await gateway.openai().chat.completions.create(
            model="oai/gpt-4o", messages=MESSAGES, max_tokens=100, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True}, extra_body=body)
        ids = [chunk.id async for chunk in stream]  # read to its end: the charge is settled there
        return ids[0]
    if route == "messages":
        message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                               extra_body=body)
        return message.id
    async with claude.messages.stream(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                      extra_body=body) as stream:
        return (await stream.get_final_message()).id


async def set_balance(gateway: Gateway, balance: int) -> None:
    await settled(gateway)
    now, _, _ = await key_state(gateway)
    await gateway.app[RUNTIME].store.topup(gateway.key_id, balance - now)


@pytest.mark.parametrize("route", ROUTES)
async def test_a_balance_short_of_the_default_tier_is_refused_before_anything_is_sent(
        make_api_gateway: Any, store_url: str, claude_of: Any, route: str) -> None:
    """The account may serve a request naming no tier at priority, so its hold is at priority: a balance that
    covers the standard worst case only was served, charged priority, and the difference recorded as shortfall."""
    plain: Gateway = await make_api_gateway(MODELS, store_url)  # the same account, not known to serve priority
    reset(plain)
    await set_balance(plain, SHORT_BALANCE[route])
    await ask(plain, claude_of(plain), route)  # the balance covers the standard worst case

    gateway: Gateway = await make_api_gateway(MODELS, store_url, providers=ACCOUNTS)
    reset(gateway)
    await set_balance(gateway, SHORT_BALANCE[route])
    before, count = (await key_state(gateway))[0], sent(gateway, route)
    for extra in ({}, {"service_tier": "auto"}):  # no tier named, or the one deferring to the account
        with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as caught:
            await ask(gateway, claude_of(gateway), route, extra)
        assert caught.value.status_code == 402
    assert sent(gateway, route) == count
    await settled(gateway)
    assert (await key_state(gateway))[0] == before


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("tier", ["priority", "standard"])
async def test_the_charge_is_at_the_tier_the_answer_names(account: Gateway, claude_of: Any, route: str,
                                                          tier: str) -> None:
    serve(account, route, tier)
    before, _, _ = await key_state(account)
    gen_id = await ask(account, claude_of(account), route)
    record = await assert_charged(account, before, cost(route, tier), gen_id,
                                  "chat" if route.startswith("chat") else "messages")
    assert record.get("service_tier", "") == ("priority" if tier == "priority" else "")


@pytest.mark.parametrize("route", ["chat-stream", "messages-stream"])  # the recorded streams name no tier
async def test_an_answer_naming_no_tier_is_charged_the_default_tier(account: Gateway, claude_of: Any,
                                                                     route: str) -> None:
    """No answer confirmed the standard price, and the account may have served priority: no unconfirmed discount."""
    serve(account, route, None)
    before, _, _ = await key_state(account)
    gen_id = await ask(account, claude_of(account), route)
    record = await assert_charged(account, before, cost(route, "priority"), gen_id,
                                  "chat" if route == "chat-stream" else "messages")
    assert record["service_tier"] == "priority"


async def test_a_tier_the_request_names_replaces_the_default_one(account: Gateway, claude_of: Any) -> None:
    """`service_tier: flex` is what OpenAI serves (or the standard tier), never the project's default: a balance
    short of priority but not of the standard worst case is served, at the flex price."""
    await set_balance(account, SHORT_BALANCE["chat"])
    before, _, _ = await key_state(account)
    serve(account, "chat", "flex")
    gen_id = await ask(account, claude_of(account), "chat", {"service_tier": "flex"})
    await assert_charged(account, before, 19 * 1_250 + 10 * 5_000, gen_id, "chat")


async def test_a_tier_field_the_model_drops_leaves_the_tier_to_the_account(make_api_gateway: Any,
                                                                          claude_of: Any) -> None:
    """`params.drop: [service_tier]` sends no tier upstream, whatever the client asked: the account's default
    serves it, so even a `flex` request is held at priority."""
    dropping = {**MODELS, "oai/gpt-4o": {**MODELS["oai/gpt-4o"], "params": {"drop": ["service_tier"]}}}
    gateway: Gateway = await make_api_gateway(dropping, providers=ACCOUNTS)
    reset(gateway)
    await set_balance(gateway, SHORT_BALANCE["chat"])
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(gateway, claude_of(gateway), "chat", {"service_tier": "flex"})
    assert caught.value.status_code == 402 and sent(gateway, "chat") == 0


async def test_the_default_tier_stacks_with_a_premium_the_request_asks_for(account: Gateway, claude_of: Any) -> None:
    """US inference on an organisation on Priority Tier may run at priority+us (Anthropic multiplies the
    premiums): a balance that covers the priority hold does not cover that one."""
    claude = claude_of(account)
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES)
    priority_hold = nano((message.model_extra or {})["billing"]["reserved"])
    assert priority_hold > 100 * 30_000  # 100 output tokens at priority (at the standard price: 1,500,000 + input)
    await set_balance(account, priority_hold)
    count = sent(account, "messages")
    with pytest.raises(anthropic.APIStatusError) as caught:
        await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                     extra_body={"inference_geo": "us"})
    assert caught.value.status_code == 402 and sent(account, "messages") == count
    await set_balance(account, 10**9)
    before, _, _ = await key_state(account)
    gen_id = await ask(account, claude, "messages-stream", {"inference_geo": "us"})  # the answer names no tier
    record = await assert_charged(account, before, 11 * 6_600 + 6 * 33_000, gen_id, "messages")
    assert record["service_tier"] == "priority+us"


async def test_a_model_that_does_not_price_the_default_tier_is_held_and_charged_standard(
        make_api_gateway: Any, claude_of: Any, log_lines: Any) -> None:
    """Providers sell priority per model (not on every one of an account's models): a model with no priority
    price is held at its standard price, and the operator is told once, at load."""
    mini = {"upstream": "gpt-4o-mini", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10}}
    gateway: Gateway = await make_api_gateway({**MODELS, "oai/mini": mini}, providers=ACCOUNTS)
    reset(gateway)
    await set_balance(gateway, SHORT_BALANCE["chat"])
    before, _, _ = await key_state(gateway)
    answer = await gateway.openai().chat.completions.create(model="oai/mini", messages=MESSAGES,  # type: ignore[arg-type]
                                                            max_tokens=100)
    await assert_charged(gateway, before, cost("chat", "standard"), answer.id, "chat")
    told = [line for line in log_lines() if line.get("default_service_tier") == "priority"]
    assert told and "oai/mini" in told[0]["models"] and "oai/gpt-4o" not in told[0]["models"]


def doc(provider: dict[str, Any], tiers: dict[str, Any] | None = None) -> dict[str, Any]:
    priority = {"priority": {"input_per_mtok": 2, "output_per_mtok": 4}}
    priced = {"input_per_mtok": 1, "output_per_mtok": 2, "service_tiers": priority if tiers is None else tiers}
    return {"providers": {"p": provider}, "models": {"p/m": {"price": priced}}}


OPENAI = {"kind": "openai", "base_url": "https://api.openai.com/v1"}


@pytest.mark.parametrize(("config", "problem"), [
    (doc({**OPENAI, "default_service_tier": "auto"}), "the standard tier"),
    (doc({**OPENAI, "default_service_tier": "priorty"}), "no model of provider 'p' prices 'priorty'"),
    (doc({**OPENAI, "default_service_tier": "priority"}, {}), "no model of provider 'p' prices 'priority'"),
    (doc({"kind": "gemini", "base_url": "https://generativelanguage.googleapis.com",
          "default_service_tier": "priority"}), "kind gemini"),
], ids=["standard-name", "typo", "unpriced-everywhere", "gemini"])
def test_a_default_tier_that_could_never_be_priced_is_refused(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=r"providers\.p\.default_service_tier: .*" + problem):
        parse(json.dumps(config), {})


def test_only_routes_of_an_account_with_a_default_tier_work_one_out() -> None:
    """The default tier is looked up once per route at load; routes of other providers carry none, so their
    requests do no more work than before."""
    config = parse(json.dumps(doc({**OPENAI, "default_service_tier": "priority"})), {})
    route = Catalog(config).routes["p/m"]
    assert route.unasked is not None and route.unasked[0] == "priority"
    assert route.unasked[1] is route.price.tier("priority")
    assert Catalog(parse(json.dumps(doc(OPENAI)), {})).routes["p/m"].unasked is None
