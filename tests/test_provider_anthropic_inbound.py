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
from harness import validate

from providers import anthropic, anthropic_inbound, openai
from providers.anthropic_inbound import MessageStream
from providers.framing import SSEDecoder
from providers.types import ChatRequest, ProviderError, Target, Usage

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
ANTHROPIC = SHARED / "wire" / "anthropic"
OPENAI = SHARED / "wire" / "openai"
TARGET = Target(provider="claude", base_url="https://api.anthropic.com", api_key="k", upstream_model="claude-x",
                public_model="claude/x")


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
    assert "top_k" not in chat and "thinking" not in chat and "service_tier" not in chat
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
    message = anthropic_inbound.message_from_chat(answer, usage, "oai/gpt-4o")
    call = answer["choices"][0]["message"]["tool_calls"][0]
    assert message["stop_reason"] == "tool_use" and message["role"] == "assistant" and message["model"] == "oai/gpt-4o"
    assert message["content"] == [{"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                                   "input": json.loads(call["function"]["arguments"])}]
    assert message["usage"] == {"input_tokens": 80, "output_tokens": 17, "cache_read_input_tokens": 2,
                                "cache_creation_input_tokens": 0}


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                               ("tool_calls", "tool_use"), ("content_filter", "refusal")])
def test_stop_reasons(finish: str, stop: str) -> None:
    assert anthropic_inbound.stop_reason(finish) == stop


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
    usage = anthropic.usage_from(original.usage.to_dict())
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
