"""providers.gemini on Google's recorded Gemini wire bytes, checked against OpenAI's schemas."""

from __future__ import annotations

import base64
import copy
import itertools
import json
import re
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from fakes.gemini_upstream import recorded_events
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessage

from providers import gemini, gemini_request
from providers.framing import SSEDecoder
from providers.types import (
    ChatRequest,
    ProviderError,
    SSEEvent,
    Target,
    Untranslatable,
    UpstreamHTTPError,
    Usage,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WIRE = SHARED / "wire" / "gemini"
UNARY = sorted(WIRE.glob("*/unary-*.json"))
UNARY_ANSWERS = [p for p in UNARY if "error" not in json.loads(p.read_text())]
UNARY_ERRORS = [p for p in UNARY if "error" in json.loads(p.read_text())]
STREAMS = sorted(WIRE.glob("*/streaming-*.txt"))
FINISH_MAP = json.loads((SHARED / "wire" / "finish-reason-map.json").read_text())["gemini_vertex"]

TARGET = Target(provider="google", base_url="https://generativelanguage.googleapis.com", api_key="AIza-upstream",
                upstream_model="gemini-2.5-flash", public_model="google/gemini-2.5-flash")


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


@cache
def validator(root: str) -> Draft202012Validator:
    bundle = json.loads((SHARED / "openai-schemas.json").read_text())
    return Draft202012Validator({"$schema": bundle["$schema"], "$defs": bundle["$defs"], "$ref": f"#/$defs/{root}"})


def assert_valid(root: str, obj: Any) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator(root).iter_errors(obj)]
    assert not errors, errors


# -- what a recording holds, read off it independently of the adapter --------------------------------


def recorded_parts(response: dict[str, Any]) -> list[dict[str, Any]]:
    candidates = response.get("candidates") or [{}]
    return candidates[0].get("content", {}).get("parts", [])


def expected_usage(meta: dict[str, Any] | None) -> Usage:
    """Tool-use prompt tokens are input, thoughts are output: the sum is Gemini's own totalTokenCount."""
    if meta is None:
        return Usage()
    usage = Usage(prompt_tokens=meta.get("promptTokenCount", 0) + meta.get("toolUsePromptTokenCount", 0),
                  completion_tokens=meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0),
                  cached_tokens=meta.get("cachedContentTokenCount", 0),
                  reasoning_tokens=meta.get("thoughtsTokenCount", 0), reported=True)
    assert usage.total_tokens == meta["totalTokenCount"]
    return usage


def extra_content(signature: str | None) -> dict[str, Any] | None:
    """What a tool call carries for a functionCall part with this thoughtSignature (None: no key at all)."""
    return None if signature is None else {"google": {"thought_signature": signature}}


def expected_answer(responses: list[dict[str, Any]]) -> dict[str, Any]:
    parts = [part for response in responses for part in recorded_parts(response)]
    texts = [p["text"] for p in parts if "text" in p and not p.get("thought")]
    thoughts = [p["text"] for p in parts if p.get("thought")]
    metas = [r["usageMetadata"] for r in responses if "usageMetadata" in r]
    return {"content": "".join(texts) if texts else None, "reasoning": "".join(thoughts) if thoughts else None,
            "calls": [(p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p],
            "extra": [extra_content(p.get("thoughtSignature")) for p in parts if "functionCall" in p],
            "usage": expected_usage(metas[-1] if metas else None)}


# finish_reason of every recorded answer, read by hand (Gemini says STOP for function calls too)
UNARY_FINISH = {
    "googleai/unary-failure-finish-reason-safety": "content_filter",  # SAFETY, with partial text
    "googleai/unary-failure-only-prompt-feedback": "content_filter",  # no candidates
    "googleai/unary-failure-with-message-no-content": "content_filter",  # OTHER, no content
    "googleai/unary-success-basic-reply-long": "stop",
    "googleai/unary-success-basic-reply-short": "stop",
    "googleai/unary-success-citations": "stop",
    "googleai/unary-success-code-execution": "stop",
    "googleai/unary-success-google-maps-grounding": "stop",
    "googleai/unary-success-google-search-grounding": "stop",
    "googleai/unary-success-google-search-grounding-empty-grounding-chunks": "stop",
    "googleai/unary-success-thinking-function-call-thought-summary-signature": "tool_calls",
    "googleai/unary-success-thinking-reply-thought-summary": "stop",
    "googleai/unary-success-url-context": "stop",
    "googleai/unary-success-url-context-mixed-validity": "stop",
    "vertexai/unary-failure-prompt-blocked-safety": "content_filter",
    "vertexai/unary-failure-prompt-blocked-safety-with-message": "content_filter",
    "vertexai/unary-success-function-call-mixed-content": "tool_calls",
    "vertexai/unary-success-function-call-no-arguments": "tool_calls",
    "vertexai/unary-success-function-call-parallel-calls": "tool_calls",
    "vertexai/unary-success-function-call-with-arguments": "tool_calls",
    "vertexai/unary-success-thinking-reply-thought-summary": "stop",
    "vertexai/unary-success-usage-metadata": "stop",
}
NOT_A_CHAT_ANSWER = {"vertexai/unary-success-detailed-token-response"}  # a countTokens body


def test_every_unary_recording_is_covered() -> None:
    assert {case_id(p) for p in UNARY_ANSWERS} == set(UNARY_FINISH) | NOT_A_CHAT_ANSWER


def test_finish_reason_table_matches_shared_map() -> None:
    for raw, mapped in FINISH_MAP.items():
        assert gemini._finish_reason(raw, False) == mapped
    assert gemini._finish_reason("FAKE_ENUM", False) == "stop"  # unknown values, as LiteLLM does


# -- non-streamed answers --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [p for p in UNARY_ANSWERS if case_id(p) in UNARY_FINISH],
                         ids=[case_id(p) for p in UNARY_ANSWERS if case_id(p) in UNARY_FINISH])
def test_parse_recorded_response(path: Path) -> None:
    raw = path.read_bytes()
    recorded = json.loads(raw)
    expected = expected_answer([recorded])
    result = gemini.parse_response(raw, TARGET)
    body = result.body
    assert_valid("CreateChatCompletionResponse", body)
    assert (body["object"], body["model"]) == ("chat.completion", "google/gemini-2.5-flash")
    assert body["id"].startswith("gen-")
    if "responseId" in recorded:
        assert body["id"] == f"gen-{recorded['responseId']}"
    [choice] = body["choices"]
    message = choice["message"]
    assert (message["content"], message.get("reasoning_content")) == (expected["content"], expected["reasoning"])
    calls = message.get("tool_calls", [])
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected["calls"]
    assert [c.get("extra_content") for c in calls] == expected["extra"]
    for call in calls:
        assert call["function"]["arguments"] == json.dumps(json.loads(call["function"]["arguments"]),
                                                           separators=(",", ":"))
        assert re.fullmatch(r"call_[0-9a-f]{24}", call["id"]) and call["type"] == "function"
    assert len({c["id"] for c in calls}) == len(calls)
    assert choice["finish_reason"] == UNARY_FINISH[case_id(path)]
    assert result.usage == expected["usage"]
    assert body.get("usage") == (gemini.usage_json(expected["usage"]) if expected["usage"].reported else None)
    if not recorded.get("candidates"):
        assert message["refusal"].startswith("Gemini blocked the prompt")


def test_blocked_prompt_names_the_reason() -> None:
    raw = (WIRE / "vertexai/unary-failure-prompt-blocked-safety-with-message.json").read_bytes()
    message = gemini.parse_response(raw, TARGET).body["choices"][0]["message"]
    assert (message["content"], message["refusal"]) == (None, "Gemini blocked the prompt (SAFETY): Reasons")


def test_count_tokens_body_is_not_an_answer() -> None:
    with pytest.raises(ProviderError, match="neither candidates nor promptFeedback"):
        gemini.parse_response((WIRE / "vertexai/unary-success-detailed-token-response.json").read_bytes(), TARGET)


@pytest.mark.parametrize("raw", [b"<html>502</html>", b"[]", b"", b'{"candidates": "x"}'],
                         ids=["not_json", "array", "empty", "candidates_not_list"])
def test_parse_response_rejects(raw: bytes) -> None:
    with pytest.raises(ProviderError):
        gemini.parse_response(raw, TARGET)


def test_error_object_in_a_200_answer() -> None:
    raw = (WIRE / "vertexai/unary-failure-quota-exceeded.json").read_bytes()
    with pytest.raises(UpstreamHTTPError) as info:
        gemini.parse_response(raw, TARGET)
    assert (info.value.status, info.value.code) == (502, "RESOURCE_EXHAUSTED")


# -- streams ---------------------------------------------------------------------------------------


def recorded_stream(path: Path) -> list[dict[str, Any]]:
    """The recording's data events up to the one that ends the answer (finishReason with usageMetadata, or a
    blocked prompt), else all of them: a finishReason without usage (Vertex AI's on every chunk) ends nothing."""
    chunks = []
    for event in recorded_events(str(path.relative_to(WIRE))):
        if event.startswith(b"data:"):
            chunks.append(json.loads(event.strip().removeprefix(b"data:")))
            finished = chunks[-1].get("candidates", [{}])[0].get("finishReason") and "usageMetadata" in chunks[-1]
            if finished or not chunks[-1].get("candidates"):
                break
    return chunks


# finish_reason and tool-call count of every recorded stream, read by hand; None: no finishReason
STREAM_EXPECTED: dict[str, tuple[str | None, int]] = {
    "googleai/streaming-failure-image-rejected": (None, 0),  # an error body, no events: raised (below)
    "googleai/streaming-failure-prompt-blocked-safety": ("content_filter", 0),
    "googleai/streaming-failure-recitation-no-content": ("content_filter", 0),
    "googleai/streaming-success-basic-reply-long": ("stop", 0),
    "googleai/streaming-success-basic-reply-short": ("stop", 0),
    "googleai/streaming-success-citations": ("stop", 0),
    "googleai/streaming-success-code-execution": ("stop", 0),
    "googleai/streaming-success-empty-parts": ("stop", 0),
    "googleai/streaming-success-finish-message": ("stop", 0),
    "googleai/streaming-success-no-content-parts": ("stop", 0),
    "googleai/streaming-success-thinking-function-call-thought-summary-signature": ("tool_calls", 1),
    "googleai/streaming-success-thinking-reply-thought-summary": ("stop", 0),
    "googleai/streaming-success-url-context": ("stop", 0),
    # these Vertex mocks put STOP on every chunk, without usage: the answer ends at the body's end, with the last
    # reason (FAKE_ENUM, "stop"), or in the error body that follows the chunks (raised, below)
    "vertexai/streaming-failure-error-mid-stream": (None, 0),
    "vertexai/streaming-failure-finish-reason-safety": ("content_filter", 0),
    "vertexai/streaming-failure-unknown-finish-enum": ("stop", 0),
    "vertexai/streaming-success-function-call-short": ("tool_calls", 1),
}


# the recordings whose body ends in an error (unframed): (status, code) raised once the chunks before it are out
STREAM_ERRORS = {"googleai/streaming-failure-image-rejected": (400, "INVALID_ARGUMENT"),
                 "vertexai/streaming-failure-error-mid-stream": (502, "CANCELLED")}  # code 499 is no HTTP status


def translate_stream(raw: bytes, chunk_size: int,
                     out: list[dict[str, Any]] | None = None) -> tuple[list[dict[str, Any]], Any]:
    """The chunks of a body read `chunk_size` bytes at a time, the body's end included, as the gateway reads
    it (`out`: where they go, to see them when an error is raised)."""
    state = gemini.new_stream_state(ChatRequest(body={"model": "m", "messages": []}, stream=True), TARGET)
    decoder = SSEDecoder()
    out = [] if out is None else out
    pieces = [decoder.feed(raw[i:i + chunk_size]) for i in range(0, len(raw), chunk_size)]
    for event in [e for events in pieces for e in events] + decoder.flush():
        out.extend(gemini.parse_stream_event(state, event))
    out.extend(gemini.parse_stream_end(state))
    return out, state


def aggregate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"content": None, "reasoning": None, "calls": {}, "finish": [], "usage": []}
    for chunk in chunks:
        if chunk.get("usage"):
            out["usage"].append(chunk["usage"])
        for choice in chunk["choices"]:
            delta = choice["delta"]
            for key, name in (("content", "content"), ("reasoning_content", "reasoning")):
                if delta.get(key) is not None:
                    out[name] = (out[name] or "") + delta[key]
            for call in delta.get("tool_calls") or []:
                assert call["index"] not in out["calls"]  # each call arrives whole, once
                out["calls"][call["index"]] = call
            if choice["finish_reason"]:
                out["finish"].append(choice["finish_reason"])
    return out


def test_every_stream_recording_is_covered() -> None:
    assert {case_id(p) for p in STREAMS} == set(STREAM_EXPECTED)


@pytest.mark.parametrize("path", STREAMS, ids=[case_id(p) for p in STREAMS])
@pytest.mark.parametrize("chunk_size", [1 << 20, 7], ids=["whole", "every_7"])
def test_recorded_stream_translation(path: Path, chunk_size: int) -> None:
    finish_reason, call_count = STREAM_EXPECTED[case_id(path)]
    expected = expected_answer(recorded_stream(path))
    if case_id(path) in STREAM_ERRORS:  # an unframed error body after the chunks (if any): every chunk, the error
        chunks: list[dict[str, Any]] = []
        with pytest.raises(UpstreamHTTPError) as info:
            translate_stream(path.read_bytes(), chunk_size, chunks)
        assert (info.value.status, info.value.code) == STREAM_ERRORS[case_id(path)]
        got = aggregate(chunks)
        assert (got["content"], got["finish"], got["usage"]) == (expected["content"], [], [])
        return
    chunks, state = translate_stream(path.read_bytes(), chunk_size)
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert (chunk["id"], chunk["model"], chunk["created"]) == (state.response_id, TARGET.public_model,
                                                                    state.created)
    got = aggregate(chunks)
    assert (got["content"], got["reasoning"]) == (expected["content"], expected["reasoning"])
    calls = [got["calls"][i] for i in sorted(got["calls"])]
    assert sorted(got["calls"]) == list(range(call_count))
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == expected["calls"]
    assert [c.get("extra_content") for c in calls] == expected["extra"]
    assert (state.finish_reason, state.done) == (finish_reason, finish_reason is not None)
    assert got["finish"] == ([finish_reason] if finish_reason else [])
    assert state.usage == expected["usage"]
    reported = expected["usage"].reported and finish_reason is not None
    assert got["usage"] == ([gemini.usage_json(expected["usage"])] if reported else [])
    if chunks:
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert all("role" not in c["delta"] for chunk in chunks[1:] for c in chunk["choices"])
    if finish_reason:
        assert chunks[-1 if not reported else -2]["choices"][0]["delta"] in ({}, {"role": "assistant"})


@pytest.mark.parametrize("path", [p for p in STREAMS if STREAM_EXPECTED[case_id(p)][0]],
                         ids=[case_id(p) for p in STREAMS if STREAM_EXPECTED[case_id(p)][0]])
def test_openai_sdk_reassembles_stream(path: Path) -> None:
    """The official SDK's own accumulator rebuilds the answer, tool-call arguments as Gemini sent them."""
    chunks, _ = translate_stream(path.read_bytes(), 1 << 20)
    sdk = ChatCompletionStreamState()
    for chunk in chunks:
        sdk.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    completion = sdk.current_completion_snapshot
    expected = expected_answer(recorded_stream(path))
    message = completion.choices[0].message
    assert message.content == expected["content"]
    calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert calls == [(name, json.dumps(args, separators=(",", ":"))) for name, args in expected["calls"]]
    assert completion.choices[0].finish_reason == STREAM_EXPECTED[case_id(path)][0]


def test_short_stream_by_hand() -> None:
    chunks, state = translate_stream((WIRE / "googleai/streaming-success-basic-reply-short.txt").read_bytes(), 99)
    assert [c["choices"][0]["delta"] if c["choices"] else c["usage"]["total_tokens"] for c in chunks] == [
        {"role": "assistant", "content": "The"}, {"content": " capital of Wyoming"},
        {"content": " is **Cheyenne**.\n"}, {}, 17]
    assert state.usage == Usage(prompt_tokens=7, completion_tokens=10, reported=True)


def new_state() -> Any:
    return gemini.new_stream_state(ChatRequest(body={}, stream=True), TARGET)


def call_chunk(name: str, args: dict[str, Any], finish: str | None = None, signature: str | None = None) -> SSEEvent:
    part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
    if signature is not None:
        part["thoughtSignature"] = signature
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}}
    if finish:
        candidate["finishReason"] = finish
    return SSEEvent(orjson.dumps({"candidates": [candidate]}))


def test_stream_tool_calls_count_across_chunks() -> None:
    state = new_state()
    chunks = gemini.parse_stream_event(state, call_chunk("a", {"x": 1}))
    chunks += gemini.parse_stream_event(state, call_chunk("b", {}, "STOP"))
    chunks += gemini.parse_stream_end(state)  # STOP without usage: the answer ends with the body
    calls = [call for c in chunks for choice in c["choices"] for call in choice["delta"].get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "a", '{"x":1}'), (1, "b", "{}")]
    assert calls[0]["id"] != calls[1]["id"]
    assert (state.finish_reason, state.done) == ("tool_calls", True)
    assert gemini.parse_stream_event(state, call_chunk("c", {})) == []  # after the end nothing more


def test_stream_unknown_finish_enum_and_no_usage() -> None:
    state = new_state()
    event = SSEEvent(b'{"candidates":[{"content":{"parts":[{"text":"x"}]},"finishReason":"NEW_REASON"}]}')
    chunks = gemini.parse_stream_event(state, event) + gemini.parse_stream_end(state)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]  # no usage chunk: none reported


def text_chunk(text: str, finish: str, usage: dict[str, int] | None = None) -> SSEEvent:
    data: dict[str, Any] = {"candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": finish}]}
    if usage is not None:
        data["usageMetadata"] = usage
    return SSEEvent(orjson.dumps(data))


def test_a_finish_reason_on_every_chunk_ends_the_answer_at_the_body_end_with_the_last() -> None:
    """Vertex AI's recorded streams put finishReason on every chunk and report no usage: the first chunk's did
    not end the answer (its text alone was relayed, as complete); the last reason seen ends it, once."""
    state = new_state()
    chunks = [c for text, finish in (("a", "STOP"), ("b", "STOP"), ("c", "SAFETY"))
              for c in gemini.parse_stream_event(state, text_chunk(text, finish))]
    assert not state.done and state.finish_reason is None  # cut here, the stream is cut, not finished
    chunks += gemini.parse_stream_end(state)
    assert [(c["choices"][0]["delta"].get("content"), c["choices"][0]["finish_reason"]) for c in chunks] == [
        ("a", None), ("b", None), ("c", None), (None, "content_filter")]
    assert (state.finish_reason, state.done) == ("content_filter", True)
    assert gemini.parse_stream_end(state) == []


def test_a_finish_reason_with_the_usage_ends_the_answer_at_once() -> None:
    """The Developer API's last chunk: finishReason and the final usage; nothing after it is relayed."""
    state = new_state()
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 2, "totalTokenCount": 5}
    chunks = gemini.parse_stream_event(state, text_chunk("a", "STOP"))
    chunks += gemini.parse_stream_event(state, text_chunk("b", "MAX_TOKENS", usage))
    assert state.done and state.finish_reason == "length"
    assert gemini.parse_stream_event(state, text_chunk("c", "STOP")) + gemini.parse_stream_end(state) == []
    assert [c["choices"][0]["finish_reason"] if c["choices"] else c["usage"]["total_tokens"] for c in chunks] == [
        None, None, "length", 5]


def test_stream_blocked_prompt_is_a_refusal() -> None:
    chunks, state = translate_stream((WIRE / "googleai/streaming-failure-prompt-blocked-safety.txt").read_bytes(), 50)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "refusal": "Gemini blocked the prompt (SAFETY)"}, {}]
    assert state.finish_reason == "content_filter"


MID_STREAM_ERROR = (WIRE / "vertexai/streaming-failure-error-mid-stream.txt").read_bytes()
RECORDED_ERROR = MID_STREAM_ERROR[MID_STREAM_ERROR.index(b"\n{") + 1:]  # the bare error object after the events


@pytest.mark.parametrize(("data", "status", "code", "retryable"), [
    (RECORDED_ERROR, 502, "CANCELLED", True),  # code 499 is no HTTP status
    (b'{"error":{"code":500,"message":"An internal error has occurred.","status":"INTERNAL"}}',
     500, "INTERNAL", True),
    (b'{"error":{"code":429,"message":"Resource exhausted.","status":"RESOURCE_EXHAUSTED"}}',
     429, "RESOURCE_EXHAUSTED", True),
    (b'{"error":{"code":400,"message":"Request contains an invalid argument.","status":"INVALID_ARGUMENT"}}',
     400, "INVALID_ARGUMENT", False),
    (b'{"error":"overloaded"}', 502, None, True),
], ids=["recorded_cancelled", "internal", "resource_exhausted", "invalid_argument", "bare_string"])
def test_error_event_in_stream_raises(data: bytes, status: int, code: str | None, retryable: bool) -> None:
    state = new_state()
    gemini.parse_stream_event(state, SSEEvent(b'{"candidates":[{"content":{"parts":[{"text":"First "}]}}]}'))
    with pytest.raises(UpstreamHTTPError) as info:
        gemini.parse_stream_event(state, SSEEvent(data))
    err = info.value
    assert (err.status, err.code, err.retryable) == (status, code, retryable)
    error = json.loads(data)["error"]
    assert err.message == (error["message"] if isinstance(error, dict) else error)


@pytest.mark.parametrize("data", [b"{not json", b"[1]", b'"text"'], ids=["bad_json", "array", "string"])
def test_unreadable_stream_chunk(data: bytes) -> None:
    with pytest.raises(ProviderError):
        gemini.parse_stream_event(new_state(), SSEEvent(data))


def test_chunks_without_candidates_or_content_emit_nothing() -> None:
    state = new_state()
    assert gemini.parse_stream_event(state, SSEEvent(b'{"usageMetadata":{"promptTokenCount":3,"totalTokenCount":3}}'))\
        == []
    assert gemini.parse_stream_event(state, SSEEvent(b'{"candidates":[{"content":{"role":"model"}}]}')) == []
    assert gemini.parse_stream_event(state, SSEEvent(b"")) == []
    assert state.usage == Usage(prompt_tokens=3, reported=True) and not state.done


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", UNARY_ERRORS, ids=[case_id(p) for p in UNARY_ERRORS])
def test_parse_recorded_error(path: Path) -> None:
    raw = path.read_bytes()
    error = json.loads(raw)["error"]
    err = gemini.parse_error(error["code"], raw)
    assert (err.status, err.message, err.code) == (error["code"], error["message"], error["status"])
    assert err.retryable == (error["code"] == 429)
    assert err.type == {400: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
                        429: "rate_limit_error"}[error["code"]]
    assert "key1234" not in err.message  # the DebugInfo detail (with the key) stays behind


def test_expected_error_recordings() -> None:
    assert {case_id(p) for p in UNARY_ERRORS} == {
        "googleai/unary-failure-api-key", "googleai/unary-failure-generativelanguage-api-not-enabled",
        "googleai/unary-failure-unknown-model", "vertexai/unary-failure-model-not-found",
        "vertexai/unary-failure-quota-exceeded"}


OTHER_ERRORS = {
    "stream_request_rejected": (400, (WIRE / "googleai/streaming-failure-image-rejected.txt").read_bytes(),
                                "Request contains an invalid argument.", "INVALID_ARGUMENT", False),
    "array_wrapped": (503, b'[{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}]',
                      "The model is overloaded.", "UNAVAILABLE", True),
    "html": (502, b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>", None, True),
    "empty": (500, b"", "Internal Server Error", None, True),
    "unknown_status_empty": (529, b"", "HTTP 529", None, True),
    "no_message": (401, b'{"error":{"code":401,"status":"UNAUTHENTICATED"}}', "Unauthorized", "UNAUTHENTICATED",
                   False),
}


@pytest.mark.parametrize(("status", "body", "message", "code", "retryable"), OTHER_ERRORS.values(),
                         ids=list(OTHER_ERRORS))
def test_parse_error_other_bodies(status: int, body: bytes, message: str, code: str | None, retryable: bool) -> None:
    err = gemini.parse_error(status, body)
    assert (err.status, err.message, err.code, err.retryable) == (status, message, code, retryable)


def retry_info_body(*details: Any) -> bytes:
    return orjson.dumps({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED",
                                   "details": list(details)}})


@pytest.mark.parametrize(("details", "retry_after"), [
    ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "38s"}], "38"),
    ([{"@type": "type.googleapis.com/google.rpc.Help", "links": []},
      {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "45.837906927s"}], "46"),
    ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}], "0"),
    ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "-3s"}], None),
    ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": 38}], None),
    ([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}], None),
    (["RetryInfo"], None),
    ([], None),
], ids=["whole", "fractional_after_help", "zero", "negative", "not_a_string", "garbage", "detail_not_object", "none"])
def test_retry_info_becomes_retry_after(details: list[Any], retry_after: str | None) -> None:
    """Gemini's 429 states its wait in a google.rpc.RetryInfo detail, not in a Retry-After header."""
    err = gemini.parse_error(429, retry_info_body(*details))
    assert (err.status, err.code, err.retryable, err.retry_after) == (429, "RESOURCE_EXHAUSTED", True, retry_after)


def test_parse_error_truncates_text() -> None:
    assert gemini.parse_error(500, b"x" * 2000).message == "x" * 500


# -- requests against the official REST samples ----------------------------------------------------


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.title() for word in rest)


def normalize(sample: Any, key: str = "", listed: bool = False) -> Any:
    """The REST samples' shorthand spelled out: camelCase names, lists for repeated fields, role user
    where omitted, upper-case enum values."""
    if isinstance(sample, dict):
        out = {camel(k): normalize(v, camel(k)) for k, v in sample.items() if not k.startswith("_")}
        if key == "contents" and "role" not in out:
            out["role"] = "user"
        if key == "functionCallingConfig":
            out["mode"] = out["mode"].upper()
        return [out] if key in ("contents", "parts") and not listed else out
    if isinstance(sample, list):
        return [normalize(item, key, listed=True) for item in sample]
    return sample


def sample(name: str) -> dict[str, Any]:
    return normalize(json.loads((WIRE / "requests" / f"generateContent-{name}.json").read_text()))


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def function_tool(name: str, description: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": description}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


LIGHTS = sample("function-calling")["tools"][0]["functionDeclarations"]
SAMPLE_CASES: dict[str, dict[str, Any]] = {
    "chat-multiturn": {"messages": [
        user("Hello"), {"role": "assistant", "content": "Great to meet you. What would you like to know?"},
        user("I have two dogs in my house. How many paws are in my house?")]},
    "function-calling": {
        "messages": [{"role": "system", "content": sample("function-calling")["systemInstruction"]["parts"][0]["text"]},
                     user("Turn on the lights please.")],
        "tools": [function_tool("enable_lights", "Turn on the lighting system.",
                                {"type": "object", "properties": {}}),
                  function_tool(LIGHTS[1]["name"], LIGHTS[1]["description"], LIGHTS[1]["parameters"]),
                  function_tool("stop_lights", "Turn off the lighting system.")],
        "tool_choice": "auto"},
    "generation-config": {"messages": [user("Explain how AI works")], "stop": ["Title"], "temperature": 1.0,
                          "max_tokens": 800, "top_p": 0.8, "top_k": 10},
    "inline-image": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Tell me about this instrument"},
        {"type": "image_url",
         "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg...<base64>", "detail": "auto"}},
    ]}]},
    "safety-settings": {"messages": [user(sample("safety-settings")["contents"][0]["parts"][0]["text"])]},
    "system-instruction": {"messages": [{"role": "system", "content": "You are a cat. Your name is Neko."},
                                        user("Hello there")]},
}


@pytest.mark.parametrize("name", list(SAMPLE_CASES), ids=list(SAMPLE_CASES))
def test_request_matches_official_sample(name: str) -> None:
    body = {"model": "google/gemini-2.0-flash", **SAMPLE_CASES[name]}
    original = copy.deepcopy(body)
    upstream = gemini.build_request(ChatRequest(body=body, stream=False), TARGET)
    assert body == original
    expected = sample(name)
    expected.pop("safetySettings", None)  # no OpenAI parameter says this
    assert orjson.loads(upstream.body) == expected


def test_sample_comparison_is_exhaustive() -> None:
    assert {p.stem.removeprefix("generateContent-") for p in (WIRE / "requests").glob("*.json")} == set(SAMPLE_CASES)


# -- requests: the other translations --------------------------------------------------------------

CALLS = [{"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
         {"id": "call_b", "type": "function", "function": {"name": "now", "arguments": ""}}]
STRICT_TOOL = function_tool("lookup", "Look up.", {"type": "object", "properties": {"q": {"type": ["string", "null"]}},
                                                   "required": ["q"], "additionalProperties": False})
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
PNG = "iVBORw0KGgo="

BUILD_CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tool_round_trip": ({"messages": [
        user("Weather in Paris, and the time?"), {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
        {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'}, user("Thanks!")]},
        {"contents": [
            {"role": "user", "parts": [{"text": "Weather in Paris, and the time?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                        {"functionCall": {"name": "now", "args": {}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "now", "response": {"content": "12:00"}}},
                                       {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                                       {"text": "Thanks!"}]}]}),
    "merge_roles_developer_and_empty_text": ({"messages": [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]}, user("a"), user(""),
        {"role": "user", "content": [{"type": "text", "text": "b"}]}, {"role": "system", "content": "Late rule."},
        {"role": "assistant", "content": [{"type": "text", "text": "c"}, {"type": "refusal", "refusal": "d"}]},
        {"role": "assistant", "content": ""}]},
        {"contents": [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
                      {"role": "model", "parts": [{"text": "c"}, {"text": "d"}]}],
         "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Late rule."}]}}),
    "audio_and_file": ({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}]}]},
        {"contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}}]}]}),
    "tool_images_follow_all_function_responses": ({"messages": [
        user("Screenshots?"), {"role": "assistant", "content": None, "tool_calls": CALLS},
        {"role": "tool", "tool_call_id": "call_a", "content": [
            {"type": "text", "text": "two shots"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/"}}]},
        {"role": "tool", "tool_call_id": "call_b", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}}]},
        user("Compare them.")]},
        {"contents": [
            {"role": "user", "parts": [{"text": "Screenshots?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                                        {"functionCall": {"name": "now", "args": {}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {
                    "content": "two shots\n[2 image(s) follow the tool results]"}}},
                {"functionResponse": {"name": "now", "response": {"content": "[1 image(s) follow the tool results]"}}},
                {"text": "[Image(s) of the result of tool call call_a]"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/"}},
                {"text": "[Image(s) of the result of tool call call_b]"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"text": "Compare them."}]}]}),
    "tool_image_last_message_and_json_result": ({"messages": [
        {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_a", "content": [
            {"type": "text", "text": '{"temp": 21}'},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]},
        {"contents": [
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"text": "[Image(s) of the result of tool call call_a]"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}}]}]}),
    "strict_tool_named_choice": ({"messages": [user("q")], "tools": [STRICT_TOOL],
                                  "tool_choice": {"type": "function", "function": {"name": "lookup"}}},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}],
         "tools": [{"functionDeclarations": [{"name": "lookup", "description": "Look up.",
                                              "parametersJsonSchema": STRICT_TOOL["function"]["parameters"]}]}],
         "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["lookup"]}}}),
    "tool_choice_required_with_tools": ({"messages": [user("q")], "tools": [STRICT_TOOL], "tool_choice": "required"},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}],
         "tools": [{"functionDeclarations": [{"name": "lookup", "description": "Look up.",
                                              "parametersJsonSchema": STRICT_TOOL["function"]["parameters"]}]}],
         "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}}),
    "tool_choice_without_tools_sends_no_tool_config": ({"messages": [user("q")], "tool_choice": "required"},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}),
    "tool_choice_with_empty_tools_sends_no_tool_config": ({"messages": [user("q")], "tools": [],
                                                          "tool_choice": {"type": "function",
                                                                          "function": {"name": "lookup"}}},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}),
    "response_format_text_asks_for_nothing": ({"messages": [user("q")], "response_format": {"type": "text"}},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}),
    "generation_config": ({"messages": [user("q")], "max_tokens": 5, "max_completion_tokens": 9, "stop": "END",
                           "seed": 7, "n": 1, "response_format": {"type": "json_object"}, "temperature": None,
                           "user": "u1", "stream_options": {"include_usage": True}, "parallel_tool_calls": False,
                           "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "store": False},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}],
         "generationConfig": {"maxOutputTokens": 9, "seed": 7, "stopSequences": ["END"],
                              "responseMimeType": "application/json"}}),
    "json_schema_subset": ({"messages": [user("q")], "response_format": {
        "type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}],
         "generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}}),
    "json_schema_strict": ({"messages": [user("q")], "response_format": {
        "type": "json_schema", "json_schema": {"name": "a", "strict": True,
                                               "schema": {**SCHEMA, "additionalProperties": False}}}},
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}],
         "generationConfig": {"responseMimeType": "application/json",
                              "responseJsonSchema": {**SCHEMA, "additionalProperties": False}}}),
}


@pytest.mark.parametrize(("body", "expected"), BUILD_CASES.values(), ids=list(BUILD_CASES))
def test_build_request_body(body: dict[str, Any], expected: dict[str, Any]) -> None:
    original = copy.deepcopy(body)
    upstream = gemini.build_request(ChatRequest(body=body, stream=False), TARGET)
    assert body == original
    assert orjson.loads(upstream.body) == expected


# Gemini's typed `Schema.enum` is a list of strings: an enum of numbers, booleans or null (a pydantic
# `Literal[1, 2, 4]`, an `Optional[Literal[...]]`) sent there is refused with a 400 ("Invalid value at
# 'tools.function_declarations[0].parameters.properties[0].value.enum[0]' (TYPE_STRING), 2"); the JSON Schema
# fields (`parametersJsonSchema` / `responseJsonSchema`) take such enums as they are.
NON_STRING_ENUMS = {
    "integers": {"type": "object", "properties": {"size": {"type": "integer", "enum": [1, 2, 4]}}},
    "nullable_strings": {"type": "object", "properties": {"unit": {"type": "string", "nullable": True,
                                                                   "enum": ["c", "f", None]}}},
    "booleans_in_items": {"type": "object", "properties": {"flags": {"type": "array", "items": {
        "type": "boolean", "enum": [True]}}}},
}


@pytest.mark.parametrize("schema", NON_STRING_ENUMS.values(), ids=list(NON_STRING_ENUMS))
def test_non_string_enums_go_as_json_schema(schema: dict[str, Any]) -> None:
    body = {"messages": [user("q")], "tools": [function_tool("pick", "Pick one.", schema)],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}}
    sent = orjson.loads(gemini.build_request(ChatRequest(body=body, stream=False), TARGET).body)
    assert sent["tools"] == [{"functionDeclarations": [{"name": "pick", "description": "Pick one.",
                                                        "parametersJsonSchema": schema}]}]
    assert sent["generationConfig"] == {"responseMimeType": "application/json", "responseJsonSchema": schema}


def test_string_enums_stay_in_gemini_schema() -> None:
    schema = {"type": "object", "properties": {"unit": {"type": "string", "format": "enum", "enum": ["c", "f"]}}}
    body = {"messages": [user("q")], "tools": [function_tool("pick", "Pick one.", schema)]}
    sent = orjson.loads(gemini.build_request(ChatRequest(body=body, stream=False), TARGET).body)
    assert sent["tools"][0]["functionDeclarations"][0]["parameters"] == schema


def test_target_drop_applies_to_openai_fields() -> None:
    body = {"messages": [user("q")], "temperature": 0.2, "top_p": 0.5}
    upstream = gemini.build_request(ChatRequest(body=body, stream=False), replace(TARGET, drop=("temperature",)))
    assert orjson.loads(upstream.body)["generationConfig"] == {"topP": 0.5}


def test_tool_choice_none() -> None:
    body = {"messages": [user("q")], "tools": [STRICT_TOOL], "tool_choice": "none"}
    got = orjson.loads(gemini.build_request(ChatRequest(body=body, stream=True), TARGET).body)
    assert got["toolConfig"] == {"functionCallingConfig": {"mode": "NONE"}}


REJECTED = {
    "n_2": ({"messages": [user("q")], "n": 2}, "n must be 1"),
    "https_image_not_inlined": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, "was not inlined"),
    "data_uri_not_base64": ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}]}]}, "base64 data: URIs"),
    "bad_arguments_json": ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "not valid JSON"),
    "arguments_not_object": ({"messages": [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}, "JSON object"),
    "unknown_tool_call_id": ({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]},
                             "matches no earlier assistant tool call"),
    "unsupported_role": ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "unsupported role"),
    "unsupported_part": ({"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "'video'"),
    "image_in_system": ({"messages": [{"role": "system", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}]}, "text parts"),
    "odd_tool_choice": ({"messages": [user("q")], "tool_choice": "sometimes"}, "tool_choice"),
    "non_function_tool": ({"messages": [user("q")], "tools": [{"type": "custom", "custom": {"name": "x"}}]},
                          "function tools"),
    "messages_not_list": ({"messages": "hi"}, "messages must be a list"),
    "tool_image_url_not_inlined": ({"messages": [
        {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_a", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/shot.png"}}]}]}, "was not inlined"),
    "tool_audio_part": ({"messages": [
        {"role": "assistant", "content": None, "tool_calls": CALLS[:1]},
        {"role": "tool", "tool_call_id": "call_a", "content": [
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]}, "text parts"),
    "odd_tool_choice_without_tools": ({"messages": [user("q")], "tool_choice": {"type": "custom"}}, "tool_choice"),
}


@pytest.mark.parametrize("fmt", [{"type": "grammar", "grammar": "root ::= 'a'"}, {"type": "regex"}, {},
                                 {"type": None}, "json_object", ["json_schema"]],
                         ids=["grammar", "regex", "no_type", "null_type", "a_string", "a_list"])
def test_untranslatable_response_format_names_the_field(fmt: Any) -> None:
    """A format Gemini cannot honour is a 400 naming `response_format`, not a prose answer in its place."""
    with pytest.raises(Untranslatable, match="response_format") as caught:
        gemini.build_request(ChatRequest(body={"messages": [user("q")], "response_format": fmt}, stream=False),
                             TARGET)
    assert caught.value.param == "response_format"


@pytest.mark.parametrize(("body", "match"), REJECTED.values(), ids=list(REJECTED))
def test_build_request_rejects(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ProviderError, match=match):
        gemini.build_request(ChatRequest(body=body, stream=False), TARGET)


@pytest.mark.parametrize(("target", "stream", "url", "headers"), [
    (TARGET, False, "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
     {"content-type": "application/json", "x-goog-api-key": "AIza-upstream"}),
    (TARGET, True,
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     {"content-type": "application/json", "x-goog-api-key": "AIza-upstream"}),
    (Target(provider="mirror", base_url="http://127.0.0.1:9000/gemini", api_key="", upstream_model="m",
            public_model="mirror/m", headers=(("x-extra", "1"),)), False,
     "http://127.0.0.1:9000/gemini/v1beta/models/m:generateContent", {"content-type": "application/json",
                                                                       "x-extra": "1"}),
], ids=["unary", "stream", "mirror_without_key"])
def test_build_request_url_and_headers(target: Target, stream: bool, url: str, headers: dict[str, str]) -> None:
    upstream = gemini.build_request(ChatRequest(body={"messages": [user("q")]}, stream=stream), target)
    assert (upstream.method, upstream.url, upstream.headers, upstream.stream) == ("POST", url, headers, stream)


# -- thought signatures: out on the tool call, back on the functionCall part --------------------------

SIGNED_UNARY = WIRE / "googleai/unary-success-thinking-function-call-thought-summary-signature.json"
SIGNED_STREAM = WIRE / "googleai/streaming-success-thinking-function-call-thought-summary-signature.txt"
PARALLEL = WIRE / "vertexai/unary-success-function-call-parallel-calls.json"


def signed_part(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """The recording's one functionCall part, read off the file, with its thoughtSignature."""
    [part] = [p for response in responses for p in recorded_parts(response) if "functionCall" in p]
    assert isinstance(part["thoughtSignature"], str) and len(part["thoughtSignature"]) > 100
    return part


def next_turn(assistant: dict[str, Any]) -> dict[str, Any]:
    """The Gemini body of the request a client sends after running the tools this answer called."""
    results = [{"role": "tool", "tool_call_id": call["id"], "content": '{"now": "2025-07-28T10:00:00Z"}'}
               for call in assistant["tool_calls"]]
    body = {"model": "google/gemini-3-pro-preview",
            "messages": [user("How many days until New Year's Eve?"), assistant, *results]}
    original = copy.deepcopy(body)
    sent = orjson.loads(gemini.build_request(ChatRequest(body=body, stream=False), TARGET).body)
    assert body == original
    assert [content["role"] for content in sent["contents"]] == ["user", "model", "user"]
    return sent


def test_recorded_signature_reaches_its_tool_call() -> None:
    raw = SIGNED_UNARY.read_bytes()
    part = signed_part([json.loads(raw)])
    body = gemini.parse_response(raw, TARGET).body
    assert_valid("CreateChatCompletionResponse", body)
    [call] = body["choices"][0]["message"]["tool_calls"]
    assert call["extra_content"] == {"google": {"thought_signature": part["thoughtSignature"]}}
    assert call["extra_content"]["google"]["thought_signature"].startswith("CtQOAVSoXO74PmYr9AFurEIJ")


@pytest.mark.parametrize("chunk_size", [1 << 20, 7], ids=["whole", "every_7"])
def test_recorded_stream_signature_rides_on_the_chunk_with_its_call(chunk_size: int) -> None:
    part = signed_part(recorded_stream(SIGNED_STREAM))
    chunks, _ = translate_stream(SIGNED_STREAM.read_bytes(), chunk_size)
    [(chunk, call)] = [(chunk, call) for chunk in chunks for choice in chunk["choices"]
                       for call in choice["delta"].get("tool_calls", [])]
    assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert (call["index"], call["function"]["name"]) == (0, "now")
    assert call["extra_content"] == {"google": {"thought_signature": part["thoughtSignature"]}}
    assert call["extra_content"]["google"]["thought_signature"].startswith("CiIBVKhc7vB+vaaq6rA/KC79")


def signed_parallel_answer() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The recorded parallel calls as Gemini 3 sends them: the first call alone carries a signature."""
    recorded = json.loads(PARALLEL.read_text())
    parts = recorded_parts(recorded)
    parts[0]["thoughtSignature"] = signed_part([json.loads(SIGNED_UNARY.read_text())])["thoughtSignature"]
    return parts, gemini.parse_response(orjson.dumps(recorded), TARGET).body["choices"][0]["message"]


def test_only_the_signed_call_of_a_parallel_set_has_extra_content() -> None:
    parts, message = signed_parallel_answer()
    calls = message["tool_calls"]
    assert len(calls) == len(parts) == 3
    assert calls[0]["extra_content"] == {"google": {"thought_signature": parts[0]["thoughtSignature"]}}
    assert ["extra_content" in call for call in calls] == [True, False, False]


def test_unsigned_streamed_call_has_no_extra_content() -> None:
    state = new_state()
    chunks = gemini.parse_stream_event(state, call_chunk("a", {}, signature="c2ln"))
    chunks += gemini.parse_stream_event(state, call_chunk("b", {}, "STOP"))
    calls = [call for c in chunks for choice in c["choices"] for call in choice["delta"].get("tool_calls", [])]
    assert [call.get("extra_content", "absent") for call in calls] == [
        {"google": {"thought_signature": "c2ln"}}, "absent"]


@pytest.mark.parametrize("client", ["as_received", "openai_sdk_model_dump"])
def test_recorded_signature_goes_back_on_its_function_call(client: str) -> None:
    raw = SIGNED_UNARY.read_bytes()
    message = gemini.parse_response(raw, TARGET).body["choices"][0]["message"]
    if client == "openai_sdk_model_dump":  # what an SDK user appends to the history: unknown fields kept
        message = ChatCompletionMessage.model_validate(message).model_dump()
    sent = next_turn(message)
    assert sent["contents"][1]["parts"] == [signed_part([json.loads(raw)])]  # the recorded part, as recorded


def test_recorded_stream_signature_goes_back_through_the_sdk_accumulator() -> None:
    chunks, _ = translate_stream(SIGNED_STREAM.read_bytes(), 1 << 20)
    sdk = ChatCompletionStreamState()
    for chunk in chunks:
        sdk.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = sdk.get_final_completion().choices[0].message.model_dump()
    sent = next_turn(message)
    assert sent["contents"][1]["parts"] == [signed_part(recorded_stream(SIGNED_STREAM))]


def test_parallel_calls_go_back_with_the_signature_on_the_first_only() -> None:
    parts, message = signed_parallel_answer()
    assert next_turn(message)["contents"][1]["parts"] == parts


MALFORMED_EXTRA = {
    "null": None,
    "not_an_object": "CiIBVKhc",
    "google_not_an_object": {"google": "CiIBVKhc"},
    "signature_not_a_string": {"google": {"thought_signature": 42}},
    "signature_a_list": {"google": {"thought_signature": ["CiIBVKhc"]}},
    "signature_empty": {"google": {"thought_signature": ""}},
    "other_vendor_only": {"openrouter": {"thought_signature": "CiIBVKhc"}},
}


@pytest.mark.parametrize("extra", MALFORMED_EXTRA.values(), ids=list(MALFORMED_EXTRA))
def test_malformed_extra_content_is_ignored(extra: Any) -> None:
    sent = next_turn({"role": "assistant", "content": None, "tool_calls": [{**CALLS[1], "extra_content": extra}]})
    assert sent["contents"][1]["parts"] == [{"functionCall": {"name": "now", "args": {}}}]


GEMINI_3 = replace(TARGET, upstream_model="gemini-3-pro-preview")


def sent_to(target: Target, messages: list[Any]) -> list[dict[str, Any]]:
    body = {"model": "m", "messages": messages}
    return orjson.loads(gemini.build_request(ChatRequest(body=body, stream=False), target).body)["contents"]


def moved_conversation() -> list[Any]:
    """A tool loop begun on another model (no signatures), then a new question, then a two-step tool loop."""
    def step(call_id: str) -> list[Any]:
        return [{"role": "assistant", "content": None, "tool_calls": [
                    {**CALLS[1], "id": call_id}, {**CALLS[1], "id": call_id + "b"}]},
                {"role": "tool", "tool_call_id": call_id, "content": "1"},
                {"role": "tool", "tool_call_id": call_id + "b", "content": "2"}]
    return [user("first question"), *step("a"), {"role": "assistant", "content": "done"}, user("second"),
            *step("b"), *step("c")]


def test_a_gemini_3_current_turn_without_signatures_gets_googles_stand_in() -> None:
    """Gemini 3 answers 400 ("Function call is missing a thought_signature") to a tool loop begun on another
    model: each step of the current turn gets the documented stand-in on its first call; the earlier turn,
    which Gemini does not check, and the other calls stay unsigned."""
    contents = sent_to(GEMINI_3, moved_conversation())
    signatures = [[part.get("thoughtSignature") for part in content["parts"] if "functionCall" in part]
                  for content in contents if content["role"] == "model"]
    stand_in = gemini_request.SKIP_SIGNATURE
    assert signatures == [[None, None], [], [stand_in, None], [stand_in, None]]


def test_a_real_signature_is_never_replaced() -> None:
    parts, message = signed_parallel_answer()
    contents = sent_to(GEMINI_3, [user("q"), message, *[
        {"role": "tool", "tool_call_id": call["id"], "content": "1"} for call in message["tool_calls"]]])
    assert contents[1]["parts"] == parts


@pytest.mark.parametrize(("model", "signs"), [
    ("gemini-3-pro-preview", True), ("gemini-3.1-flash", True), ("gemini-4-argon", True),
    ("gemini-flash-latest", True), ("gemini-2.5-flash", False), ("gemini-2.0-flash", False),
    ("gemma-3-27b-it", False)])
def test_the_stand_in_goes_only_to_models_that_check(model: str, signs: bool) -> None:
    contents = sent_to(replace(TARGET, upstream_model=model), moved_conversation())
    assert ("thoughtSignature" in contents[-2]["parts"][0]) is signs


# -- Gemini's own function-call ids (`functionCall.id`, newer models): kept, and sent back -----------------

def with_call_ids(recorded: dict[str, Any], *ids: str) -> dict[str, Any]:
    """A recorded answer as newer Gemini models send it: each functionCall with its `id` (Google's
    FunctionCall.id; the recordings predate it)."""
    answer = copy.deepcopy(recorded)
    calls = [part["functionCall"] for part in recorded_parts(answer) if "functionCall" in part]
    assert len(calls) == len(ids)
    for call, call_id in zip(calls, ids, strict=True):
        call["id"] = call_id
    return answer


def test_geminis_call_ids_become_the_tool_call_ids_and_go_back() -> None:
    """Gemini's ids were dropped for invented ones, so the next turn's functionResponse could not name its call
    (Gemini matches `functionResponse.id` to `functionCall.id` when it gave one)."""
    recorded = with_call_ids(json.loads(PARALLEL.read_text()), "fc-a1", "fc-b2", "fc-c3")
    body = gemini.parse_response(orjson.dumps(recorded), TARGET).body
    assert_valid("CreateChatCompletionResponse", body)
    message = body["choices"][0]["message"]
    assert [call["id"] for call in message["tool_calls"]] == ["fc-a1", "fc-b2", "fc-c3"]
    sent = next_turn(ChatCompletionMessage.model_validate(message).model_dump())  # as an SDK user appends it
    assert sent["contents"][1]["parts"] == recorded_parts(recorded)  # the calls as Gemini sent them, ids included
    responses = [part["functionResponse"] for part in sent["contents"][2]["parts"]]
    names = [call["function"]["name"] for call in message["tool_calls"]]
    assert [(r["id"], r["name"]) for r in responses] == list(zip(["fc-a1", "fc-b2", "fc-c3"], names, strict=True))


def test_geminis_streamed_call_id_goes_back_through_the_sdk_accumulator() -> None:
    recorded = recorded_stream(SIGNED_STREAM)
    raw = b"".join(b"data: " + orjson.dumps(with_call_ids(response, "fc-now") if any(
        "functionCall" in part for part in recorded_parts(response)) else response) + b"\r\n\r\n"
        for response in recorded)
    chunks, _ = translate_stream(raw, 7)
    sdk = ChatCompletionStreamState()
    for chunk in chunks:
        sdk.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    message = sdk.get_final_completion().choices[0].message.model_dump()
    assert [call["id"] for call in message["tool_calls"]] == ["fc-now"]
    sent = next_turn(message)
    [part] = sent["contents"][1]["parts"]
    assert part["functionCall"]["id"] == "fc-now" and part["thoughtSignature"].startswith("CiIBVKhc7vB+vaaq6rA/KC79")
    assert sent["contents"][2]["parts"] == [{"functionResponse": {
        "id": "fc-now", "name": "now", "response": {"now": "2025-07-28T10:00:00Z"}}}]


@pytest.mark.parametrize("call_id", ["call_0123456789abcdef01234567", "toolu_01A09q90qw90lq917835lq9", "fc-a1"],
                         ids=["gateways", "claudes", "unmarked"])
def test_ids_gemini_did_not_give_never_reach_it(call_id: str) -> None:
    """An id the gateway invented or another provider gave (or one whose mark the client dropped) is not sent:
    endpoints that give no ids refuse the field ("Unknown name \"id\""), and Gemini did not make it."""
    sent = next_turn({"role": "assistant", "content": None, "tool_calls": [{**CALLS[1], "id": call_id}]})
    assert sent["contents"][1]["parts"] == [{"functionCall": {"name": "now", "args": {}}}]
    assert "id" not in sent["contents"][2]["parts"][0]["functionResponse"]


def test_an_answer_without_ids_still_gets_the_gateways() -> None:
    message = gemini.parse_response(PARALLEL.read_bytes(), TARGET).body["choices"][0]["message"]
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", call["id"]) for call in message["tool_calls"])
    assert all("extra_content" not in call for call in message["tool_calls"])


# -- property: nothing is lost or reordered --------------------------------------------------------

TEXT = st.text(min_size=1, max_size=12)
JSON_VALUE = st.recursive(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=3), max_leaves=6)
ARGS = st.dictionaries(st.text(max_size=8), JSON_VALUE, max_size=3)
NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,15}", fullmatch=True)
IMAGE = st.builds(lambda mime, raw: {"type": "image_url", "image_url": {
    "url": f"data:{mime};base64,{base64.b64encode(raw).decode()}"}},
    st.sampled_from(["image/png", "image/jpeg", "image/webp"]), st.binary(min_size=1, max_size=24))
USER = st.one_of(TEXT.map(user), st.lists(TEXT.map(lambda t: {"type": "text", "text": t}) | IMAGE, min_size=1,
                                          max_size=4).map(lambda parts: {"role": "user", "content": parts}))
SYSTEM = st.builds(lambda role, text: {"role": role, "content": text}, st.sampled_from(["system", "developer"]), TEXT)
ASSISTANT = TEXT.map(lambda text: {"role": "assistant", "content": text})


# a tool call's extra fields: none, a signature, or one of the malformed extra_content values
EXTRA = st.one_of(st.just({}), st.from_regex(r"[A-Za-z0-9+/]{1,24}={0,2}", fullmatch=True).map(
    lambda signature: {"extra_content": {"google": {"thought_signature": signature}}}),
    st.sampled_from(list(MALFORMED_EXTRA.values())).map(lambda extra: {"extra_content": extra}))


def sent_signature(call: dict[str, Any]) -> str | None:
    """The signature Gemini must get back for a call EXTRA made (None for none or a malformed one)."""
    extra = call.get("extra_content")
    return None if extra is None or extra in MALFORMED_EXTRA.values() else extra["google"]["thought_signature"]


@st.composite
def tool_exchange(draw: st.DrawFn) -> list[dict[str, Any]]:
    """An assistant turn with calls (ids reused across exchanges), then one result per call, any order."""
    calls = draw(st.lists(st.tuples(NAME, ARGS, EXTRA), min_size=1, max_size=3))
    tool_calls = [{"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)},
                   **extra} for i, (name, args, extra) in enumerate(calls)]
    order = draw(st.permutations(range(len(calls))))
    results = [{"role": "tool", "tool_call_id": f"call_{i}", "content": draw(TEXT | ARGS.map(json.dumps))}
               for i in order]
    return [{"role": "assistant", "content": draw(st.none() | TEXT), "tool_calls": tool_calls}, *results]


CONVERSATION = st.lists(st.one_of(USER.map(lambda m: [m]), SYSTEM.map(lambda m: [m]), ASSISTANT.map(lambda m: [m]),
                                  tool_exchange()), max_size=8).map(lambda turns: [m for turn in turns for m in turn])


def openai_sequence(messages: list[dict[str, Any]]) -> tuple[list[str], list[tuple[Any, ...]]]:
    system: list[str] = []
    items: list[tuple[Any, ...]] = []
    names: dict[str, str] = {}
    for m in messages:
        role: str = m["role"]
        content: Any = m.get("content")
        if role in ("system", "developer"):
            system.append(content)
        elif role == "tool":
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None
            response = parsed if isinstance(parsed, dict) else {"content": content}
            items.append(("user", "response", names[m["tool_call_id"]], response))
        else:
            gemini_role = "user" if role == "user" else "model"
            text_part = {"type": "text", "text": content}
            parts: list[dict[str, Any]] = [text_part] if isinstance(content, str) else content or []
            for part in parts:
                if part["type"] == "text":
                    items.append((gemini_role, "text", part["text"]))
                else:
                    mime, data = part["image_url"]["url"].removeprefix("data:").split(";base64,")
                    items.append((gemini_role, "image", mime, data))
            for call in m.get("tool_calls", []):
                names[call["id"]] = call["function"]["name"]
                items.append(("model", "call", call["function"]["name"], json.loads(call["function"]["arguments"]),
                              sent_signature(call)))
    return system, items


def gemini_sequence(body: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    system = [part["text"] for part in body.get("systemInstruction", {}).get("parts", [])]
    items: list[tuple[Any, ...]] = []
    for content in body["contents"]:
        role = content["role"]
        for part in content["parts"]:
            if "text" in part:
                items.append((role, "text", part["text"]))
            elif "inlineData" in part:
                items.append((role, "image", part["inlineData"]["mimeType"], part["inlineData"]["data"]))
            elif "functionCall" in part:
                items.append((role, "call", part["functionCall"]["name"], part["functionCall"]["args"],
                              part.get("thoughtSignature")))
            else:
                items.append((role, "response", part["functionResponse"]["name"], part["functionResponse"]["response"]))
    return system, items


@settings(max_examples=300, deadline=None)
@given(CONVERSATION)
def test_any_conversation_survives_translation(messages: list[dict[str, Any]]) -> None:
    body = {"model": "google/gemini-2.5-flash", "messages": messages}
    original = copy.deepcopy(body)
    translated = orjson.loads(gemini.build_request(ChatRequest(body=body, stream=False), TARGET).body)
    assert body == original
    assert gemini_sequence(translated) == openai_sequence(messages)
    roles = [content["role"] for content in translated["contents"]]
    assert set(roles) <= {"user", "model"}
    assert all(a != b for a, b in itertools.pairwise(roles))  # same-role turns were merged
    assert all(content["parts"] for content in translated["contents"])
