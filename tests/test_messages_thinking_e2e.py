"""Claude Code's `thinking` on /v1/messages to models of other kinds, with the official anthropic SDK, through the
running gateway to fake upstreams that refuse what the real ones refuse (a Gemini thinking budget outside the
model's range, budget 0 on 2.5 Pro, a `reasoning_effort` an OpenAI or xAI model does not take).

A model whose config states its reasoning limits gets a value it takes (a budget clamped into Gemini 2.5 Flash's
range, an effort snapped to gpt-5's or grok-3-mini's values, thinking turned off only where it can be), its
thinking comes back as thinking blocks (streamed too), and is billed as output; the hold covers the thinking
exactly as the same ask on /v1/chat/completions does. A model without limits gets what it got before: no thinking.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
import yaml
from apis_config import GEMINI_KEY, OPENAI_KEY, Upstreams
from fakes.gemini_upstream import THINKING, recorded_chunks, recorded_json
from fakes.openai_upstream import REASONING
from harness import Gateway, start_gateway
from test_apis_e2e import assert_charged
from test_billing_e2e import key_state, nano, settled

from gateway import billing
from gateway.config_load import parse

MESSAGES: list[Any] = [{"role": "user", "content": "What is the GCD of 1071 and 462?"}]
CLAUDE_CODE: Any = {"type": "enabled", "budget_tokens": 31999}  # with max_tokens 32000: Claude Code's default
FLASH_PRICE = (300, 2_500)  # nano-dollars per token: 0.3 / 2.5 USD per Mtok
GEMINI_RANGES = {"gemini-2.5-flash": (range(0, 24577),), "gemini-2.5-pro": (range(128, 32769),)}
EFFORTS_TAKEN = {"gpt-5": ("minimal", "low", "medium", "high"), "grok-3-mini": ("low", "high"), "gpt-4o": ()}


@pytest.fixture
async def gw(aiohttp_server: Any, all_upstreams: Upstreams) -> AsyncIterator[Gateway]:
    all_upstreams.gemini.thinking_budgets = dict(GEMINI_RANGES)
    all_upstreams.openai.reasoning_efforts = dict(EFFORTS_TAKEN)
    all_upstreams.openai.reasoning_field = "reasoning_content"  # as grok-3-mini and DeepSeek answer
    pro = {"upstream": "gemini-2.5-pro", "max_output_tokens": 65536, "price": {"input_per_mtok": 1.25,
                                                                             "output_per_mtok": 10}}
    doc = {
        "providers": {
            "google": {"kind": "gemini", "base_url": all_upstreams.urls["gemini"], "api_key": GEMINI_KEY},
            "oai": {"kind": "openai", "base_url": all_upstreams.urls["openai"], "api_key": OPENAI_KEY},
        },
        "models": {
            "google/flash": {"upstream": "gemini-2.5-flash", "max_output_tokens": 65536,
                             "price": {"input_per_mtok": 0.3, "output_per_mtok": 2.5},
                             "reasoning": {"budget": {"min": 0, "max": 24576}}},
            "google/pro": {**pro, "reasoning": {"budget": {"min": 128, "max": 32768}}},
            "google/pro-unknown": pro,  # the same model, its limits not stated
            "oai/gpt-5": {"upstream": "gpt-5", "max_output_tokens": 128000,
                          "params": {"max_tokens_field": "max_completion_tokens"},
                          "price": {"input_per_mtok": 1.25, "output_per_mtok": 10},
                          "reasoning": {"efforts": ["minimal", "low", "medium", "high"]}},
            "oai/grok-3-mini": {"upstream": "grok-3-mini", "price": {"input_per_mtok": 0.3, "output_per_mtok": 0.5},
                                "reasoning": {"efforts": ["low", "high"]}},
            "oai/gpt-4o": {"upstream": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10}},
        },
        "presets": {"thrifty": {"model": "google/flash", "params": {"reasoning_effort": "low"}}},
    }
    gateway = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), all_upstreams.openai)
    yield gateway
    await gateway.close()


@pytest.fixture
async def claude(gw: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK with a timeout of its own: it refuses a non-streamed request with Claude Code's max_tokens else."""
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0, timeout=60)
    yield client
    await client.close()


def _thought_text(parts: list[Any]) -> str:
    return "".join(part["text"] for part in parts if part.get("thought"))


# -- Gemini: a token range ----------------------------------------------------------------------------------------


async def test_claude_codes_budget_is_clamped_to_flashs_range(gw: Gateway, all_upstreams: Upstreams,
                                                              claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(gw)
    message = await claude.messages.create(model="google/flash", max_tokens=32000, thinking=CLAUDE_CODE,
                                           messages=MESSAGES)
    sent = all_upstreams.gemini.last.body["generationConfig"]
    assert sent["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 24576}  # Flash's most
    assert sent["maxOutputTokens"] == 32000
    recorded = recorded_json(THINKING.format("unary", "json"))
    meta = recorded["usageMetadata"]
    thinking, text = message.content
    parts = recorded["candidates"][0]["content"]["parts"]
    assert thinking.type == "thinking" and thinking.thinking == _thought_text(parts)
    assert text.type == "text" and text.text
    output = meta["candidatesTokenCount"] + meta["thoughtsTokenCount"]  # thinking is output
    assert (message.usage.input_tokens, message.usage.output_tokens) == (meta["promptTokenCount"], output)
    cost = meta["promptTokenCount"] * FLASH_PRICE[0] + output * FLASH_PRICE[1]
    assert nano((message.model_extra or {})["billing"]["request_cost"]) == cost
    await assert_charged(gw, before, cost, message.id, "messages")


async def test_the_clamped_budget_streams_its_thinking_blocks(gw: Gateway, all_upstreams: Upstreams,
                                                              claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(gw)
    thinking, bill = "", None
    async with claude.messages.stream(model="google/flash", max_tokens=32000, thinking=CLAUDE_CODE,
                                      messages=MESSAGES) as stream:
        async for event in stream:
            if event.type == "thinking":
                thinking += event.thinking
            elif event.type == "message_delta":
                bill = (event.model_extra or {})["billing"]
        final = await stream.get_final_message()
    assert all_upstreams.gemini.last.body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 24576
    chunks = recorded_chunks(THINKING.format("streaming", "txt"))
    assert thinking == _thought_text([p for c in chunks for p in c["candidates"][0]["content"]["parts"]])
    assert [block.type for block in final.content] == ["thinking", "text"]
    meta = chunks[-1]["usageMetadata"]
    output = meta["candidatesTokenCount"] + meta["thoughtsTokenCount"]
    assert final.usage.output_tokens == output and bill is not None
    cost = meta["promptTokenCount"] * FLASH_PRICE[0] + output * FLASH_PRICE[1]
    assert nano(bill["request_cost"]) == cost
    await assert_charged(gw, before, cost, final.id, "messages")


async def test_the_chat_route_sends_the_clients_own_ask(gw: Gateway, all_upstreams: Upstreams) -> None:
    """The block is for /v1/messages' translation: a chat client's own `reasoning` goes as it was sent (here
    past Flash's range, which the upstream refuses, as Gemini does)."""
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES, max_tokens=32000,
                                                  extra_body={"reasoning": {"max_tokens": 31999}})
    assert "thinking budget (31999) is invalid" in info.value.message
    assert all_upstreams.gemini.last.body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 31999


@pytest.mark.parametrize(("model", "thinking_config"), [
    ("google/flash", {"includeThoughts": False, "thinkingBudget": 0}),  # Flash can stop thinking
    ("google/pro", None),  # Pro cannot (budget 0 is a 400): its default
    ("google/pro-unknown", None),  # no limits stated: thinking left out, as before
], ids=["flash", "pro", "unknown"])
async def test_disabled_turns_thinking_off_only_where_the_model_can(
        gw: Gateway, all_upstreams: Upstreams, claude: anthropic.AsyncAnthropic, model: str,
        thinking_config: dict[str, Any] | None) -> None:
    message = await claude.messages.create(model=model, max_tokens=1000, thinking={"type": "disabled"},
                                           messages=MESSAGES)
    assert all_upstreams.gemini.last.body["generationConfig"].get("thinkingConfig") == thinking_config
    assert message.content and message.content[-1].type == "text"


async def test_a_model_without_limits_leaves_thinking_out(gw: Gateway, all_upstreams: Upstreams,
                                                          claude: anthropic.AsyncAnthropic) -> None:
    """What worked before still works: thinking is dropped where the model's limits are unknown (gpt-4o refuses
    `reasoning_effort`; Claude Code's budget is past 2.5 Pro's range)."""
    await claude.messages.create(model="google/pro-unknown", max_tokens=40000, thinking={
        "type": "enabled", "budget_tokens": 39999}, messages=MESSAGES)
    assert "thinkingConfig" not in all_upstreams.gemini.last.body["generationConfig"]
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=32000, thinking=CLAUDE_CODE,
                                           output_config={"effort": "high"}, messages=MESSAGES)
    assert not {"reasoning_effort", "reasoning"} & set(all_upstreams.openai.last.body)
    assert message.content[-1].type == "text"


REFUSED_EFFORT = "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"  # Claude's words


@pytest.mark.parametrize("model", ["oai/gpt-5", "google/flash", "oai/gpt-4o"])
async def test_an_effort_anthropic_does_not_have_is_its_400(gw: Gateway, all_upstreams: Upstreams,
                                                            claude: anthropic.AsyncAnthropic, model: str) -> None:
    """`output_config.effort` Anthropic does not have ("extreme", a list, an object) was left to the model's
    default without a word; Claude answers it with a 400 naming its efforts, and so does the translated route,
    on a model with reasoning limits or without, before anything is held or sent (not a 500 either, from looking
    an unhashable value up in the set of Anthropic's efforts)."""
    sent = len(all_upstreams.openai.requests) + len(all_upstreams.gemini.requests)
    for effort in ("extreme", ["high"], {"level": "high"}):
        with pytest.raises(anthropic.BadRequestError) as info:
            await claude.messages.create(model=model, max_tokens=1000, messages=MESSAGES,
                                         extra_body={"output_config": {"effort": effort}})
        error = info.value.body["error"]  # type: ignore[index]
        assert (error["type"], error["param"]) == ("invalid_request_error", "output_config.effort"), error
        assert error["message"].endswith(": " + REFUSED_EFFORT), error
    assert len(all_upstreams.openai.requests) + len(all_upstreams.gemini.requests) == sent


async def test_a_presets_effort_is_set_over_claude_codes_budget(gw: Gateway, all_upstreams: Upstreams,
                                                               claude: anthropic.AsyncAnthropic) -> None:
    """A preset's params are set over the client's values: the operator's `reasoning_effort: low` is what Gemini
    gets (its budget for low), not Claude Code's 31,999-token budget clamped to Flash's range."""
    await claude.messages.create(model="@preset/thrifty", max_tokens=32000, thinking=CLAUDE_CODE, messages=MESSAGES)
    assert all_upstreams.gemini.last.body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 1024


# -- OpenAI kind: reasoning_effort values -------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "fields", "effort"), [
    ("oai/gpt-5", {"max_tokens": 32000, "thinking": CLAUDE_CODE}, "high"),  # ~all of max_tokens: the most it takes
    ("oai/gpt-5", {"max_tokens": 1000, "output_config": {"effort": "max"}}, "high"),
    ("oai/gpt-5", {"max_tokens": 1000, "thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}, "low"),
    ("oai/gpt-5", {"max_tokens": 1000, "thinking": {"type": "disabled"}}, "minimal"),  # gpt-5's nearest to off
    ("oai/grok-3-mini", {"max_tokens": 1000, "output_config": {"effort": "medium"}}, "high"),  # low or high: up
    ("oai/grok-3-mini", {"max_tokens": 20000, "thinking": {"type": "enabled", "budget_tokens": 2000}}, "low"),
], ids=["claude-code", "max", "adaptive-low", "disabled", "grok-medium", "grok-small-budget"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_an_effort_the_model_takes(gw: Gateway, all_upstreams: Upstreams, claude: anthropic.AsyncAnthropic,
                                         model: str, fields: dict[str, Any], effort: str, stream: bool) -> None:
    if stream:
        async with claude.messages.stream(model=model, messages=MESSAGES, **fields) as events:
            message = await events.get_final_message()
    else:
        message = await claude.messages.create(model=model, messages=MESSAGES, **fields)
    assert all_upstreams.openai.last.body["reasoning_effort"] == effort  # else the fake answers 400, as OpenAI
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == REASONING and text.type == "text"


# -- money ----------------------------------------------------------------------------------------------------------


async def test_the_hold_covers_the_thinking_as_the_chat_route_holds_it(gw: Gateway, all_upstreams: Upstreams,
                                                                       claude: anthropic.AsyncAnthropic) -> None:
    """Thinking is output inside `max_tokens` (Gemini counts thoughts against maxOutputTokens, which the gateway
    sends as the client's max_tokens): the hold covers all of it, as the same ask on the chat route is held. A key
    whose balance would cover the answer without the thinking budget, but not with it, is refused (402) before
    anything is sent."""
    body: dict[str, Any] = {"model": "google/flash", "max_tokens": 32000, "messages": MESSAGES}
    hold = billing.estimate_prompt_tokens(body) * FLASH_PRICE[0] + 32000 * FLASH_PRICE[1]
    message = await claude.messages.create(**body, thinking=CLAUDE_CODE)
    assert nano((message.model_extra or {})["billing"]["reserved"]) == hold
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="google/flash", messages=MESSAGES, max_tokens=32000, extra_body={"reasoning": {"max_tokens": 24576}})
    assert all_upstreams.gemini.last.body["generationConfig"]["thinkingConfig"]["thinkingBudget"] == 24576
    assert nano(json.loads(raw.content)["billing"]["reserved"]) == hold  # the same ask, held alike
    answer_only = billing.estimate_prompt_tokens(body) * FLASH_PRICE[0] + (32000 - 24576) * FLASH_PRICE[1]
    poor, poor_id = await gw.add_key("poor", balance=hold - 1)
    assert answer_only < hold - 1
    sent = len(all_upstreams.gemini.requests)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=poor, max_retries=0, timeout=60)
    try:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(**body, thinking=CLAUDE_CODE)
    finally:
        await client.close()
    assert info.value.status_code == 402 and len(all_upstreams.gemini.requests) == sent
    await settled(gw)
    assert (await key_state(gw, poor_id))[0] == hold - 1


# -- display: "omitted" -------------------------------------------------------------------------------------------


async def _ask(claude: anthropic.AsyncAnthropic, stream: bool, **fields: Any) -> tuple[Any, list[str], Any]:
    """(final message, the SDK's event types, the bill) of one request, streamed or not."""
    if not stream:
        message = await claude.messages.create(**fields)
        return message, [], (message.model_extra or {})["billing"]
    kinds, bill = [], None
    async with claude.messages.stream(**fields) as events:
        async for event in events:
            kinds.append(event.type)
            if event.type == "message_delta":
                bill = (event.model_extra or {})["billing"]
        return await events.get_final_message(), kinds, bill


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_omitted_thinking_is_not_shown_and_billed_the_same(gw: Gateway, all_upstreams: Upstreams,
                                                                 claude: anthropic.AsyncAnthropic,
                                                                 stream: bool) -> None:
    """`thinking.display: "omitted"` (Anthropic's: thinking blocks without their text, billed the same) got the
    model's whole reasoning back as thinking blocks."""
    fields: dict[str, Any] = {"model": "oai/gpt-5", "max_tokens": 32000, "messages": MESSAGES}
    shown, _, shown_bill = await _ask(claude, stream, **fields, thinking=CLAUDE_CODE)
    assert [block.type for block in shown.content] == ["thinking", "text"]
    before, _, _ = await key_state(gw)
    hidden, kinds, bill = await _ask(claude, stream, **fields, thinking={**CLAUDE_CODE, "display": "omitted"})
    assert all_upstreams.openai.last.body["reasoning_effort"] == "high"  # thinks as much as before
    assert [block.type for block in hidden.content] == ["text"] and hidden.content[0].text == shown.content[1].text
    assert "thinking" not in kinds and REASONING not in json.dumps([block.to_dict() for block in hidden.content])
    assert hidden.usage.output_tokens == shown.usage.output_tokens
    assert nano(bill["request_cost"]) == nano(shown_bill["request_cost"]) > 0
    await assert_charged(gw, before, nano(bill["request_cost"]), hidden.id, "messages")


async def test_gemini_is_not_asked_for_the_thoughts_it_would_show(gw: Gateway, all_upstreams: Upstreams,
                                                                  claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(model="google/flash", max_tokens=32000, messages=MESSAGES,
                                           thinking={**CLAUDE_CODE, "display": "omitted"})
    sent = all_upstreams.gemini.last.body["generationConfig"]
    assert sent["thinkingConfig"] == {"includeThoughts": False, "thinkingBudget": 24576}
    assert [block.type for block in message.content] == ["text"]
