"""providers.anthropic on Anthropic's recorded wire bytes, its output checked against OpenAI's schemas.

Expected values are read off the recordings by a naive parser here (and, for the streams, by hand in
`RECORDED`), never by the adapter's own code.
"""

from __future__ import annotations

import base64
import copy
import json
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from providers import anthropic
from providers.framing import SSEDecoder
from providers.types import ChatRequest, ProviderError, SSEEvent, Target, UpstreamHTTPError, Usage

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WIRE = SHARED / "wire" / "anthropic"
FINISH_MAP: dict[str, str] = json.loads((SHARED / "wire" / "finish-reason-map.json").read_text())["anthropic"]

TARGET = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="sk-ant-upstream",
                upstream_model="claude-haiku-4-5", public_model="anthropic/claude-haiku-4-5")


@cache
def validator(root: str) -> Draft202012Validator:
    bundle = json.loads((SHARED / "openai-schemas.json").read_text())
    return Draft202012Validator({"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{root}"})


def assert_valid(root: str, obj: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(root).iter_errors(obj)]
    assert not errors, errors


def wire_json(name: str) -> Any:
    return json.loads((WIRE / name).read_text())


def cassette(name: str) -> list[dict[str, Any]]:
    return list(wire_json(f"sdk-cassette-{name}.json"))


# -- streams ---------------------------------------------------------------------------------------

STREAMS: dict[str, bytes] = {p.stem: p.read_bytes() for p in sorted(WIRE.glob("*.sse")) if "error" not in p.stem}
for _i, _turn in enumerate(cassette("stream-tool-use"), 1):
    STREAMS[f"cassette-stream-tool-use-{_i}"] = _turn["response"]["body"].encode()

# Read by hand: (text, [(tool name, complete arguments JSON or None when cut off)], finish_reason,
# (prompt_tokens, completion_tokens) or None when the recording reports no usage)
RECORDED: dict[str, tuple[str, list[tuple[str, str | None]], str, tuple[int, int] | None]] = {
    "docs-stream-basic": ("Hello!", [], "stop", (25, 15)),
    "docs-stream-thinking": ("The greatest common divisor of 1071 and 462 is **21**.", [], "stop", None),
    "docs-stream-tool-use": ("Okay, let's check the weather for San Francisco, CA:",
                             [("get_weather", '{"location": "San Francisco, CA"}')], "tool_calls", (472, 89)),
    "sdk-stream-basic": ("Hello there!", [], "stop", (11, 6)),
    "sdk-stream-max-tokens-partial-json": (
        "I'll create a comprehensive tax guide for someone with multiple W2s and save it in a file called "
        "taxes.txt. Let me do that for you now.", [("make_file", None)], "length", (450, 124)),
    "sdk-stream-refusal": ("", [], "content_filter", (20, 0)),
    "sdk-stream-tool-use": ("I'll check the current weather in Paris for you.",
                            [("get_weather", '{"location": "Paris"}')], "tool_calls", (377, 65)),
    "cassette-stream-tool-use-1": ("", [("get_weather", '{"location": "San Francisco, CA", "units": "f"}')],
                                   "tool_calls", (656, 74)),
    "cassette-stream-tool-use-2": (
        "The weather in San Francisco, CA is currently:\n- **Temperature:** 68°F\n- **Condition:** Sunny\n\n"
        "It's a nice sunny day!", [], "stop", (770, 38)),
}


def naive_events(raw: bytes) -> list[tuple[str, Any]]:
    """(event name, data) per block of a recording; every recorded block is one event line + one data line."""
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if lines:
            assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: ")
            events.append((lines[0].removeprefix("event: "), json.loads(lines[1].removeprefix("data: "))))
    return events


def expected_of(raw: bytes) -> dict[str, Any]:
    """What the OpenAI side must add up to, read straight from the Anthropic events."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "tools": {}, "finish_reason": None, "usage": None}
    counts: dict[str, int] = {}
    for name, data in naive_events(raw):
        if name == "message_start":
            counts.update({k: v for k, v in data["message"].get("usage", {}).items() if isinstance(v, int)})
        elif name == "content_block_start" and data["content_block"]["type"] == "tool_use":
            block = data["content_block"]
            out["tools"][len(out["tools"])] = [block["id"], block["name"], ""]
            out.setdefault("block_to_tool", {})[data["index"]] = len(out["tools"]) - 1
        elif name == "content_block_delta":
            delta = data["delta"]
            if delta["type"] == "text_delta":
                out["content"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                out["reasoning"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                out["tools"][out["block_to_tool"][data["index"]]][2] += delta["partial_json"]
        elif name == "message_delta":
            out["finish_reason"] = FINISH_MAP[data["delta"]["stop_reason"]]
            counts.update({k: v for k, v in data.get("usage", {}).items() if isinstance(v, int)})
    out.pop("block_to_tool", None)
    if counts:
        prompt = counts["input_tokens"] + counts.get("cache_read_input_tokens", 0) + counts.get(
            "cache_creation_input_tokens", 0)
        out["usage"] = {"prompt_tokens": prompt, "completion_tokens": counts["output_tokens"],
                        "total_tokens": prompt + counts["output_tokens"],
                        "prompt_tokens_details": {"cached_tokens": counts.get("cache_read_input_tokens", 0),
                                                  "cache_write_tokens": counts.get("cache_creation_input_tokens", 0)}}
    return out


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The same sums over OpenAI chunks."""
    out: dict[str, Any] = {"content": "", "reasoning": "", "tools": {}, "finish_reason": None, "usage": None}
    for chunk in chunks:
        for choice in chunk["choices"]:
            delta = choice["delta"]
            out["content"] += delta.get("content") or ""
            out["reasoning"] += delta.get("reasoning_content") or ""
            for call in delta.get("tool_calls") or []:
                tool = out["tools"].setdefault(call["index"], [None, None, ""])
                tool[0] = call.get("id", tool[0])
                tool[1] = call["function"].get("name", tool[1])
                tool[2] += call["function"].get("arguments", "")
            out["finish_reason"] = choice["finish_reason"] or out["finish_reason"]
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
    return out


def translate(raw: bytes, chunk_size: int) -> tuple[list[dict[str, Any]], Any]:
    state = anthropic.new_stream_state(ChatRequest(body={}, stream=True), TARGET)
    decoder = SSEDecoder()
    out: list[dict[str, Any]] = []
    for i in range(0, len(raw), chunk_size):
        for event in decoder.feed(raw[i:i + chunk_size]):
            out.extend(anthropic.parse_stream_event(state, event))
    for event in decoder.flush():  # some recordings end without the final blank line
        out.extend(anthropic.parse_stream_event(state, event))
    return out, state


@pytest.mark.parametrize("name", list(STREAMS))
@pytest.mark.parametrize("chunk_size", [1 << 20, 7], ids=["whole", "every_7"])
def test_recorded_stream_translation(name: str, chunk_size: int) -> None:
    raw = STREAMS[name]
    expected = expected_of(raw)
    text, tools, finish_reason, usage = RECORDED[name]
    # the naive parse agrees with the hand-read values
    assert (expected["content"], expected["finish_reason"]) == (text, finish_reason)
    naive_tools = [(tool, json.loads(args) if hand_args else None)
                   for (_, tool, args), (_, hand_args) in zip(expected["tools"].values(), tools, strict=True)]
    assert naive_tools == [(tool, json.loads(args) if args else None) for tool, args in tools]
    naive_usage = expected["usage"] and (expected["usage"]["prompt_tokens"], expected["usage"]["completion_tokens"])
    assert naive_usage == usage

    chunks, state = translate(raw, chunk_size)

    message_id = naive_events(raw)[0][1]["message"]["id"]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert (chunk["model"], chunk["id"], chunk["object"]) == (
            "anthropic/claude-haiku-4-5", message_id, "chat.completion.chunk")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert aggregate(chunks) == expected
    finish_chunks = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finish_chunks) == 1 and finish_chunks[0]["choices"][0]["delta"] == {}
    assert (chunks[-1]["choices"] == []) == (usage is not None)  # the usage chunk comes last, once
    assert (state.done, state.finish_reason) == (True, finish_reason)
    prompt, completion = usage or (0, 0)
    assert (state.usage.prompt_tokens, state.usage.completion_tokens, state.usage.reported) == (
        prompt, completion, usage is not None)


@pytest.mark.parametrize("name", [n for n, case in RECORDED.items() if case[1]])
def test_openai_sdk_reassembles_tool_calls(name: str) -> None:
    """The official openai SDK's accumulator rebuilds the arguments JSON the upstream streamed."""
    chunks, _ = translate(STREAMS[name], 1 << 20)
    accumulator: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        accumulator.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = accumulator.current_completion_snapshot.choices[0].message
    sent = list(expected_of(STREAMS[name])["tools"].values())
    assert message.tool_calls is not None
    got = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls]
    assert [(i, n) for i, n, _ in got] == [(i, n) for i, n, _ in sent]
    for (_, _, args), (_, _, upstream), (_, recorded) in zip(got, sent, RECORDED[name][1], strict=True):
        assert args == upstream
        if recorded is not None:
            assert json.loads(args) == json.loads(recorded)
    assert (message.content or "") == RECORDED[name][0]


def new_state() -> Any:
    return anthropic.new_stream_state(ChatRequest(body={}, stream=True), TARGET)


def event(name: str, data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(data=orjson.dumps(data), event=name)


START = event("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x",
    "usage": {"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5,
              "output_tokens": 1}}})


def test_stream_cache_and_thinking_tokens() -> None:
    state = new_state()
    anthropic.parse_stream_event(state, START)
    anthropic.parse_stream_event(state, event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {
        "output_tokens": 40, "output_tokens_details": {"thinking_tokens": 30}}}))
    chunks = anthropic.parse_stream_event(state, event("message_stop", {}))
    assert state.usage == Usage(115, 40, cached_tokens=100, cache_write_tokens=5, reasoning_tokens=30, reported=True)
    assert chunks[-1]["usage"] == {"prompt_tokens": 115, "completion_tokens": 40, "total_tokens": 155,
                                   "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 5},
                                   "completion_tokens_details": {"reasoning_tokens": 30}}
    assert_valid("CreateChatCompletionStreamResponse", chunks[-1])


def test_stream_one_hour_cache_writes_are_counted_from_message_start() -> None:
    """The breakdown of writes by lifetime comes in message_start only; message_delta's cumulative counts (without
    it) do not erase it."""
    state = new_state()
    start = orjson.loads(START.data)
    start["message"]["usage"].update(cache_creation_input_tokens=300, cache_creation={
        "ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200})
    anthropic.parse_stream_event(state, event("message_start", start))
    anthropic.parse_stream_event(state, event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 300, "output_tokens": 40}}))
    chunks = anthropic.parse_stream_event(state, event("message_stop", {}))
    assert state.usage == Usage(410, 40, cached_tokens=100, cache_write_tokens=300, cache_write_1h_tokens=200,
                                reported=True)
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 300,
                                                            "cache_write_1h_tokens": 200}
    assert_valid("CreateChatCompletionStreamResponse", chunks[-1])


def test_web_searches_are_counted_from_the_last_usage() -> None:
    """Anthropic's web_search server tool is billed per search; message_delta's cumulative count is the one."""
    state = new_state()
    anthropic.parse_stream_event(state, START)
    anthropic.parse_stream_event(state, event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {
        "input_tokens": 9000, "output_tokens": 40, "server_tool_use": {"web_search_requests": 2,
                                                                      "web_fetch_requests": 1}}}))
    assert (state.usage.web_searches, state.usage.prompt_tokens) == (2, 9105)
    answer = {"id": "msg_s", "type": "message", "role": "assistant", "content": [{"type": "text", "text": "x"}],
              "stop_reason": "end_turn", "usage": {"input_tokens": 9000, "output_tokens": 40,
                                                   "server_tool_use": {"web_search_requests": 3}}}
    assert anthropic.parse_response(orjson.dumps(answer), TARGET).usage.web_searches == 3


def test_recorded_cache_creation_breakdown_of_zeros_is_no_one_hour_write() -> None:
    recorded = orjson.loads((WIRE / "sdk-messages-end-turn.response.json").read_bytes())
    assert recorded["usage"]["cache_creation"] == {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}
    result = anthropic.parse_response(orjson.dumps(recorded), TARGET)
    assert result.usage.cache_write_1h_tokens == 0
    assert "cache_write_1h_tokens" not in result.body["usage"]["prompt_tokens_details"]


STREAM_EVENT_CASES = {
    "ping": (SSEEvent(b'{"type": "ping"}', event="ping"), []),
    "unknown_event": (SSEEvent(b'{"type": "future_thing"}', event="future_thing"), []),
    "signature_delta": (event("content_block_delta", {"index": 0, "delta": {"type": "signature_delta",
                                                                           "signature": "abc"}}), []),
    "empty_partial_json": (event("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta",
                                                                              "partial_json": ""}}), []),
    "event_name_from_data_type": (SSEEvent(b'{"type":"content_block_delta","index":0,'
                                           b'"delta":{"type":"text_delta","text":"hi"}}'), [{"content": "hi"}]),
    "server_tool_use_block_ignored": (event("content_block_start", {"index": 0, "content_block": {
        "type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}}), []),
}


@pytest.mark.parametrize(("ev", "deltas"), STREAM_EVENT_CASES.values(), ids=list(STREAM_EVENT_CASES))
def test_stream_event_cases(ev: SSEEvent, deltas: list[dict[str, Any]]) -> None:
    state = new_state()
    anthropic.parse_stream_event(state, START)
    chunks = anthropic.parse_stream_event(state, ev)
    assert [c["choices"][0]["delta"] for c in chunks] == deltas
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert not state.done


def test_events_after_message_stop_are_ignored() -> None:
    state = new_state()
    anthropic.parse_stream_event(state, START)
    assert len(anthropic.parse_stream_event(state, event("message_stop", {}))) == 2
    assert anthropic.parse_stream_event(state, START) == []
    assert state.finish_reason == "stop"


STREAM_ERROR_CASES = {
    "docs_overloaded": ((WIRE / "docs-stream-error-event.sse").read_bytes(), 503, "Overloaded", "overloaded_error",
                        True),
    "api_error": (b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"Internal"}}\n\n',
                  502, "Internal", "api_error", True),
    "invalid_request": (b'event: error\ndata: {"type":"error","error":{"type":"invalid_request_error",'
                        b'"message":"bad"}}\n\n', 502, "bad", "invalid_request_error", False),
}


@pytest.mark.parametrize(("raw", "status", "message", "code", "retryable"), STREAM_ERROR_CASES.values(),
                         ids=list(STREAM_ERROR_CASES))
def test_stream_error_event_raises(raw: bytes, status: int, message: str, code: str, retryable: bool) -> None:
    with pytest.raises(UpstreamHTTPError) as info:
        translate(raw + b"\n\n", 1 << 20)
    err = info.value
    assert (err.status, err.message, err.code, err.type, err.retryable) == (status, message, code, code, retryable)


@pytest.mark.parametrize("data", [b"{not json", b"[1,2]"], ids=["bad_json", "array"])
def test_unreadable_stream_event(data: bytes) -> None:
    with pytest.raises(ProviderError):
        anthropic.parse_stream_event(new_state(), SSEEvent(data, event="content_block_delta"))


# -- non-streamed responses ------------------------------------------------------------------------

RESPONSES: dict[str, Any] = {
    "sdk-messages-end-turn": wire_json("sdk-messages-end-turn.response.json"),
    "sdk-messages-tool-use": wire_json("sdk-messages-tool-use.response.json"),
}
for _name in ("tool-use-roundtrip", "429-then-200", "400-invalid-tool-result"):
    for _i, _turn in enumerate(cassette(_name), 1):
        if _turn["response"]["status_code"] == 200:
            RESPONSES[f"cassette-{_name}-{_i}"] = _turn["response"]["body"]

THINKING = {
    "id": "msg_think", "type": "message", "role": "assistant", "model": "claude-opus-4-8", "stop_sequence": None,
    "content": [{"type": "thinking", "thinking": "1071 = 2 × 462 + 147...", "signature": "EqQB..."},
                {"type": "redacted_thinking", "data": "EmwKAhgB..."},
                {"type": "text", "text": "The GCD is "}, {"type": "text", "text": "**21**."}],
    "stop_reason": "max_tokens",
    "usage": {"input_tokens": 12, "cache_read_input_tokens": 2000, "cache_creation_input_tokens": 300,
              "output_tokens": 90, "output_tokens_details": {"thinking_tokens": 70}},
}
RESPONSES["synthetic-thinking-cache"] = THINKING
RESPONSES["synthetic-refusal"] = {"id": "msg_r", "type": "message", "role": "assistant", "content": [],
                                  "stop_reason": "refusal", "usage": {"input_tokens": 20, "output_tokens": 0}}
RESPONSES["synthetic-unknown-stop-no-usage"] = {"id": "msg_p", "type": "message", "content": [
    {"type": "text", "text": "..."}], "stop_reason": "pause_turn"}


@pytest.mark.parametrize("name", list(RESPONSES))
def test_parse_response(name: str) -> None:
    upstream = RESPONSES[name]
    original = copy.deepcopy(upstream)
    result = anthropic.parse_response(orjson.dumps(upstream), TARGET)
    body = result.body
    assert_valid("CreateChatCompletionResponse", body)
    assert (body["id"], body["object"], body["model"]) == (upstream["id"], "chat.completion",
                                                          "anthropic/claude-haiku-4-5")
    (choice,) = body["choices"]
    message = choice["message"]
    texts = [b["text"] for b in upstream["content"] if b["type"] == "text"]
    assert message["content"] == ("".join(texts) if texts else None)
    calls = [(b["id"], b["name"], b["input"]) for b in upstream["content"] if b["type"] == "tool_use"]
    got = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
           for c in message.get("tool_calls", [])]
    assert got == calls
    compact = [json.dumps(b["input"], separators=(",", ":"), ensure_ascii=False) for b in upstream["content"]
               if b["type"] == "tool_use"]
    assert [c["function"]["arguments"] for c in message.get("tool_calls", [])] == compact
    assert choice["finish_reason"] == FINISH_MAP.get(upstream["stop_reason"], "stop")
    usage = upstream.get("usage")
    if usage:
        read, write = usage.get("cache_read_input_tokens", 0), usage.get("cache_creation_input_tokens", 0)
        prompt = usage["input_tokens"] + read + write
        assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.cached_tokens,
                result.usage.cache_write_tokens, result.usage.reported) == (
            prompt, usage["output_tokens"], read, write, True)
        assert body["usage"]["total_tokens"] == prompt + usage["output_tokens"]
        assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == read
    else:
        assert result.usage == Usage() and "usage" not in body
    assert upstream == original


def test_parse_response_thinking_as_reasoning_content() -> None:
    result = anthropic.parse_response(orjson.dumps(THINKING), TARGET)
    message = result.body["choices"][0]["message"]
    assert message["reasoning_content"] == "1071 = 2 × 462 + 147..."
    assert message["content"] == "The GCD is **21**."
    assert result.usage == Usage(2312, 90, cached_tokens=2000, cache_write_tokens=300, reasoning_tokens=70,
                                 reported=True)
    assert result.body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 70}


@pytest.mark.parametrize("raw", [b"<html>502</html>", b"[]", b'{"id":"x"}', b'{"id":"x","content":{}}', b""],
                         ids=["not_json", "array", "no_content", "content_not_list", "empty"])
def test_parse_response_rejects(raw: bytes) -> None:
    with pytest.raises(ProviderError):
        anthropic.parse_response(raw, TARGET)


# -- errors ----------------------------------------------------------------------------------------

ERRORS = wire_json("errors.json")
ERROR_CASES: dict[str, tuple[int, Any]] = {
    "errors_json_529_overloaded": (529, ERRORS["examples"]["529_overloaded_http"]),
    "errors_json_429_rate_limit": (429, ERRORS["examples"]["429_rate_limit_real"]),
    "errors_json_400_invalid_request": (400, ERRORS["examples"]["400_invalid_request_real"]),
}
for _name in ("429-then-200", "400-invalid-tool-result"):
    for _i, _turn in enumerate(cassette(_name), 1):
        if _turn["response"]["status_code"] != 200:
            ERROR_CASES[f"cassette-{_name}-{_i}"] = (_turn["response"]["status_code"], _turn["response"]["body"])
for _status, _type in ERRORS["status_to_type"].items():
    ERROR_CASES[f"status_table_{_status}"] = (int(_status), {"type": "error", "error": {
        "type": _type, "message": f"{_type} happened"}, "request_id": "req_1"})


@pytest.mark.parametrize(("status", "body"), ERROR_CASES.values(), ids=list(ERROR_CASES))
def test_parse_error_anthropic_shape(status: int, body: Any) -> None:
    err = anthropic.parse_error(status, orjson.dumps(body))
    assert (err.status, err.message, err.type, err.code) == (
        status, body["error"]["message"], body["error"]["type"], body["error"]["type"])
    assert err.retryable == (status in (429, 500, 504, 529))


OTHER_ERROR_CASES = {
    "html_from_a_proxy": (502, b"<html><body>502 Bad Gateway</body></html>",
                          "<html><body>502 Bad Gateway</body></html>", "upstream_error", None, True),
    "empty_529": (529, b"", "HTTP 529", "upstream_error", None, True),
    "empty_503": (503, b"", "Service Unavailable", "upstream_error", None, True),
    "openai_shaped_404": (404, b'{"error":{"message":"no such model","type":"not_found_error"}}', "no such model",
                          "not_found_error", "not_found_error", False),
    "long_text_truncated": (500, b"x" * 2000, "x" * 500, "upstream_error", None, True),
}


@pytest.mark.parametrize(("status", "body", "message", "type_", "code", "retryable"),
                         OTHER_ERROR_CASES.values(), ids=list(OTHER_ERROR_CASES))
def test_parse_error_other_bodies(status: int, body: bytes, message: str, type_: str, code: str | None,
                                  retryable: bool) -> None:
    err = anthropic.parse_error(status, body)
    assert (err.status, err.message, err.type, err.code, err.retryable) == (status, message, type_, code, retryable)


# -- requests: recorded ----------------------------------------------------------------------------

WEATHER_TOOL = wire_json("sdk-messages-tool-use.request.json")["tools"][0]
OPENAI_WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "", "parameters": WEATHER_TOOL["input_schema"]}}
ASK = {"role": "user", "content": "What's the weather in SF in Celsius?"}
CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "toolu_013DU6hV4C1M8dJ32ybQFAFi", "type": "function",
     "function": {"name": "get_weather", "arguments": '{"location": "SF", "units": "c"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "toolu_013DU6hV4C1M8dJ32ybQFAFi",
          "content": '{"location": "SF", "temperature": "20\\u00b0C", "condition": "Sunny"}'}
STREAM_TURN_2 = cassette("stream-tool-use")[1]["request"]["body"]
STREAM_TOOL = STREAM_TURN_2["tools"][0]
ALL_PARAMS = wire_json("request-all-params.json")

RECORDED_REQUESTS: dict[str, tuple[str, dict[str, Any], bool, dict[str, Any]]] = {
    "sdk_messages_tool_use": ("claude-haiku-4-5", {
        "model": "anthropic/claude-haiku-4-5", "messages": [ASK], "tools": [OPENAI_WEATHER_TOOL],
        "max_tokens": 1024}, False, wire_json("sdk-messages-tool-use.request.json")),
    "sdk_messages_tool_result": ("claude-haiku-4-5", {
        "model": "anthropic/claude-haiku-4-5", "messages": [ASK, CALL, RESULT], "tools": [OPENAI_WEATHER_TOOL],
        "max_completion_tokens": 1024}, False, wire_json("sdk-messages-tool-result.request.json")),
    "cassette_stream_tool_result": ("claude-haiku-4-5", {
        "model": "anthropic/claude-haiku-4-5", "stream": True, "max_tokens": 1024, "messages": [
            {"role": "user", "content": "What is the weather in SF?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "toolu_018acGYLtfR52q9yDbWaEdQZ", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"location":"San Francisco, CA","units":"f"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_018acGYLtfR52q9yDbWaEdQZ",
             "content": STREAM_TURN_2["messages"][2]["content"][0]["content"]}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": STREAM_TOOL["description"],
                                                    "parameters": STREAM_TOOL["input_schema"]}}]},
        True, STREAM_TURN_2),
    "request_image_base64": ("claude-sonnet-4-5", {
        "model": "anthropic/claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Hello!"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo...<base64>"}}]}]},
        False, wire_json("request-image-base64.json")),
    "request_all_params": ("claude-opus-4-6", {
        "model": "anthropic/claude-opus-4-6", "max_tokens": 1024, "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Today's date is 2024-06-01.",
                                            "cache_control": {"type": "ephemeral", "ttl": "5m"}}]},
            {"role": "user", "content": "Hello, world"}],
        "user": "13803d75-b4b5-4c3e-b2a2-6f21399b021b", "stop": ["string"], "stream": False, "temperature": 1,
        "top_k": 5, "top_p": 0.7, "tool_choice": "auto", "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "name", **{
            k: v for k, v in ALL_PARAMS["tools"][0].items() if k == "description"},
            "parameters": ALL_PARAMS["tools"][0]["input_schema"]}}],
        # what Anthropic does not know is dropped (fields that ask for nothing included)
        "n": 1, "presence_penalty": 0.1, "frequency_penalty": 0.2, "logprobs": False, "top_logprobs": 0,
        "response_format": {"type": "text"}, "stream_options": {"include_usage": True}, "seed": 3},
        False, ALL_PARAMS),
}
UNMAPPED = ("_source", "_status", "service_tier", "thinking", "stream")  # recorded fields no OpenAI field maps to


def essential(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    """A recorded request without what an OpenAI request cannot say (the SDK's `caller` echo, tool `type`)."""
    out = {k: v for k, v in copy.deepcopy(body).items() if k not in UNMAPPED}
    for message in out["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else []:
            block.pop("caller", None)
    for tool in out.get("tools", []):
        tool.pop("type", None)
    return out | ({"stream": True} if stream else {})


@pytest.mark.parametrize(("model", "body", "stream", "recorded"), RECORDED_REQUESTS.values(),
                         ids=list(RECORDED_REQUESTS))
def test_build_request_reproduces_recorded_requests(model: str, body: dict[str, Any], stream: bool,
                                                    recorded: dict[str, Any]) -> None:
    target = Target(provider="anthropic", base_url="https://api.anthropic.com", api_key="k", upstream_model=model,
                    public_model=f"anthropic/{model}")
    original = copy.deepcopy(body)
    upstream = anthropic.build_request(ChatRequest(body=body, stream=stream), target)
    assert body == original  # the client's body is never mutated
    assert orjson.loads(upstream.body) == essential(recorded, stream)
    assert (upstream.method, upstream.url, upstream.stream) == ("POST", "https://api.anthropic.com/v1/messages",
                                                                stream)


# -- requests: translation rules -------------------------------------------------------------------

HI = {"role": "user", "content": "Hi"}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
ANTHROPIC_TOOLS = [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]
PNG = "data:image/png;base64,iVBORw0KGgo="

BUILD_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default_max_tokens_4096": ({"messages": [HI]}, {"max_tokens": 4096, "messages": [HI]}),
    "max_completion_tokens_wins": ({"messages": [HI], "max_tokens": 5, "max_completion_tokens": 7},
                                   {"max_tokens": 7, "messages": [HI]}),
    "system_and_developer_hoisted_in_order": (
        {"messages": [{"role": "system", "content": "A"}, HI, {"role": "developer", "content": "B"},
                      {"role": "system", "content": ""}]},
        {"system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}], "messages": [HI]}),
    "consecutive_same_role_merged": (
        {"messages": [HI, {"role": "user", "content": [{"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": "a"}, {"role": "assistant", "content": ""},
                      {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                   {"type": "text", "text": "there"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                        {"type": "text", "text": "b"}]}]}),
    "parallel_tool_results_and_next_user_share_one_turn": (
        {"messages": [HI, {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"x": [1]}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "one"},
            {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "two"}]},
            {"role": "user", "content": "thanks"}], "tools": TOOLS},
        {"messages": [HI, {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."}, {"type": "tool_use", "id": "c1", "name": "f", "input": {}},
            {"type": "tool_use", "id": "c2", "name": "f", "input": {"x": [1]}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "c2", "content": [{"type": "text", "text": "two"}]},
                {"type": "text", "text": "thanks"}]}], "tools": ANTHROPIC_TOOLS}),
    "image_https_url_and_detail_ignored": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "https://example.com/cat.jpg", "detail": "high"}}]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}]}),
    "image_data_uri_jpeg": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "data:image/jpeg;base64,/9j/4AAQ"}}]}]},
        {"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}]}]}),
    "tool_choice_none_keeps_tools": ({"messages": [HI], "tools": TOOLS, "tool_choice": "none"},
                                     {"messages": [HI], "tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "none"}}),
    "tool_choice_required_is_any": ({"messages": [HI], "tools": TOOLS, "tool_choice": "required"},
                                    {"messages": [HI], "tools": ANTHROPIC_TOOLS, "tool_choice": {"type": "any"}}),
    "tool_choice_named_function": (
        {"messages": [HI], "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "f"}},
         "parallel_tool_calls": False},
        {"messages": [HI], "tools": ANTHROPIC_TOOLS,
         "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True}}),
    "parallel_false_without_choice_is_auto": (
        {"messages": [HI], "tools": TOOLS, "parallel_tool_calls": False},
        {"messages": [HI], "tools": ANTHROPIC_TOOLS,
         "tool_choice": {"type": "auto", "disable_parallel_tool_use": True}}),
    "tool_choice_without_tools_dropped": ({"messages": [HI], "tool_choice": "auto", "parallel_tool_calls": False},
                                          {"messages": [HI]}),
    "stop_string_temperature_clamped_user": (
        {"messages": [HI], "stop": "END", "temperature": 1.7, "top_p": 0.9, "user": "u-1"},
        {"messages": [HI], "stop_sequences": ["END"], "temperature": 1, "top_p": 0.9,
         "metadata": {"user_id": "u-1"}}),
    "assistant_refusal_part_is_text": (
        {"messages": [HI, {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}]},
        {"messages": [HI, {"role": "assistant", "content": "No."}]}),
}


@pytest.mark.parametrize(("body", "expected"), BUILD_CASES.values(), ids=list(BUILD_CASES))
def test_build_request_rules(body: dict[str, Any], expected: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    upstream = anthropic.build_request(ChatRequest(body={"model": "anthropic/x", **body}, stream=False), TARGET)
    assert body == original
    assert orjson.loads(upstream.body) == {"model": "claude-haiku-4-5", "max_tokens": 4096, **expected}


def test_target_default_max_tokens_and_drop() -> None:
    target = Target(provider="anthropic", base_url="http://mirror", api_key="k", upstream_model="claude-opus-4-1",
                    public_model="anthropic/claude-opus-4-1", default_max_tokens=32000,
                    drop=("top_p", "max_tokens", "metadata", "messages"))
    body = {"model": "m", "messages": [HI], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "user": "u"}
    sent = orjson.loads(anthropic.build_request(ChatRequest(body=body, stream=False), target).body)
    # dropped before translation (client names) and after (Anthropic names); required fields stay
    assert sent == {"model": "claude-opus-4-1", "max_tokens": 5, "messages": [HI], "temperature": 0.5}
    del body["max_tokens"]
    sent = orjson.loads(anthropic.build_request(ChatRequest(body=body, stream=False), target).body)
    assert sent["max_tokens"] == 32000  # the model's max_output_tokens from the config


@pytest.mark.parametrize(("target", "stream", "expected"), [
    (TARGET, False, {"x-api-key": "sk-ant-upstream", "anthropic-version": "2023-06-01",
                     "content-type": "application/json", "accept": "application/json"}),
    (Target(provider="a", base_url="http://b", api_key="", upstream_model="m", public_model="a/m",
            headers=(("anthropic-beta", "context-1m-2025-08-07"),)), True,
     {"anthropic-version": "2023-06-01", "content-type": "application/json", "accept": "text/event-stream",
      "anthropic-beta": "context-1m-2025-08-07"}),
], ids=["key", "stream_extra_headers_no_key"])
def test_build_request_headers(target: Target, stream: bool, expected: dict[str, str]) -> None:
    upstream = anthropic.build_request(ChatRequest(body={"messages": [HI]}, stream=stream), target)
    assert upstream.headers == expected
    assert orjson.loads(upstream.body).get("stream") is (True if stream else None)


def call(arguments: str) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                 "function": {"name": "f", "arguments": arguments}}]}


BAD_REQUESTS = {
    "bad_tool_arguments_json": ({"messages": [HI, call("{not json")]}, "not valid JSON"),
    "tool_arguments_not_object": ({"messages": [HI, call("[1]")]}, "JSON object"),
    "unsupported_role": ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "role 'function'"),
    "audio_part": ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
                   "input_audio"),
    "image_in_system": ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": PNG}}]}]}, "only text"),
    "data_uri_not_base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}, "base64"),
    "file_url": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]}, "https"),
    "tool_without_call_id": ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
    "non_function_tool": ({"messages": [HI], "tools": [{"type": "custom", "custom": {"name": "x"}}]},
                          "function tools"),
    "bad_tool_choice": ({"messages": [HI], "tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    "allowed_tools_empty": ({"messages": [HI], "tools": TOOLS, "tool_choice": {
        "type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}}, "at least one tool"),
    "allowed_tools_custom_entry": ({"messages": [HI], "tools": TOOLS, "tool_choice": {
        "type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "custom", "custom": {
            "name": "x"}}]}}}, "each tool must be"),
    "allowed_tools_bad_mode": ({"messages": [HI], "tools": TOOLS, "tool_choice": {
        "type": "allowed_tools", "allowed_tools": {"mode": "none", "tools": [TOOLS[0]]}}}, "auto\" or \"required"),
    "messages_missing": ({}, "messages"),
}


@pytest.mark.parametrize(("body", "match"), BAD_REQUESTS.values(), ids=list(BAD_REQUESTS))
def test_build_request_rejects(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ProviderError, match=match):
        anthropic.build_request(ChatRequest(body=body, stream=False), TARGET)


# -- property: no content lost or reordered --------------------------------------------------------

texts = st.text(max_size=12)
names = st.text(alphabet="abcdefghij_", min_size=1, max_size=8)
# orjson (the gateway's JSON library) reads integers beyond 64 bits as floats: those are out of scope
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.none() | st.booleans() | ints | st.floats(allow_nan=False, allow_infinity=False) | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner),
                           max_leaves=6)
image_parts = st.builds(lambda media, raw: {"type": "image_url", "image_url": {
    "url": f"data:{media};base64,{base64.b64encode(raw).decode()}"}},
    st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"]), st.binary(min_size=1, max_size=9))
user_content = texts | st.lists(texts.map(lambda t: {"type": "text", "text": t}) | image_parts, max_size=3)


@st.composite
def tool_exchange(draw: st.DrawFn) -> list[dict[str, Any]]:
    """An assistant message with tool calls, then one tool message per call."""
    calls = draw(st.lists(st.tuples(names, st.dictionaries(texts, json_values, max_size=3), texts),
                          min_size=1, max_size=3))
    ids = [f"call_{draw(st.uuids()).hex}" for _ in calls]
    tool_calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                  for i, (n, a, _) in zip(ids, calls, strict=True)]
    return [{"role": "assistant", "content": draw(st.none() | texts), "tool_calls": tool_calls},
            *({"role": "tool", "tool_call_id": i, "content": r} for i, (_, _, r) in zip(ids, calls, strict=True))]


conversations = st.lists(
    st.builds(lambda r, t: [{"role": r, "content": t}], st.sampled_from(["system", "developer"]), texts)
    | user_content.map(lambda c: [{"role": "user", "content": c}])
    | texts.map(lambda t: [{"role": "assistant", "content": t}])
    | tool_exchange(), max_size=8).map(lambda units: [m for unit in units for m in unit])


def flatten_openai(messages: list[dict[str, Any]]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(system texts, [(role, kind, ...)]) of an OpenAI message list, empty texts left out."""
    system: list[str] = []
    items: list[tuple[Any, ...]] = []
    for m in messages:
        role, content = m["role"], m.get("content")
        if role == "tool":
            items.append(("user", "tool_result", m["tool_call_id"], content))
            continue
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if part["type"] == "image_url":
                media, data = part["image_url"]["url"].removeprefix("data:").split(";base64,")
                items.append((role, "image", media, data))
            elif part["text"] and role in ("system", "developer"):
                system.append(part["text"])
            elif part["text"]:
                items.append((role, "text", part["text"]))
        items.extend((role, "tool_use", c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                     for c in m.get("tool_calls", []))
    return system, items


def flatten_anthropic(body: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    system = [block["text"] for block in body.get("system", [])]
    items: list[tuple[Any, ...]] = []
    for m in body["messages"]:
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"])
        for b in blocks:
            if b["type"] == "text":
                items.append((m["role"], "text", b["text"]))
            elif b["type"] == "image":
                items.append((m["role"], "image", b["source"]["media_type"], b["source"]["data"]))
            elif b["type"] == "tool_use":
                items.append((m["role"], "tool_use", b["id"], b["name"], b["input"]))
            else:
                items.append((m["role"], "tool_result", b["tool_use_id"], b.get("content", "")))
    return system, items


@given(conversations)
def test_any_conversation_survives_translation(messages: list[dict[str, Any]]) -> None:
    body = orjson.loads(anthropic.build_request(ChatRequest(body={"messages": messages}, stream=False), TARGET).body)
    turns = body["messages"]
    assert all(a["role"] != b["role"] for a, b in pairwise(turns))  # user and assistant alternate
    assert all(t["role"] in ("user", "assistant") and t["content"] for t in turns)
    assert flatten_anthropic(body) == flatten_openai(messages)  # every text, image, call and result, in order
    blocks = [t["content"] if isinstance(t["content"], list) else [{"type": "text"}] for t in turns]
    for before, after in pairwise(blocks):  # each tool_result answers a tool_use of the turn right before it
        results = [b for b in after if b["type"] == "tool_result"]
        assert {b["tool_use_id"] for b in results} <= {b["id"] for b in before if b["type"] == "tool_use"}
        assert after[:len(results)] == results  # results come first in their turn
    assert not any(b["type"] == "tool_result" for b in (blocks[0] if blocks else []))
