"""Reasoning through the running gateway with the official openai SDK: `reasoning_effort` and OpenRouter's
`reasoning` object turn thinking on for Claude and Gemini (fake upstreams that answer with the recorded
thinking blocks and thought parts, and refuse what Anthropic refuses), reasoning comes back as
`reasoning_content`, a Claude thinking + tool loop runs the SDK's usual way, and thinking is billed as output.
An OpenAI-compatible upstream's reasoning keeps its name (`reasoning_content` or `reasoning`); `exclude` hides it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
import yaml
from apis_config import ANTHROPIC_KEY, GEMINI_KEY, Upstreams
from fakes.anthropic_upstream import WIRE as ANTHROPIC_WIRE
from fakes.anthropic_upstream import recorded_thinking
from fakes.gemini_upstream import THINKING, recorded_chunks, recorded_json
from fakes.openai_upstream import REASONING
from harness import Gateway, start_gateway, validate
from test_apis_e2e import assert_charged
from test_billing_e2e import key_state, nano, settled

from gateway.config_load import parse

MESSAGES: list[Any] = [{"role": "user", "content": "What is the GCD of 1071 and 462?"}]
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
CLAUDE_PRICE = (3_000, 15_000)  # nano-dollars per token: 3 / 15 USD per Mtok
GEMINI_PRICE = (1_250, 10_000)  # 1.25 / 10 USD per Mtok


@pytest.fixture
async def gw(aiohttp_server: Any, all_upstreams: Upstreams) -> AsyncIterator[Gateway]:
    doc = {
        "providers": {
            "claude": {"kind": "anthropic", "base_url": all_upstreams.urls["anthropic"], "api_key": ANTHROPIC_KEY},
            "google": {"kind": "gemini", "base_url": all_upstreams.urls["gemini"], "api_key": GEMINI_KEY},
            "oai": {"kind": "openai", "base_url": all_upstreams.urls["openai"], "api_key": "sk-openai-test-000000000"},
        },
        "models": {
            "claude/sonnet": {"upstream": "claude-sonnet-4-0", "max_output_tokens": 16000,
                              "price": {"input_per_mtok": 3, "output_per_mtok": 15}},
            "google/pro": {"upstream": "gemini-2.5-pro", "max_output_tokens": 65536,
                           "price": {"input_per_mtok": 1.25, "output_per_mtok": 10}},
            "google/flash-2.0": {"upstream": "gemini-2.0-flash", "params": {"drop": ["reasoning", "reasoning_effort"]},
                                 "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}},
            "oai/gpt-4o": {"upstream": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10}},
        },
    }
    gateway = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), all_upstreams.openai)
    yield gateway
    await gateway.close()


def anthropic_usage(name: str) -> tuple[int, int]:
    usage = json.loads((ANTHROPIC_WIRE / name).read_text())["usage"]
    return usage["input_tokens"], usage["output_tokens"]


def cost(tokens: tuple[int, int], price: tuple[int, int]) -> int:
    return tokens[0] * price[0] + tokens[1] * price[1]


# -- Claude ------------------------------------------------------------------------------------------------


async def test_claude_thinks_when_asked_and_bills_it(gw: Gateway, all_upstreams: Upstreams) -> None:
    before, _, _ = await key_state(gw)
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="claude/sonnet", messages=MESSAGES, max_tokens=1000, reasoning_effort="low", temperature=0.3)
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    sent = all_upstreams.anthropic.last.body
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024} and sent["max_tokens"] == 2024
    assert "temperature" not in sent  # thinking takes none but 1
    assert body["choices"][0]["message"]["reasoning_content"] == recorded_thinking()["thinking"]
    expected = cost(anthropic_usage("sdk-messages-end-turn.response.json"), CLAUDE_PRICE)  # thinking is in output
    assert nano(body["billing"]["request_cost"]) == expected
    assert nano(body["billing"]["reserved"]) >= 2024 * CLAUDE_PRICE[1]  # the hold covers the raised max_tokens
    await assert_charged(gw, before, expected, body["id"], "chat")


async def test_a_keys_output_cap_bounds_the_raise(gw: Gateway, all_upstreams: Upstreams) -> None:
    """Thinking raises max_tokens, but never above the key's per-request cap; a cap that leaves no room for
    Anthropic's minimum budget is a 400 that costs nothing."""
    capped, _ = await gw.add_key("capped", max_tokens=1500)
    client = gw.openai(api_key=capped)
    await client.chat.completions.create(model="claude/sonnet", messages=MESSAGES, reasoning_effort="low",
                                         max_tokens=1000)
    sent = all_upstreams.anthropic.last.body
    assert (sent["max_tokens"], sent["thinking"]["budget_tokens"]) == (1500, 1024)
    tiny, tiny_id = await gw.add_key("tiny", max_tokens=1000)
    before = await key_state(gw, tiny_id)
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai(api_key=tiny).chat.completions.create(model="claude/sonnet", messages=MESSAGES,
                                                              reasoning_effort="low")
    assert info.value.code == "untranslatable" and info.value.param == "reasoning"
    assert len(all_upstreams.anthropic.requests) == 1
    await settled(gw)
    assert await key_state(gw, tiny_id) == before  # the hold came back whole


async def test_claude_stream_reasoning_content(gw: Gateway, all_upstreams: Upstreams) -> None:
    stream = await gw.openai().chat.completions.create(
        model="claude/sonnet", messages=MESSAGES, stream=True, extra_body={"reasoning": {"max_tokens": 2000}})
    reasoning, text = "", ""
    async for chunk in stream:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        for choice in chunk.choices:
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            text += choice.delta.content or ""
    assert reasoning == recorded_thinking()["thinking"] and text
    assert all_upstreams.anthropic.last.body["thinking"] == {"type": "enabled", "budget_tokens": 2000}
    assert all_upstreams.anthropic.last.body["max_tokens"] == 16000  # the model's maximum, above the budget


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_claude_thinking_tool_loop_with_the_sdk(gw: Gateway, all_upstreams: Upstreams, stream: bool) -> None:
    """The openai SDK user's loop: append the assistant message as returned, then the tool message, ask
    again. Claude gets its thinking block back first in the turn, signature and all (the fake answers 400
    otherwise, as Claude does)."""
    fake = all_upstreams.anthropic
    fake.tool_response = fake.tool_stream = fake.redacted = True
    client = gw.openai()
    messages: list[Any] = list(MESSAGES)
    if stream:
        async with client.chat.completions.stream(model="claude/sonnet", messages=messages, tools=TOOLS,
                                                  reasoning_effort="medium") as events:
            async for _ in events:
                pass
            message = (await events.get_final_completion()).choices[0].message
    else:
        answer = await client.chat.completions.create(model="claude/sonnet", messages=messages, tools=TOOLS,
                                                      reasoning_effort="medium")
        message = answer.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == recorded_thinking()["thinking"]
    [call] = message.tool_calls or []
    messages += [message, {"role": "tool", "tool_call_id": call.id, "content": "20C, sunny"}]
    fake.tool_response = fake.tool_stream = False
    final = await client.chat.completions.create(model="claude/sonnet", messages=messages, tools=TOOLS,
                                                 reasoning_effort="medium")
    assert final.choices[0].message.content and final.choices[0].finish_reason == "stop"
    sent = fake.last.body
    assert "thinking" in sent
    turn = sent["messages"][1]["content"]
    assert turn[0] == recorded_thinking() and turn[1]["type"] == "redacted_thinking"
    assert turn[-1]["type"] == "tool_use" and turn[-1]["id"] == call.id
    await client.chat.completions.create(model="oai/gpt-4o", messages=messages, tools=TOOLS)
    sent_call = all_upstreams.openai.last.body["messages"][1]["tool_calls"][0]  # OpenAI refuses unknown fields
    assert "extra_content" not in sent_call and sent_call["id"] == call.id
    assert "reasoning_content" not in all_upstreams.openai.last.body["messages"][1]


async def test_thinking_on_tool_calls_validates(gw: Gateway, all_upstreams: Upstreams) -> None:
    """`extra_content` on a tool call keeps the answer and its chunks within OpenAI's schemas."""
    fake = all_upstreams.anthropic
    fake.tool_response = fake.tool_stream = True
    client = gw.openai()
    raw = await client.chat.completions.with_raw_response.create(model="claude/sonnet", messages=MESSAGES,
                                                                  tools=TOOLS, reasoning_effort="low")
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["tool_calls"][0]["extra_content"]["anthropic"]["thinking_blocks"]
    stream = await client.chat.completions.create(model="claude/sonnet", messages=MESSAGES, tools=TOOLS,
                                                  reasoning_effort="low", stream=True)
    carried = 0
    async for chunk in stream:
        dumped = chunk.model_dump(exclude_unset=True)
        validate(dumped, "CreateChatCompletionStreamResponse")
        carried += "extra_content" in json.dumps(dumped)
    assert carried == 1


async def test_claude_history_without_signature_goes_without_thinking(gw: Gateway, all_upstreams: Upstreams) -> None:
    """A tool turn another model made (or one the client kept only id/type/function of) has no thinking block:
    the request goes without thinking, which Anthropic accepts, rather than failing."""
    messages: list[Any] = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"location": "SF"}'}}]},
                           {"role": "tool", "tool_call_id": "call_1", "content": "20C"}]
    answer = await gw.openai().chat.completions.create(model="claude/sonnet", messages=messages, tools=TOOLS,
                                                       reasoning_effort="high")
    assert answer.choices[0].message.content
    assert "thinking" not in all_upstreams.anthropic.last.body
    assert "reasoning_content" not in (answer.choices[0].message.model_extra or {})


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_exclude_hides_reasoning_but_bills_it(gw: Gateway, all_upstreams: Upstreams, stream: bool) -> None:
    before, _, _ = await key_state(gw)
    client = gw.openai()
    extra = {"reasoning": {"effort": "low", "exclude": True}}
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model="claude/sonnet", messages=MESSAGES, stream=True, stream_options={"include_usage": True},
            extra_body=extra)]
        assert not any("reasoning_content" in (choice.delta.model_extra or {}) for c in chunks for choice in c.choices)
        assert "".join(choice.delta.content or "" for c in chunks for choice in c.choices)
        [usage_chunk] = [c for c in chunks if c.usage]
        gen_id, charged = usage_chunk.id, nano((usage_chunk.model_extra or {})["billing"]["request_cost"])
    else:
        answer = await client.chat.completions.create(model="claude/sonnet", messages=MESSAGES, extra_body=extra)
        assert answer.choices[0].message.content
        assert "reasoning_content" not in (answer.choices[0].message.model_extra or {})
        gen_id, charged = answer.id, nano((answer.model_extra or {})["billing"]["request_cost"])
    assert "thinking" in all_upstreams.anthropic.last.body  # it still thinks, and the thinking is billed
    assert charged > 0
    await assert_charged(gw, before, charged, gen_id, "chat")


# -- Gemini ----------------------------------------------------------------------------------------------


async def test_gemini_thought_summaries_come_back_and_are_billed(gw: Gateway, all_upstreams: Upstreams) -> None:
    before, _, _ = await key_state(gw)
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="google/pro", messages=MESSAGES, max_tokens=4000, reasoning_effort="high")
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    config = all_upstreams.gemini.last.body["generationConfig"]
    assert config["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 3200}
    recorded = recorded_json(THINKING.format("unary", "json"))
    parts, meta = recorded["candidates"][0]["content"]["parts"], recorded["usageMetadata"]
    assert body["choices"][0]["message"]["reasoning_content"] == "".join(p["text"] for p in parts if p.get("thought"))
    output = meta["candidatesTokenCount"] + meta["thoughtsTokenCount"]
    assert body["usage"]["completion_tokens"] == output
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == meta["thoughtsTokenCount"]
    expected = cost((meta["promptTokenCount"], output), GEMINI_PRICE)
    assert nano(body["billing"]["request_cost"]) == expected
    await assert_charged(gw, before, expected, body["id"], "chat")


async def test_gemini_stream_thoughts_and_their_usage(gw: Gateway, all_upstreams: Upstreams) -> None:
    stream = await gw.openai().chat.completions.create(model="google/pro", messages=MESSAGES, stream=True,
                                                       stream_options={"include_usage": True},
                                                       extra_body={"reasoning": {"enabled": True}})
    chunks = [c async for c in stream]
    reasoning = "".join((ch.delta.model_extra or {}).get("reasoning_content") or "" for c in chunks for ch in c.choices)
    recorded = recorded_chunks(THINKING.format("streaming", "txt"))
    assert reasoning == "".join(p["text"] for c in recorded for p in c["candidates"][0]["content"]["parts"]
                                if p.get("thought"))
    meta = recorded[-1]["usageMetadata"]
    [usage_chunk] = [c for c in chunks if c.usage]
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == meta["candidatesTokenCount"] + meta["thoughtsTokenCount"]
    assert nano((usage_chunk.model_extra or {})["billing"]["request_cost"]) == cost(
        (meta["promptTokenCount"], usage_chunk.usage.completion_tokens), GEMINI_PRICE)


async def test_gemini_none_and_exclude(gw: Gateway, all_upstreams: Upstreams) -> None:
    client = gw.openai()
    answer = await client.chat.completions.create(model="google/pro", messages=MESSAGES, reasoning_effort="none")
    assert all_upstreams.gemini.last.body["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": False, "thinkingBudget": 0}
    assert "reasoning_content" not in (answer.choices[0].message.model_extra or {})
    await client.chat.completions.create(model="google/pro", messages=MESSAGES,
                                         extra_body={"reasoning": {"effort": "low", "exclude": True}})
    assert all_upstreams.gemini.last.body["generationConfig"]["thinkingConfig"] == {
        "includeThoughts": False, "thinkingBudget": 1024}


async def test_a_model_that_drops_reasoning(gw: Gateway, all_upstreams: Upstreams) -> None:
    await gw.openai().chat.completions.create(model="google/flash-2.0", messages=MESSAGES, reasoning_effort="high")
    assert "thinkingConfig" not in all_upstreams.gemini.last.body.get("generationConfig", {})


# -- OpenAI-compatible upstreams: DeepSeek's `reasoning_content`, or `reasoning` (OpenRouter, Ollama, vLLM) --------

REASONING_NAMES = ("reasoning_content", "reasoning")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("field", REASONING_NAMES)
async def test_openai_kind_reasoning_keeps_its_name_and_exclude_hides_it(gw: Gateway, all_upstreams: Upstreams,
                                                                         field: str, stream: bool) -> None:
    """An OpenAI-kind upstream's reasoning reaches the client under the name the upstream gave it, and
    `reasoning.exclude` hides it under either name (it is still billed: the upstream's usage counts it)."""
    all_upstreams.openai.reasoning_field = field
    client = gw.openai()

    async def reasoning_seen(extra: dict[str, Any]) -> dict[str, str]:
        """The reasoning fields of the answer's message (streamed: of its deltas, joined), by name."""
        seen: dict[str, str] = {}
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(model="oai/gpt-4o", messages=MESSAGES,
                                                                          extra_body=extra)
            body = json.loads(raw.content)
            validate(body, "CreateChatCompletionResponse")
            message = body["choices"][0]["message"]
            assert message["content"]
            return {name: message[name] for name in REASONING_NAMES if name in message}
        text = ""
        async for chunk in await client.chat.completions.create(model="oai/gpt-4o", messages=MESSAGES, stream=True,
                                                                extra_body=extra):
            validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
            for choice in chunk.choices:
                text += choice.delta.content or ""
                for name, value in (choice.delta.model_extra or {}).items():
                    if name in REASONING_NAMES:
                        seen[name] = seen.get(name, "") + value
        assert text
        return seen

    assert await reasoning_seen({}) == {field: REASONING}
    assert await reasoning_seen({"reasoning": {"exclude": True}}) == {}
    assert all_upstreams.openai.last.body["reasoning"] == {"exclude": True}  # the upstream was asked as sent


# -- the surface ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "param"), [
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"reasoning": {"effort": "high", "max_tokens": -5}}, "reasoning.max_tokens"),
    ({"reasoning_effort": "low", "reasoning": {"effort": "high"}}, "reasoning_effort"),
], ids=str)
async def test_bad_reasoning_is_a_400_that_costs_nothing(gw: Gateway, all_upstreams: Upstreams,
                                                         extra: dict[str, Any], param: str) -> None:
    before = await key_state(gw)
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES, extra_body=extra)
    assert info.value.code == "invalid_value" and info.value.param == param
    assert await key_state(gw) == before and not all_upstreams.anthropic.requests


async def test_models_list_reasoning_where_it_is_carried(gw: Gateway) -> None:
    models = {m.id: m.model_extra or {} for m in (await gw.openai().models.list()).data}
    for model in ("claude/sonnet", "google/pro"):
        assert {"reasoning", "reasoning_effort"} <= set(models[model]["supported_parameters"])
    assert not {"reasoning", "reasoning_effort"} & set(models["google/flash-2.0"]["supported_parameters"])
    assert "reasoning_effort" in models["oai/gpt-4o"]["supported_parameters"]
