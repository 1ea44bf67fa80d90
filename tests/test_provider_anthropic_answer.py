"""providers.anthropic_answer: refusals and matched stop sequences of translated answers, plain and streamed.

Streams go through the OpenAI adapter from recorded bytes and are accumulated by the Anthropic SDK's own
`accumulate_event`, so the message is the one an SDK user gets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from providers import anthropic_answer, openai
from providers.anthropic_answer import MessageStream
from providers.framing import SSEDecoder
from providers.types import ChatRequest, Target, Usage

OPENAI = Path(__file__).resolve().parents[1].parent / "shared" / "wire" / "openai"
TARGET = Target(provider="oai", base_url="https://api.openai.com/v1", api_key="k", upstream_model="gpt-4o",
                public_model="oai/gpt-4o")
USAGE = Usage(prompt_tokens=12, completion_tokens=7, reported=True)


def _chunks(raw: bytes) -> list[dict[str, Any]]:
    state = openai.new_stream_state(ChatRequest(body={}, stream=True), TARGET)
    decoder = SSEDecoder()
    return [c for e in [*decoder.feed(raw), *decoder.flush()] for c in openai.parse_stream_event(state, e)]


def _streamed(chunks: list[dict[str, Any]], stop_sequences: Any = None) -> Any:
    stream = MessageStream("gen-1", "oai/gpt-4o", stop_sequences)
    events = [event for chunk in chunks for event in stream.feed(chunk)] + stream.end(USAGE)
    snapshot, bufs = None, {}  # type: ignore[var-annotated]
    for _, data in events:
        snapshot = accumulate_event(event=json.loads(json.dumps(data)), current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


def _refusal_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("refusal") or "" for c in chunks if c["choices"])


def test_a_recorded_refusal_stream_is_a_refusal() -> None:
    chunks = _chunks((OPENAI / "sdk-stream-refusal.sse").read_bytes())
    refusal = _refusal_text(chunks)
    assert refusal.startswith("I'm sorry")
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"  # OpenAI says only stop
    message = _streamed(chunks)
    assert message.stop_reason == "refusal" and message.stop_sequence is None
    assert [(b.type, b.text) for b in message.content] == [("text", refusal)]


def test_a_refusal_answer_is_a_refusal() -> None:
    """The non-streamed answer of the same recording: `content` null, `refusal` the text."""
    refusal = _refusal_text(_chunks((OPENAI / "sdk-stream-refusal.sse").read_bytes()))
    answer = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o", "choices": [
        {"index": 0, "finish_reason": "stop", "logprobs": None,
         "message": {"role": "assistant", "content": None, "refusal": refusal}}]}
    message = anthropic_answer.message_from_chat(answer, USAGE, "oai/gpt-4o")
    assert message["stop_reason"] == "refusal" and message["content"] == [{"type": "text", "text": refusal}]


def _vllm_answer(finish: str, stop_reason: Any) -> dict[str, Any]:
    """vLLM's chat answer: each choice has `stop_reason`, "the stop string or token id that caused the
    completion to stop" (vllm/entrypoints/openai/protocol.py, ChatCompletionResponseChoice)."""
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "finish_reason": finish, "stop_reason": stop_reason, "logprobs": None,
         "message": {"role": "assistant", "content": "1, 2, 3", "refusal": None}}]}


@pytest.mark.parametrize(("finish", "matched", "stops", "expected"), [
    ("stop", "4,", ["4,", "END"], ("stop_sequence", "4,")),
    ("stop", None, ["4,"], ("end_turn", None)),  # EOS: vLLM names nothing
    ("stop", 128009, ["4,"], ("end_turn", None)),  # a stop token id is no stop sequence of the client's
    ("stop", "4,", None, ("end_turn", None)),  # not one the client asked for
    ("length", "4,", ["4,"], ("max_tokens", None)),
], ids=["matched", "eos", "token-id", "not-asked", "length"])
def test_a_named_stop_sequence_is_reported(finish: str, matched: Any, stops: Any, expected: tuple[str, Any]) -> None:
    message = anthropic_answer.message_from_chat(_vllm_answer(finish, matched), USAGE, "m", stops)
    assert (message["stop_reason"], message["stop_sequence"]) == expected
    chunks = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": "1, 2, 3"}, "finish_reason": None}]},
              {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [
        {"index": 0, "delta": {}, "finish_reason": finish, "stop_reason": matched}]}]
    streamed = _streamed(chunks, stops)
    assert (streamed.stop_reason, streamed.stop_sequence) == expected
