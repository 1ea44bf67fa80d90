"""providers.anthropic_inbound on Anthropic's recorded wire examples, without a server.

Requests: a recorded Anthropic request, translated to OpenAI chat and then forward again by
providers.anthropic, must come back as itself (less what chat cannot carry). Streams: recorded upstream
streams, turned into chat chunks by the adapters and then into Anthropic events here, are accumulated by
the Anthropic SDK's own `accumulate_event` into the message the recording spells out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message as SDKMessage
from fakes.gemini_upstream import recorded_chunks
from harness import validate

from gateway.messages import NativeExchange
from providers import anthropic, anthropic_answer, anthropic_inbound, anthropic_usage, gemini, openai
from providers.anthropic_answer import MessageStream
from providers.framing import SSEDecoder
from providers.gemini_request import SKIP_SIGNATURE
from providers.types import ChatRequest, ProviderError, Target, Usage

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANTHROPIC = SHARED / "wire" / "anthropic"
OPENAI = SHARED / "wire" / "openai"
TARGET = Target(provider="claude", base_url="https://api.anthropic.com", api_key="k", upstream_model="claude-x",
                public_model="claude/x")
GEMINI_TARGET = Target(provider="google", base_url="https://generativelanguage.googleapis.com", api_key="k",
                       upstream_model="gemini-3-pro-preview", public_model="google/gemini-3")


def recorded(name: str) -> dict[str, Any]:
    data = json.loads((ANTHROPIC / name).read_text())
    data.pop("_source", None)
    return dict(data)


def forward(chat: dict[str, Any]) -> dict[str, Any]:
    """providers.anthropic's own translation of a chat request (the direction already tested on its own)."""
    req = anthropic.build_request(ChatRequest(body=chat, stream=bool(chat.get("stream"))), TARGET)
    return dict(json.loads(req.body))


def _without(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in names}


@pytest.mark.parametrize("name", ["sdk-messages-tool-use.request.json", "sdk-messages-tool-result.request.json",
                                  "request-image-base64.json"])
def test_recorded_requests_survive_the_round_trip(name: str) -> None:
    original = recorded(name)
    chat = anthropic_inbound.chat_body(original)
    validate(chat, "CreateChatCompletionRequest")
    back = forward(chat)
    expected = {**original, "model": "claude-x"}
    for tool in expected.get("tools", []):
        if tool.get("description") == "":
            del tool["description"]  # an empty description is no description
    for message in expected["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else ():
            block.pop("caller", None)  # server-side bookkeeping of the answer, not part of a request
    assert back == expected


def test_all_params_request_keeps_what_chat_can_carry() -> None:
    original = recorded("request-all-params.json")
    chat = anthropic_inbound.chat_body(original)
    assert chat["messages"][0] == {"role": "system", "content": [
        {"type": "text", "text": "Today's date is 2024-06-01.", "cache_control": {"type": "ephemeral", "ttl": "5m"}}]}
    assert chat["stop"] == ["string"] and chat["user"] == original["metadata"]["user_id"]
    assert chat["parallel_tool_calls"] is False and chat["tool_choice"] == "auto"
    assert chat["tools"][0]["function"]["parameters"] == original["tools"][0]["input_schema"]
    assert "top_k" not in chat and "thinking" not in chat
    assert chat["service_tier"] == "auto"  # the tier the hold read goes to an OpenAI-kind upstream as it is
    back = forward(chat)
    assert back["system"] == original["system"] and back["tool_choice"] == original["tool_choice"]
    assert back["metadata"] == original["metadata"] and back["stop_sequences"] == original["stop_sequences"]
    assert (back["temperature"], back["top_p"], back["max_tokens"]) == (1, 0.7, 1024)


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"), ({"type": "any"}, "required"), ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = {**recorded("sdk-messages-tool-use.request.json"), "tool_choice": choice}
    assert anthropic_inbound.chat_body(body)["tool_choice"] == expected


def test_tool_results_become_tool_messages_before_the_rest_of_the_turn() -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                          {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [{"type": "text", "text": "and now?"},
                                     {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                                      "content": [{"type": "text", "text": "boom"}]}]}]}
    messages = anthropic_inbound.chat_body(body)["messages"]
    assert messages == [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "Error: boom"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
    ]


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
    {"messages": [{"role": "system", "content": "x"}]},
    {"messages": "hi"},
    {"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
    {"messages": [], "system": [{"type": "image"}]},
], ids=["document-block", "system-role", "not-a-list", "server-tool", "image-in-system"])
def test_what_chat_cannot_express_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ProviderError):
        anthropic_inbound.chat_body({"model": "m", "max_tokens": 5, **body})


# -- answers -----------------------------------------------------------------------------------------


def test_chat_answer_with_tool_calls_as_a_message() -> None:
    answer = json.loads((OPENAI / "docs-chat-tools.response.json").read_text())
    usage = Usage(prompt_tokens=82, completion_tokens=17, cached_tokens=2, reported=True)
    message = anthropic_answer.message_from_chat(answer, usage, "oai/gpt-4o")
    call = answer["choices"][0]["message"]["tool_calls"][0]
    assert message["stop_reason"] == "tool_use" and message["role"] == "assistant" and message["model"] == "oai/gpt-4o"
    assert message["content"] == [{"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                                   "input": json.loads(call["function"]["arguments"])}]
    assert message["usage"] == {"input_tokens": 80, "output_tokens": 17, "cache_read_input_tokens": 2,
                                "cache_creation_input_tokens": 0}


@pytest.mark.parametrize("names", [("reasoning_content",), ("reasoning",), ("reasoning_content", "reasoning")],
                         ids=["deepseek", "openrouter_ollama", "vllm_both"])
def test_chat_reasoning_under_either_name_is_a_thinking_block(names: tuple[str, ...]) -> None:
    """DeepSeek's `reasoning_content`, OpenRouter's and Ollama's `reasoning`, or both (vLLM, the same text):
    one thinking block before the text, in an answer and in a stream."""
    answer = json.loads((OPENAI / "docs-chat-default.response.json").read_text())
    message = answer["choices"][0]["message"]
    for name in names:
        message[name] = "Greet back."
    translated = anthropic_answer.message_from_chat(answer, Usage(), "m")["content"]
    assert translated == [{"type": "thinking", "thinking": "Greet back.", "signature": ""},
                          {"type": "text", "text": message["content"]}]

    def delta(**fields: Any) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}

    chunks = [delta(**dict.fromkeys(names, part)) for part in ("Greet", " back.")]
    chunks += [delta(content="Hello!"), {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    events = _translate(chunks, Usage(prompt_tokens=3, completion_tokens=4, reported=True))
    assert [data["delta"]["type"] for name, data in events if name == "content_block_delta"] == \
        ["thinking_delta", "thinking_delta", "text_delta"]
    rebuilt = _accumulate(events)
    assert [(b.type, b.thinking if b.type == "thinking" else b.text) for b in rebuilt.content] == \
        [("thinking", "Greet back."), ("text", "Hello!")]


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                               ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_stop_reasons(finish: str, stop: str) -> None:
    assert anthropic_answer.stop_reason(finish) == stop


# -- streams -------------------------------------------------------------------------------------------


def _chat_chunks(adapter: Any, raw: bytes) -> list[dict[str, Any]]:
    state = adapter.new_stream_state(ChatRequest(body={}, stream=True), TARGET)
    decoder = SSEDecoder()
    events = [*decoder.feed(raw), *decoder.flush()]
    return [chunk for event in events for chunk in adapter.parse_stream_event(state, event)]


def _accumulate(events: list[tuple[str, dict[str, Any]]]) -> Any:
    snapshot, bufs = None, {}  # type: ignore[var-annotated]
    for _, data in events:
        snapshot = accumulate_event(event=json.loads(json.dumps(data)), current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def _translate(chunks: list[dict[str, Any]], usage: Usage) -> list[tuple[str, dict[str, Any]]]:
    stream = MessageStream("gen-1", "any/model")
    events = [event for chunk in chunks for event in stream.feed(chunk)]
    return events + stream.end(usage, {"billing": {"request_cost": 0.1}})


def _sse_payloads(name: str) -> list[dict[str, Any]]:
    """The recording's event payloads; the docs' abridged thinking example omits usage, which the SDK needs."""
    decoder = SSEDecoder()
    raw = (ANTHROPIC / name).read_bytes()
    payloads = [json.loads(e.data) for e in [*decoder.feed(raw), *decoder.flush()]]
    for payload in payloads:
        if payload["type"] == "message_start":
            payload["message"].setdefault("usage", {"input_tokens": 0, "output_tokens": 0})
        if payload["type"] == "message_delta":
            payload.setdefault("usage", {"output_tokens": 0})
    return payloads


@pytest.mark.parametrize("name", ["sdk-stream-basic.sse", "sdk-stream-tool-use.sse", "docs-stream-thinking.sse"])
def test_anthropic_stream_through_chat_comes_back_as_the_same_message(name: str) -> None:
    original = _accumulate([("", p) for p in _sse_payloads(name) if p.get("type") != "ping"])
    chunks = _chat_chunks(anthropic, (ANTHROPIC / name).read_bytes())
    usage = anthropic_usage.usage_from(original.usage.to_dict())
    events = _translate(chunks, usage)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == len(original.content)
    rebuilt = _accumulate(events)
    for block in original.content:
        if block.type == "thinking":
            block.signature = ""  # a signature cannot cross another provider; it never leaves the native route
    assert [b.to_dict() for b in rebuilt.content] == [_plain(b.to_dict()) for b in original.content]
    assert rebuilt.stop_reason == original.stop_reason
    assert (rebuilt.usage.input_tokens, rebuilt.usage.output_tokens) == \
        (original.usage.input_tokens, original.usage.output_tokens)
    assert events[-2][1]["billing"] == {"request_cost": 0.1}


def _plain(block: dict[str, Any]) -> dict[str, Any]:
    block.pop("caller", None)
    block.pop("citations", None)
    return block


def test_openai_tool_stream_becomes_tool_use_blocks() -> None:
    chunks = _chat_chunks(openai, (OPENAI / "sdk-stream-tool-calls-parallel.sse").read_bytes())
    events = _translate(chunks, Usage(prompt_tokens=10, completion_tokens=5, reported=True))
    message = _accumulate(events)
    calls = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or ():
                entry = calls.setdefault(call["index"], {"id": call.get("id"), "name": "", "args": ""})
                entry["name"] += call.get("function", {}).get("name") or ""
                entry["args"] += call.get("function", {}).get("arguments") or ""
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == \
        [("tool_use", c["id"], c["name"], json.loads(c["args"])) for c in calls.values()]
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 5


def test_an_empty_stream_still_opens_and_closes_the_message() -> None:
    events = MessageStream("gen-1", "m").end(Usage(), None)
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert _accumulate(events).content == []


# -- Gemini thought signatures: out on a thinking block, back on the functionCall part ----------------------

SIGNED_UNARY = "googleai/unary-success-thinking-function-call-thought-summary-signature.json"
SIGNED_STREAM = "googleai/streaming-success-thinking-function-call-thought-summary-signature.txt"
PARALLEL = "vertexai/unary-success-function-call-parallel-calls.json"


def gemini_recording(name: str) -> dict[str, Any]:
    return dict(json.loads((SHARED / "wire" / "gemini" / name).read_text()))


def signed_recording() -> tuple[dict[str, Any], str, str]:
    """The recorded signed answer, its thought summary and its functionCall's signature, read off the file."""
    recorded = gemini_recording(SIGNED_UNARY)
    thought, call = recorded["candidates"][0]["content"]["parts"]
    assert thought["thought"] is True and call["functionCall"] == {"name": "now", "args": {}}
    return recorded, thought["text"], call["thoughtSignature"]


def _thinking(text: str, signature: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature}


def _now() -> dict[str, Any]:
    return {"type": "tool_use", "id": None, "name": "now", "input": {}}  # the id is Gemini adapter's random one


def signed_cases() -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Gemini answers with a signed call, and the content blocks each must become (tool_use ids left None)."""
    recorded, thought, signature = signed_recording()
    parts = recorded["candidates"][0]["content"]["parts"]
    alone = json.loads(json.dumps(recorded))
    del alone["candidates"][0]["content"]["parts"][0]
    after_text = json.loads(json.dumps(recorded))
    after_text["candidates"][0]["content"]["parts"].insert(1, {"text": "Let me check the date."})
    parallel = gemini_recording(PARALLEL)  # as Gemini 3 sends parallel calls: the first one alone signed
    parallel["candidates"][0]["content"]["parts"][0]["thoughtSignature"] = parts[1]["thoughtSignature"]
    sums = [{"type": "tool_use", "id": None, "name": "sum", "input": p["functionCall"]["args"]}
            for p in parallel["candidates"][0]["content"]["parts"]]
    signed = "gemini:" + signature
    return {
        "after_its_reasoning": (recorded, [_thinking(thought, signed), _now()]),
        "without_reasoning": (alone, [_thinking("", signed), _now()]),
        "after_text": (after_text, [_thinking(thought, ""), {"type": "text", "text": "Let me check the date."},
                                    _thinking("", signed), _now()]),
        "parallel_first_signed": (parallel, [_thinking("", signed), *sums]),
    }


def _with_ids(expected: list[dict[str, Any]], chat_message: dict[str, Any]) -> list[dict[str, Any]]:
    ids = iter(call["id"] for call in chat_message["tool_calls"])
    return [{**block, "id": next(ids)} if block["type"] == "tool_use" else block for block in expected]


def unary_message(response: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Anthropic message, chat message) for a Gemini answer, through providers.gemini and then here."""
    chat = gemini.parse_response(json.dumps(response).encode(), GEMINI_TARGET)
    message = anthropic_answer.message_from_chat(chat.body, chat.usage, "google/gemini-3")
    SDKMessage.model_validate(message)
    return message, chat.body["choices"][0]["message"]


def streamed_events(raw: bytes) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """(Anthropic stream events, chat chunks) for a Gemini SSE stream."""
    chunks = _chat_chunks(gemini, raw)
    return _translate(chunks, Usage(prompt_tokens=38, completion_tokens=8, reported=True)), chunks


def _streamed_message(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat message the chunks add up to (only the tool calls' ids are needed here)."""
    calls = [call for chunk in chunks for choice in chunk["choices"] for call in choice["delta"].get("tool_calls", [])]
    return {"tool_calls": calls}


@pytest.mark.parametrize("case", list(signed_cases()))
def test_gemini_signature_rides_on_a_thinking_block_before_its_tool_use(case: str) -> None:
    """Unary and streamed alike, from the same answer (streamed as one event, as Gemini may send it)."""
    response, expected = signed_cases()[case]
    message, chat_message = unary_message(response)
    assert message["content"] == _with_ids(expected, chat_message)
    events, chunks = streamed_events(b"data: " + json.dumps(response).encode() + b"\r\n\r\n")
    names = [n for n, _ in events]
    assert names.count("content_block_start") == names.count("content_block_stop") == len(expected)
    rebuilt = [_plain(b.to_dict()) for b in _accumulate(events).content]
    assert rebuilt == _with_ids(expected, _streamed_message(chunks))


def test_recorded_gemini_stream_signs_its_reasoning_block() -> None:
    """The recorded stream: thought summaries in two events, the signed call in a third. The signature_delta
    closes the reasoning block (index 0) before the tool_use block (index 1) opens."""
    chunks = recorded_chunks(SIGNED_STREAM)
    thoughts = [p["text"] for c in chunks[:2] for p in c["candidates"][0]["content"]["parts"]]
    signature = chunks[2]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    events, chat_chunks = streamed_events((SHARED / "wire" / "gemini" / SIGNED_STREAM).read_bytes())
    blocks = [(name, data["index"], (data.get("content_block") or data.get("delta") or {}).get("type"))
              for name, data in events if name.startswith("content_block")]
    assert blocks == [("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
                      ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
                      ("content_block_stop", 0, None), ("content_block_start", 1, "tool_use"),
                      ("content_block_delta", 1, "input_json_delta"), ("content_block_stop", 1, None)]
    [signed] = [data for _, data in events if (data.get("delta") or {}).get("type") == "signature_delta"]
    assert signed == {"type": "content_block_delta", "index": 0,
                      "delta": {"type": "signature_delta", "signature": "gemini:" + signature}}
    assert signature.startswith("CiIBVKhc7vB+vaaq6rA/KC79")
    [call] = _streamed_message(chat_chunks)["tool_calls"]
    assert [_plain(b.to_dict()) for b in _accumulate(events).content] == [
        _thinking("".join(thoughts), "gemini:" + signature),
        {"type": "tool_use", "id": call["id"], "name": "now", "input": {}}]


MALFORMED_EXTRA = {
    "null": None,
    "google_not_an_object": {"google": "CiIBVKhc"},
    "signature_not_a_string": {"google": {"thought_signature": 42}},
    "signature_empty": {"google": {"thought_signature": ""}},
    "other_vendor_only": {"openrouter": {"thought_signature": "CiIBVKhc"}},
}


@pytest.mark.parametrize("extra", MALFORMED_EXTRA.values(), ids=list(MALFORMED_EXTRA))
def test_tool_call_without_a_usable_signature_gets_no_thinking_block(extra: Any) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}, "extra_content": extra}
    answer = {"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls",
                                      "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
    tool_use = {"type": "tool_use", "id": "call_1", "name": "now", "input": {}}
    assert anthropic_answer.message_from_chat(answer, Usage(), "m")["content"] == [tool_use]
    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}, "finish_reason": "tool_calls"}]}
    events = _translate([chunk], Usage())
    assert [data["content_block"]["type"] for name, data in events if name == "content_block_start"] == ["tool_use"]


def next_turn(content: list[dict[str, Any]]) -> dict[str, Any]:
    """The Gemini body of the request an Anthropic client sends after running the tools of this content."""
    results = [{"type": "tool_result", "tool_use_id": block["id"], "content": '{"now": "2025-07-28T10:00:00Z"}'}
               for block in content if block["type"] == "tool_use"]
    body = {"model": "google/gemini-3", "max_tokens": 100, "messages": [
        {"role": "user", "content": "How many days until New Year's Eve?"},
        {"role": "assistant", "content": content}, {"role": "user", "content": results}]}
    chat = anthropic_inbound.chat_body(body)
    validate(chat, "CreateChatCompletionRequest")
    sent = json.loads(gemini.build_request(ChatRequest(body=chat, stream=False), GEMINI_TARGET).body)
    assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
    return dict(sent)


def _sdk_content(message: Any) -> list[dict[str, Any]]:
    """What an SDK user appends: the SDK's own content blocks, dumped as the SDK sends them."""
    return [block.model_dump(exclude_none=True) for block in message.content]


@pytest.mark.parametrize("client", ["as_received", "anthropic_sdk"])
@pytest.mark.parametrize("case", list(signed_cases()))
def test_gemini_signature_comes_back_on_its_function_call(case: str, client: str) -> None:
    """Gemini gets back its answer's parts as recorded, signature and all, less the thought summaries."""
    response, _ = signed_cases()[case]
    message, _ = unary_message(response)
    content = message["content"] if client == "as_received" else _sdk_content(SDKMessage.model_validate(message))
    expected = [p for p in response["candidates"][0]["content"]["parts"] if not p.get("thought")]
    assert next_turn(content)["contents"][1] == {"role": "model", "parts": expected}


def test_recorded_gemini_stream_signature_comes_back_through_the_sdk_accumulator() -> None:
    events, _ = streamed_events((SHARED / "wire" / "gemini" / SIGNED_STREAM).read_bytes())
    [part] = [p for c in recorded_chunks(SIGNED_STREAM) for p in c["candidates"][0]["content"]["parts"]
              if "functionCall" in p]
    assert next_turn(_sdk_content(_accumulate(events)))["contents"][1] == {"role": "model", "parts": [part]}


CLAUDE_SIGNATURE = next(json.loads(e.data)["delta"]["signature"] for e in SSEDecoder().feed(
    (ANTHROPIC / "docs-stream-thinking.sse").read_bytes()) if b"signature_delta" in e.data)


@pytest.mark.parametrize("thinking", ["I need today's date first.", ""], ids=["summarized", "display_omitted"])
def test_claude_signatures_never_reach_gemini(thinking: str) -> None:
    """A conversation begun on Claude keeps Claude's signed thinking before its tool_use, with empty text too
    (`display: "omitted"`); Gemini refuses a signature it did not make, so none is handed on: the call gets
    Google's stand-in instead, as any unsigned call of Gemini 3's current turn does."""
    assert CLAUDE_SIGNATURE.startswith("EqQBCgIYAhIM")
    content = [_thinking(thinking, CLAUDE_SIGNATURE), {"type": "tool_use", "id": "toolu_01", "name": "now",
                                                       "input": {}}]
    sent = next_turn(content)
    assert sent["contents"][1] == {"role": "model", "parts": [{"functionCall": {"name": "now", "args": {}},
                                                                "thoughtSignature": SKIP_SIGNATURE}]}
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": content}]}
    assert anthropic_inbound.chat_body(body)["messages"] == [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "toolu_01", "type": "function", "function": {"name": "now", "arguments": "{}"}}]}]


OURS = _thinking("", "gemini:CiIBVKhc")
CALL = {"type": "tool_use", "id": "call_1", "name": "now", "input": {}}
NOT_CARRIED = {
    "signature_not_a_string": [{**OURS, "signature": 42}, CALL],
    "signature_missing": [{"type": "thinking", "thinking": ""}, CALL],
    "signature_empty": [_thinking("", ""), CALL],
    "prefix_only": [_thinking("", "gemini:"), CALL],
    "prefix_not_first": [_thinking("", "x-gemini:CiIBVKhc"), CALL],
    "text_in_between": [OURS, {"type": "text", "text": "Checking."}, CALL],
    "redacted_in_between": [OURS, {"type": "redacted_thinking", "data": "EmwKAhgB"}, CALL],
    "after_the_call": [CALL, OURS],
}


@pytest.mark.parametrize("content", NOT_CARRIED.values(), ids=list(NOT_CARRIED))
def test_only_our_signature_directly_before_a_tool_use_is_carried(content: list[dict[str, Any]]) -> None:
    """Clients send back whatever they were given: anything else is dropped with the thinking, not refused."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": content}]}
    [message] = anthropic_inbound.chat_body(body)["messages"]
    assert message["tool_calls"] == [{"id": "call_1", "type": "function",
                                      "function": {"name": "now", "arguments": "{}"}}]


def test_each_call_gets_the_signature_of_the_block_just_before_it() -> None:
    content = [_thinking("", "gemini:c2lnMQ=="), CALL, {**CALL, "id": "call_2"}, _thinking("", "gemini:c2lnMw=="),
               {**CALL, "id": "call_3"}]
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": content}]}
    [message] = anthropic_inbound.chat_body(body)["messages"]
    assert [(call["id"], call.get("extra_content")) for call in message["tool_calls"]] == [
        ("call_1", {"google": {"thought_signature": "c2lnMQ=="}}), ("call_2", None),
        ("call_3", {"google": {"thought_signature": "c2lnMw=="}})]


def test_a_carried_signature_never_reaches_an_anthropic_upstream() -> None:
    """/v1/messages to an Anthropic model is a native pass-through, but chat built here may still meet
    providers.anthropic: it makes tool_use blocks of id, name and input only."""
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": [OURS, CALL]}]}
    chat = anthropic_inbound.chat_body(body)
    assert chat["messages"][1]["tool_calls"][0]["extra_content"] == {"google": {"thought_signature": "CiIBVKhc"}}
    assert forward(chat)["messages"][1] == {"role": "assistant", "content": [CALL]}


def test_the_native_route_sends_claude_none_of_our_thinking_blocks() -> None:
    """A conversation that moves from another model to Claude on the native route: Anthropic checks the
    signature of every thinking block it is sent, so the ones this module wrote (empty signature for a
    model's reasoning, "gemini:" for a Gemini signature) stay behind, Claude's own stay, and the client's
    body is not changed."""
    claude_own = _thinking("I need today's date first.", CLAUDE_SIGNATURE)
    reasoning = _thinking("Gemini thought about it.", "")
    history = [{"role": "user", "content": "How many days to New Year's Eve?"},
               {"role": "assistant", "content": [reasoning, OURS, CALL]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "2026-11-23"}]},
               {"role": "assistant", "content": [claude_own, {**CALL, "id": "toolu_02"}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_02", "content": "ok"}]}]
    body = {"model": "claude/x", "max_tokens": 50, "messages": history}
    before = json.dumps(body, sort_keys=True)
    sent = json.loads(NativeExchange("").build(body, TARGET, stream=False).body)
    assert sent["messages"][1] == {"role": "assistant", "content": [CALL]}
    assert sent["messages"][3] == history[3]  # Claude's own signed block goes back to Claude
    assert [sent["messages"][i] for i in (0, 2, 4)] == [history[i] for i in (0, 2, 4)]
    assert json.dumps(body, sort_keys=True) == before
