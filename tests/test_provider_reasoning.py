"""Reasoning control on Claude and Gemini: `reasoning_effort` and OpenRouter's `reasoning` object read once
(`providers.reasoning`), turned into Anthropic's `thinking` and Gemini's `thinkingConfig`, and Claude's
thinking blocks carried through the chat format's tool calls and back, on recorded wire bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakes.anthropic_upstream import REDACTED_DATA, recorded_thinking, thinking_error, thinking_events
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from providers import anthropic, gemini, reasoning
from providers.framing import SSEDecoder
from providers.types import ChatRequest, Target, Untranslatable

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANTHROPIC_WIRE = SHARED / "wire" / "anthropic"
GEMINI_WIRE = SHARED / "wire" / "gemini"
CLAUDE = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="sk-ant",
                upstream_model="claude-sonnet-4-0", public_model="anthropic/claude-sonnet-4-0",
                default_max_tokens=64000)
GEMINI = Target(provider="google", base_url="https://generativelanguage.googleapis.com", api_key="g",
                upstream_model="gemini-2.5-flash", public_model="google/gemini-2.5-flash")
HI = [{"role": "user", "content": "What is the GCD of 1071 and 462?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def claude_body(target: Target = CLAUDE, signed_by_fake: bool = True, **fields: Any) -> dict[str, Any]:
    body = {"messages": HI, **fields}
    out: dict[str, Any] = orjson.loads(anthropic.build_request(ChatRequest(body, False), target).body)
    if signed_by_fake:  # the fake checks its own signature, as Claude does
        assert thinking_error(out) is None, "the fake (Anthropic's rules) would refuse what the gateway sends"
    return out


def gemini_config(**fields: Any) -> dict[str, Any]:
    body = orjson.loads(gemini.build_request(ChatRequest({"messages": HI, **fields}, False), GEMINI).body)
    return dict(body.get("generationConfig", {}))


# -- reading the request -----------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, None),
    ({"reasoning_effort": "high"}, reasoning.Reasoning(on=True, effort="high")),
    ({"reasoning_effort": "none"}, reasoning.Reasoning(on=False)),
    ({"reasoning": {"effort": "low", "exclude": True}}, reasoning.Reasoning(on=True, effort="low", exclude=True)),
    ({"reasoning": {"max_tokens": 3000}}, reasoning.Reasoning(on=True, budget=3000)),
    ({"reasoning": {"enabled": True}}, reasoning.Reasoning(on=True, effort="medium")),
    ({"reasoning": {"enabled": False, "effort": "high"}}, reasoning.Reasoning(on=False)),
    ({"reasoning": {"max_tokens": 0}}, reasoning.Reasoning(on=False)),
    ({"reasoning": {"exclude": True}}, reasoning.Reasoning(on=None, exclude=True)),
    ({"reasoning_effort": "high", "reasoning": {"effort": "high"}}, reasoning.Reasoning(on=True, effort="high")),
], ids=str)
def test_requested(fields: dict[str, Any], expected: reasoning.Reasoning | None) -> None:
    assert reasoning.requested(fields) == expected


@pytest.mark.parametrize(("fields", "param"), [
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"reasoning_effort": 3}, "reasoning_effort"),
    ({"reasoning": "high"}, "reasoning"),
    ({"reasoning": {"effort": "HIGH"}}, "reasoning.effort"),
    ({"reasoning": {"max_tokens": -1}}, "reasoning.max_tokens"),
    ({"reasoning": {"max_tokens": True}}, "reasoning.max_tokens"),
    ({"reasoning": {"exclude": "yes"}}, "reasoning.exclude"),
    ({"reasoning_effort": "low", "reasoning": {"effort": "high"}}, "reasoning_effort"),
], ids=str)
def test_requested_refuses(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(Untranslatable) as info:
        reasoning.requested(fields)
    assert info.value.param == param


# -- Claude: the request -----------------------------------------------------------------------------


@pytest.mark.parametrize(("effort", "budget"), [("max", 9500), ("xhigh", 9500), ("high", 8000), ("medium", 5000),
                                                ("low", 2000), ("minimal", 1024)])
def test_claude_effort_is_a_share_of_max_tokens(effort: str, budget: int) -> None:
    body = claude_body(reasoning_effort=effort, max_tokens=10000)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget} and body["max_tokens"] == 10000
    assert claude_body(reasoning={"effort": effort}, max_tokens=10000)["thinking"]["budget_tokens"] == budget


def test_claude_without_max_tokens_takes_the_models_maximum() -> None:
    assert claude_body(reasoning_effort="medium")["thinking"]["budget_tokens"] == 32000
    plain = Target(**{**{f: getattr(CLAUDE, f) for f in CLAUDE.__slots__}, "default_max_tokens": None})
    body = claude_body(plain, reasoning_effort="medium")
    assert body["max_tokens"] == 4096 and body["thinking"]["budget_tokens"] == 2048


@pytest.mark.parametrize(("fields", "budget", "max_tokens"), [
    ({"reasoning_effort": "low", "max_tokens": 1000}, 1024, 2024),  # the floor, and room for the answer
    ({"reasoning": {"max_tokens": 3000}, "max_tokens": 2000}, 3000, 5000),
    ({"reasoning": {"max_tokens": 3000}, "max_completion_tokens": 8000}, 3000, 8000),
    ({"reasoning": {"max_tokens": 500}, "max_tokens": 8000}, 1024, 8000),
    ({"reasoning": {"max_tokens": 63000}, "max_tokens": 4000}, 63000, 64000),  # bounded by the model
    ({"reasoning": {"max_tokens": 90000}}, 63999, 64000),
], ids=str)
def test_claude_budget_and_max_tokens(fields: dict[str, Any], budget: int, max_tokens: int) -> None:
    body = claude_body(**fields)
    assert (body["thinking"]["budget_tokens"], body["max_tokens"]) == (budget, max_tokens)
    assert anthropic.max_output_tokens({"messages": HI, **fields}, CLAUDE) == max_tokens  # what the hold covers


def test_a_model_too_small_for_thinking_is_refused() -> None:
    small = Target(**{**{f: getattr(CLAUDE, f) for f in CLAUDE.__slots__}, "default_max_tokens": 1024})
    with pytest.raises(Untranslatable) as info:
        claude_body(small, reasoning_effort="low")
    assert info.value.param == "reasoning" and "1024" in str(info.value)
    assert anthropic.max_output_tokens({"messages": HI, "reasoning_effort": "low"}, small) is None


@pytest.mark.parametrize("fields", [{}, {"reasoning_effort": "none"}, {"reasoning": {"enabled": False}},
                                    {"reasoning": {"exclude": True}}, {"reasoning": {"max_tokens": 0}}], ids=str)
def test_claude_without_thinking(fields: dict[str, Any]) -> None:
    body = claude_body(max_tokens=500, temperature=0.2, top_k=5, **fields)
    assert "thinking" not in body and body["max_tokens"] == 500
    assert (body["temperature"], body["top_k"]) == (0.2, 5)
    assert anthropic.max_output_tokens({"messages": HI, "max_tokens": 500, **fields}, CLAUDE) in (None, 500)


@pytest.mark.parametrize(("sampling", "kept"), [
    ({"temperature": 0.2, "top_k": 40, "top_p": 0.5}, {}),
    ({"temperature": 1, "top_p": 0.97}, {"temperature": 1, "top_p": 0.97}),
    ({"temperature": 1.7, "top_p": 0.95}, {"temperature": 1, "top_p": 0.95}),  # clamped to 1 first, then kept
], ids=str)
def test_claude_thinking_leaves_out_the_sampling_it_refuses(sampling: dict[str, Any], kept: dict[str, Any]) -> None:
    body = claude_body(reasoning_effort="high", max_tokens=4000, **sampling)
    assert "thinking" in body
    assert {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body} == kept


@pytest.mark.parametrize(("fields", "thinks"), [
    ({"tools": TOOLS}, True),
    ({"tools": TOOLS, "tool_choice": "auto"}, True),
    ({"tools": TOOLS, "tool_choice": "none"}, True),
    ({"tools": TOOLS, "tool_choice": "required"}, False),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, False),
    ({"response_format": {"type": "json_object"}}, False),  # carried by a forced tool
], ids=str)
def test_claude_thinking_gives_way_to_a_forced_tool(fields: dict[str, Any], thinks: bool) -> None:
    body = claude_body(reasoning_effort="high", max_tokens=4000, **fields)
    assert ("thinking" in body) is thinks


def assistant_calls(*extras: Any, content: str | None = None) -> dict[str, Any]:
    calls = [{"id": f"toolu_0{i}", "type": "function", "function": {"name": "get_weather", "arguments": "{}"},
              **({"extra_content": extra} if extra is not None else {})} for i, extra in enumerate(extras)]
    return {"role": "assistant", "content": content, "reasoning_content": "ignored", "tool_calls": calls}


def loop(assistant: dict[str, Any]) -> list[dict[str, Any]]:
    return [*HI, assistant, *[{"role": "tool", "tool_call_id": c["id"], "content": "20C"}
                              for c in assistant["tool_calls"]]]


THOUGHT = recorded_thinking()
REDACTED = {"type": "redacted_thinking", "data": REDACTED_DATA}


def test_carried_thinking_blocks_open_the_assistant_turn() -> None:
    extra = {"anthropic": {"thinking_blocks": [THOUGHT, REDACTED]}}
    body = claude_body(messages=loop(assistant_calls(extra, content="Let me look.")), reasoning_effort="low",
                       tools=TOOLS, max_tokens=4000)
    assert body["thinking"]["budget_tokens"] == 1024
    assert [b["type"] for b in body["messages"][1]["content"]] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert body["messages"][1]["content"][:2] == [THOUGHT, REDACTED]  # verbatim: the signature proves the text


def test_interleaved_thinking_stays_before_its_call() -> None:
    second = {"type": "thinking", "thinking": "Now Paris.", "signature": "c2ln"}
    body = claude_body(messages=loop(assistant_calls({"anthropic": {"thinking_blocks": [THOUGHT]}},
                                                     {"anthropic": {"thinking_blocks": [second]}})),
                       signed_by_fake=False, reasoning_effort="low", tools=TOOLS, max_tokens=4000)
    assert body["messages"][1]["content"] == [
        THOUGHT, {"type": "tool_use", "id": "toolu_00", "name": "get_weather", "input": {}},
        second, {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}}]


@pytest.mark.parametrize("extra", [
    None,  # a history from another model, or a client that kept only id/type/function
    {"google": {"thought_signature": "CiIBVKhc"}},  # Gemini's: never Claude's
    {"anthropic": {"thinking_blocks": [{"type": "thinking", "thinking": "x", "signature": ""}]}},
    {"anthropic": {"thinking_blocks": [{"type": "thinking", "thinking": "x"}]}},
    {"anthropic": {"thinking_blocks": "nope"}},
    {"anthropic": {"thinking_blocks": [{"type": "redacted_thinking", "data": 7}]}},
], ids=str)
def test_an_unsigned_tool_turn_turns_thinking_off(extra: Any) -> None:
    """Anthropic lets a request go without thinking when the last tool-calling turn has no thinking block;
    sending thinking would be a 400."""
    body = claude_body(messages=loop(assistant_calls(extra)), reasoning_effort="high", tools=TOOLS, max_tokens=4000)
    assert "thinking" not in body and body["max_tokens"] == 4000
    assert [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]


def test_carried_blocks_stay_behind_without_thinking() -> None:
    extra = {"anthropic": {"thinking_blocks": [THOUGHT, REDACTED]}}
    body = claude_body(messages=loop(assistant_calls(extra)), tools=TOOLS, max_tokens=4000)
    assert "thinking" not in body and [b["type"] for b in body["messages"][1]["content"]] == ["tool_use"]


def test_an_earlier_finished_turn_needs_no_thinking() -> None:
    messages = [*loop(assistant_calls(None)), {"role": "assistant", "content": "20C in SF."},
                {"role": "user", "content": "And Paris?"}]
    assert "thinking" in claude_body(messages=messages, reasoning_effort="high", tools=TOOLS, max_tokens=4000)


def test_a_model_that_drops_reasoning_never_thinks() -> None:
    dropping = Target(**{**{f: getattr(CLAUDE, f) for f in CLAUDE.__slots__},
                         "drop": ("reasoning", "reasoning_effort")})
    assert "thinking" not in claude_body(dropping, reasoning_effort="high", reasoning={"effort": "high"})


# -- Claude: the answer --------------------------------------------------------------------------------


def thinking_answer(redacted: bool) -> dict[str, Any]:
    answer = json.loads((ANTHROPIC_WIRE / "sdk-messages-tool-use.response.json").read_text())
    answer["content"][:0] = [THOUGHT, *([REDACTED] if redacted else [])]
    return dict(answer)


@pytest.mark.parametrize("redacted", [False, True])
def test_answer_carries_thinking_on_the_tool_call(redacted: bool) -> None:
    answer = thinking_answer(redacted)
    message = anthropic.parse_response(orjson.dumps(answer), CLAUDE).body["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT["thinking"]
    [call] = message["tool_calls"]
    assert call["extra_content"] == {"anthropic": {"thinking_blocks": answer["content"][:1 + redacted]}}
    again = claude_body(messages=loop(message), reasoning_effort="low", tools=TOOLS, max_tokens=4000)
    blocks = again["messages"][1]["content"]
    assert blocks[:1 + redacted] == answer["content"][:1 + redacted] and "thinking" in again
    assert [b["type"] for b in blocks[1 + redacted:]] == ["tool_use"]


def test_answer_without_tool_calls_carries_nothing() -> None:
    answer = json.loads((ANTHROPIC_WIRE / "sdk-messages-end-turn.response.json").read_text())
    answer["content"][:0] = [THOUGHT]
    message = anthropic.parse_response(orjson.dumps(answer), CLAUDE).body["choices"][0]["message"]
    assert message["reasoning_content"] == THOUGHT["thinking"] and "tool_calls" not in message
    assert "extra_content" not in orjson.dumps(message).decode()


def stream_chunks(events: list[bytes]) -> list[dict[str, Any]]:
    state = anthropic.new_stream_state(ChatRequest({"messages": HI}, True), CLAUDE)
    decoder, chunks = SSEDecoder(), []
    for raw in events:
        for event in decoder.feed(raw):
            chunks += anthropic.parse_stream_event(state, event)
    return chunks


def recorded_events(name: str) -> list[bytes]:
    raw = (ANTHROPIC_WIRE / name).read_bytes()
    return [block + b"\n\n" for block in raw.split(b"\n\n") if block.strip()]


@pytest.mark.parametrize("redacted", [False, True])
def test_stream_carries_thinking_on_the_call_that_opens(redacted: bool) -> None:
    """The thinking block's deltas and signature, streamed before the tool call, ride on the delta that opens
    the call; the openai SDK's stream helper keeps them on the final message."""
    chunks = stream_chunks(thinking_events(recorded_events("sdk-stream-tool-use.sse"), redacted))
    opening = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    blocks = [THOUGHT, *([REDACTED] if redacted else [])]
    assert opening[0]["choices"][0]["delta"]["tool_calls"][0]["extra_content"] == {
        "anthropic": {"thinking_blocks": blocks}}
    assert all("extra_content" not in c["choices"][0]["delta"]["tool_calls"][0] for c in opening[1:])
    helper = ChatCompletionStreamState()
    for chunk in chunks:
        helper.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = helper.get_final_completion().choices[0].message
    assert message.model_dump()["reasoning_content"] == THOUGHT["thinking"]
    assert (message.tool_calls or [])[0].model_dump()["extra_content"] == {"anthropic": {"thinking_blocks": blocks}}


def test_stream_thinking_without_tool_call_carries_nothing() -> None:
    chunks = stream_chunks(recorded_events("docs-stream-thinking.sse"))
    assert "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in chunks if c["choices"]) \
        == THOUGHT["thinking"]
    assert "extra_content" not in orjson.dumps(chunks).decode()


# -- Gemini ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "thinking"), [
    ({"reasoning_effort": "low"}, {"includeThoughts": True, "thinkingBudget": 1024}),
    ({"reasoning_effort": "medium"}, {"includeThoughts": True, "thinkingBudget": 8192}),
    ({"reasoning_effort": "high"}, {"includeThoughts": True, "thinkingBudget": 24576}),
    ({"reasoning_effort": "minimal"}, {"includeThoughts": True, "thinkingBudget": 512}),
    ({"reasoning_effort": "high", "max_tokens": 1000}, {"includeThoughts": True, "thinkingBudget": 800}),
    ({"reasoning": {"max_tokens": 3000}, "max_tokens": 1000}, {"includeThoughts": True, "thinkingBudget": 3000}),
    ({"reasoning": {"enabled": True}}, {"includeThoughts": True, "thinkingBudget": 8192}),
    ({"reasoning": {"effort": "high", "exclude": True}}, {"includeThoughts": False, "thinkingBudget": 24576}),
    ({"reasoning": {"exclude": True}}, {"includeThoughts": False}),  # the model's own default, hidden
    ({"reasoning_effort": "none"}, {"includeThoughts": False, "thinkingBudget": 0}),
    ({"reasoning": {"enabled": False}}, {"includeThoughts": False, "thinkingBudget": 0}),
], ids=str)
def test_gemini_thinking_config(fields: dict[str, Any], thinking: dict[str, Any]) -> None:
    assert gemini_config(**fields)["thinkingConfig"] == thinking


def test_gemini_without_reasoning_sends_no_thinking_config() -> None:
    assert "thinkingConfig" not in gemini_config(max_tokens=100, temperature=0.5)


@pytest.mark.parametrize("name", ["unary-success-thinking-reply-thought-summary.json",
                                  "unary-success-thinking-function-call-thought-summary-signature.json"])
def test_gemini_thoughts_are_billed_as_output(name: str) -> None:
    """Gemini counts thoughts apart from the candidates: the bill's completion tokens hold both."""
    raw = (GEMINI_WIRE / "googleai" / name).read_bytes()
    meta = json.loads(raw)["usageMetadata"]
    result = gemini.parse_response(raw, GEMINI)
    assert meta["thoughtsTokenCount"] > 0
    assert result.usage.completion_tokens == meta.get("candidatesTokenCount", 0) + meta["thoughtsTokenCount"]
    assert result.usage.reasoning_tokens == meta["thoughtsTokenCount"]
    assert result.body["usage"]["completion_tokens_details"]["reasoning_tokens"] == meta["thoughtsTokenCount"]
    parts = json.loads(raw)["candidates"][0]["content"]["parts"]
    assert result.body["choices"][0]["message"]["reasoning_content"] == "".join(
        p["text"] for p in parts if p.get("thought"))


def test_the_hold_covers_the_max_tokens_claude_is_sent_without_thinking() -> None:
    """Claude requires max_tokens: a request naming none is sent the model's maximum, else 4096, which the hold
    must cover even where `billing.default_max_output_tokens` (the hold's default) is set lower."""
    plain = Target(**{**{f: getattr(CLAUDE, f) for f in CLAUDE.__slots__}, "default_max_tokens": None})
    assert claude_body(plain)["max_tokens"] == anthropic.max_output_tokens({"messages": HI}, plain) == 4096
    assert anthropic.max_output_tokens({"messages": HI}, CLAUDE) == claude_body()["max_tokens"] == 64000
    assert anthropic.max_output_tokens({"messages": HI, "max_completion_tokens": 700}, CLAUDE) == 700
