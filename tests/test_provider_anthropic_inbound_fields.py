"""Fields of an Anthropic Messages request the translation to other kinds used to drop without a word: an unknown
`tool_choice.type` (Anthropic answers it with a 400), `thinking.display: "omitted"` (no thinking text for the
client, billed all the same), and the ids Gemini gives its function calls (lost on the way back, so the
`functionResponse` could not name its call). Plain data in and out: recorded upstream answers through the real
adapters and `gateway.messages.TranslatedExchange`, next turns as the Gemini adapter would send them.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from anthropic.types import Message as SDKMessage
from fakes.gemini_upstream import THINKING, recorded_chunks, recorded_json
from harness import validate
from test_provider_anthropic_inbound import (
    GEMINI_TARGET,
    PARALLEL,
    SIGNED_STREAM,
    _accumulate,
    _sdk_content,
    gemini_recording,
    next_turn,
    signed_recording,
    streamed_events,
    unary_message,
)

from gateway.messages import TranslatedExchange
from providers import anthropic_inbound, registry
from providers.framing import SSEDecoder
from providers.reasoning import Limits
from providers.types import Untranslatable, Usage

BASE: dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}],
                        "tools": [{"name": "now", "input_schema": {"type": "object"}}]}
ALLOWED = "'auto', 'any', 'tool', 'none'"


# -- tool_choice -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("choice", "param", "says"), [
    ({"type": "required"}, "tool_choice.type", f"Input tag 'required' found using 'type' does not match any of the "
                                                f"expected tags: {ALLOWED}"),
    ({"type": "function", "function": {"name": "now"}}, "tool_choice.type", "Input tag 'function' found"),
    ({"disable_parallel_tool_use": True}, "tool_choice.type", "Unable to extract tag using discriminator 'type'"),
    ({"type": "tool"}, "tool_choice.name", "tool_choice.name: Field required"),
    ({"type": "tool", "name": 7}, "tool_choice.name", "tool_choice.name: Input should be a valid string"),
], ids=["openai-word", "openai-shape", "no-type", "tool-without-name", "tool-name-not-a-string"])
def test_a_tool_choice_anthropic_refuses_is_refused_not_dropped(choice: dict[str, Any], param: str,
                                                                 says: str) -> None:
    """It was dropped: the model then chose freely where the client had asked for something it did not get."""
    with pytest.raises(Untranslatable) as info:
        anthropic_inbound.chat_body({**BASE, "tool_choice": choice})
    assert info.value.param == param and says in str(info.value)
    if param == "tool_choice.type":
        assert ALLOWED in str(info.value)


@pytest.mark.parametrize("tools", [None, []], ids=["no-tools", "empty-tools"])
@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "now"}], ids=["any", "tool"])
def test_a_tool_choice_without_tools_is_refused_as_anthropic_refuses_it(choice: dict[str, Any],
                                                                       tools: list[Any] | None) -> None:
    """It went upstream as chat's `tool_choice` without `tools`, which OpenAI refuses ("only allowed when 'tools'
    are specified"); a choice that a tool be called is refused by Anthropic itself."""
    body = {**BASE, "tool_choice": choice, "tools": tools}
    if tools is None:
        del body["tools"]
    with pytest.raises(Untranslatable) as info:
        anthropic_inbound.chat_body(body)
    assert info.value.param == "tool_choice"
    assert str(info.value) == f"tool_choice.{choice['type']} may only be specified while providing tools"


@pytest.mark.parametrize("tools", [None, []], ids=["no-tools", "empty-tools"])
@pytest.mark.parametrize("choice", [{"type": "auto", "disable_parallel_tool_use": True}, {"type": "none"}],
                         ids=["auto-not-parallel", "none"])
def test_a_choice_needing_no_tool_goes_without_tools_unsaid(choice: dict[str, Any], tools: list[Any] | None) -> None:
    """`auto` or `none` without tools asks nothing the model would not do anyway; OpenAI refuses `tool_choice` and
    `parallel_tool_calls` without tools, so neither goes."""
    body = {**BASE, "tool_choice": choice, "tools": tools}
    if tools is None:
        del body["tools"]
    out = anthropic_inbound.chat_body(body)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & out.keys(), out


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto"),
    ({"type": "any", "disable_parallel_tool_use": True}, "required"),
    ({"type": "tool", "name": "now", "disable_parallel_tool_use": True},
     {"type": "function", "function": {"name": "now"}}),
], ids=["auto", "any", "tool"])
def test_disable_parallel_tool_use_reaches_the_upstream(choice: dict[str, Any], expected: Any) -> None:
    target = GEMINI_TARGET.__class__(provider="oai", base_url="https://api.openai.com/v1", api_key="k",
                                     upstream_model="gpt-4o", public_model="oai/gpt-4o")
    request = TranslatedExchange(registry.get("openai")).build({**BASE, "tool_choice": choice}, target, stream=False)
    sent = json.loads(request.body)
    validate(sent, "CreateChatCompletionRequest")
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == (expected, False)
    chat = anthropic_inbound.chat_body({**BASE, "tool_choice": {**choice, "disable_parallel_tool_use": False}})
    assert "parallel_tool_calls" not in chat  # parallel calls are the default on both sides


# -- thinking.display: "omitted" --------------------------------------------------------------------------------

OMITTED = {"type": "enabled", "budget_tokens": 2048, "display": "omitted"}
FLASH = GEMINI_TARGET.__class__(provider="google", base_url="https://generativelanguage.googleapis.com",
                                api_key="k", upstream_model="gemini-2.5-flash", public_model="google/flash")


def _exchange(thinking: dict[str, Any]) -> TranslatedExchange:
    exchange = TranslatedExchange(registry.get("gemini"))
    exchange.build({**BASE, "max_tokens": 4000, "thinking": thinking}, FLASH, stream=False)
    return exchange


@pytest.mark.parametrize(("display", "shown"), [("omitted", False), ("summarized", True), (None, True)])
def test_omitted_thinking_gives_no_thinking_blocks_and_bills_the_thoughts(display: str | None, shown: bool) -> None:
    recorded = recorded_json(THINKING.format("unary", "json"))
    thinking = {**OMITTED, "display": display} if display else {"type": "enabled", "budget_tokens": 2048}
    reply = _exchange(thinking).parse(json.dumps(recorded).encode(), FLASH)
    SDKMessage.model_validate(reply.body)
    assert [block["type"] for block in reply.body["content"]] == (["thinking", "text"] if shown else ["text"])
    meta = recorded["usageMetadata"]
    assert reply.usage.completion_tokens == meta["candidatesTokenCount"] + meta["thoughtsTokenCount"]
    assert reply.body["usage"]["output_tokens"] == reply.usage.completion_tokens  # thought tokens billed all the same


def test_omitted_thinking_streams_no_thinking_blocks() -> None:
    body = {**BASE, "max_tokens": 4000, "thinking": OMITTED}
    exchange = TranslatedExchange(registry.get("gemini"))
    codec = exchange.codec(body, FLASH, "gen-1", True)
    raw = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n"
                   for chunk in recorded_chunks(THINKING.format("streaming", "txt")))
    out = b"".join(codec.feed(event)[0] for event in SSEDecoder().feed(raw))
    meta = recorded_chunks(THINKING.format("streaming", "txt"))[-1]["usageMetadata"]
    usage = Usage(prompt_tokens=meta["promptTokenCount"], reported=True,
                  completion_tokens=meta["candidatesTokenCount"] + meta["thoughtsTokenCount"])
    out += codec.finish({"request_cost": 0.1}, True, usage)
    events = [(e.event or "", json.loads(e.data)) for e in SSEDecoder().feed(out)]
    assert not [data for _, data in events if "thinking" in json.dumps(data.get("content_block") or data.get("delta"))]
    message = _accumulate(events)
    assert [block.type for block in message.content] == ["text"] and message.content[0].text
    assert message.usage.output_tokens == usage.completion_tokens


def test_omitted_thinking_still_carries_geminis_signature() -> None:
    """As Anthropic's own `omitted` answers: a thinking block with no text, its signature kept for the next turn."""
    recorded, _, signature = signed_recording()
    reply = _exchange(OMITTED).parse(json.dumps(recorded).encode(), FLASH)
    thinking, call = reply.body["content"]
    assert thinking == {"type": "thinking", "thinking": "", "signature": "gemini:" + signature}
    assert call["type"] == "tool_use"


@pytest.mark.parametrize(("display", "included"), [("omitted", False), ("summarized", True)])
def test_gemini_is_not_asked_for_thoughts_the_client_will_not_see(display: str, included: bool) -> None:
    exchange = TranslatedExchange(registry.get("gemini"))
    exchange.reasoning_limits = Limits(budget=(0, 24576), can_disable=True)
    request = exchange.build({**BASE, "max_tokens": 4000, "thinking": {**OMITTED, "display": display}}, FLASH,
                             stream=False)
    config = json.loads(request.body)["generationConfig"]["thinkingConfig"]
    assert config == {"includeThoughts": included, "thinkingBudget": 2048}  # thinks as much, shows nothing


def test_an_unknown_display_is_left_to_the_model() -> None:
    assert anthropic_inbound.thinking_shown({"thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert anthropic_inbound.thinking_shown({"thinking": {"type": "adaptive", "display": ["omitted"]}})
    assert not anthropic_inbound.thinking_shown({"thinking": {"type": "adaptive", "display": "omitted"}})


# -- Gemini's own function-call ids ---------------------------------------------------------------------------


def with_call_ids(recorded: dict[str, Any], *ids: str) -> dict[str, Any]:
    """A recorded answer as newer Gemini models send it: each functionCall with its `id`."""
    answer = copy.deepcopy(recorded)
    calls = [p["functionCall"] for p in answer["candidates"][0]["content"]["parts"] if "functionCall" in p]
    assert len(calls) == len(ids)
    for call, call_id in zip(calls, ids, strict=True):
        call["id"] = call_id
    return answer


@pytest.mark.parametrize("client", ["as_received", "anthropic_sdk"])
def test_geminis_call_ids_come_back_on_the_call_and_its_response(client: str) -> None:
    """The tool_use ids the client saw went back as ids Gemini never gave, so the calls lost their ids and the
    functionResponses could not name them (Gemini matches `functionResponse.id` to `functionCall.id`)."""
    recorded = with_call_ids(gemini_recording(PARALLEL), "fc-a1", "fc-b2", "fc-c3")
    message, _ = unary_message(recorded)
    uses = [block for block in message["content"] if block["type"] == "tool_use"]
    again, _ = unary_message(recorded)
    assert [block["id"] for block in uses] == [block["id"] for block in again["content"]]  # stable
    content = message["content"] if client == "as_received" else _sdk_content(SDKMessage.model_validate(message))
    sent = next_turn(content)
    assert [part["functionCall"] for part in sent["contents"][1]["parts"]] == [  # ids and all
        part["functionCall"] for part in recorded["candidates"][0]["content"]["parts"]]
    responses = [part["functionResponse"] for part in sent["contents"][2]["parts"]]
    assert [(r["id"], r["name"]) for r in responses] == [("fc-a1", "sum"), ("fc-b2", "sum"), ("fc-c3", "sum")]


def test_a_streamed_call_id_comes_back_too() -> None:
    raw = b"".join(b"data: " + json.dumps(with_call_ids(chunk, "fc-now") if any(
        "functionCall" in p for p in chunk["candidates"][0]["content"]["parts"]) else chunk).encode() + b"\r\n\r\n"
        for chunk in recorded_chunks(SIGNED_STREAM))
    events, _ = streamed_events(raw)
    sent = next_turn(_sdk_content(_accumulate(events)))
    [part] = sent["contents"][1]["parts"]
    assert part["functionCall"] == {"name": "now", "args": {}, "id": "fc-now"} and part["thoughtSignature"]
    assert sent["contents"][2]["parts"][0]["functionResponse"]["id"] == "fc-now"


@pytest.mark.parametrize("call_id", ["toolu_01A09q90qw90lq917835lq9", "call_0123456789abcdef01234567", "fc-a1"])
def test_ids_gemini_did_not_give_still_never_reach_it(call_id: str) -> None:
    """Claude's, the gateway's and any unmarked id stay out: endpoints that give no ids refuse the field."""
    sent = next_turn([{"type": "tool_use", "id": call_id, "name": "now", "input": {}}])
    assert [part["functionCall"] for part in sent["contents"][1]["parts"]] == [{"name": "now", "args": {}}]
    assert "id" not in sent["contents"][2]["parts"][0]["functionResponse"]


def test_streamed_and_whole_answers_give_the_same_ids() -> None:
    recorded = with_call_ids(gemini_recording(PARALLEL), "fc-a1", "fc-b2", "fc-c3")
    events, _ = streamed_events(b"data: " + json.dumps(recorded).encode() + b"\r\n\r\n")
    ids = [data["content_block"]["id"] for name, data in events if name == "content_block_start"]
    message, _ = unary_message(recorded)
    assert ids == [block["id"] for block in message["content"]]
