"""How streams end: OpenRouter's usage tail (an unfinished choice carrying usage) and an n > 1 stream cut while a
choice still runs."""

from __future__ import annotations

import json
from typing import Any

import openai
import orjson
import pytest
from fakes.gemini_upstream import recorded_chunks

from gateway import streaming
from gateway.endpoints import CompletionCodec
from gateway.errors import UpstreamFailed
from providers import registry
from providers.framing import SSEDecoder
from providers.types import ChatRequest, StreamState, Target

BILLING = {"request_cost": "0.000002000", "balance_remaining": "1.0", "using_own_key": False, "currency": "USD",
           "reserved": "0.00001", "estimated": False}
# OpenRouter's stream tail as it is on the wire (speakeasy-api/gram#921): the finish chunk, then a usage
# chunk whose one choice is unfinished (`finish_reason: null`, empty delta); usage with OpenRouter's own
# money figures (wire/openrouter/usage-accounting.mdx.txt)
OR_USAGE = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cost": 0.95,
            "cost_details": {"upstream_inference_cost": 19}, "is_byok": False}


def _or_chunk(delta: dict[str, Any], finish: str | None, **top: Any) -> bytes:
    body = {"id": "gen-1764031697-vqvW0uz7ouT4gsp3FYqp", "provider": "OpenAI", "model": "openai/gpt-4o",
            "object": "chat.completion.chunk", "created": 1764031697,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": finish,
                         "logprobs": None}], **top}
    return b"data: " + orjson.dumps(body) + b"\n\n"


OPENROUTER_STREAM = (
    b": OPENROUTER PROCESSING\n\n"
    + _or_chunk({"role": "assistant", "content": "Hello"}, None)
    + _or_chunk({"role": "assistant", "content": " there"}, None)
    + _or_chunk({"role": "assistant", "content": ""}, "stop")
    + _or_chunk({"role": "assistant", "content": ""}, None, usage=OR_USAGE)
    + b"data: [DONE]\n\n"
)


def relay(raw: bytes, wants_usage: bool, codec_type: type = streaming.ChunkCodec) -> bytes:
    """Client bytes for `raw`, relayed as the gateway's pump does (one read), then finished with the bill."""
    codec = codec_type(registry.get("openai"), StreamState(public_model="or/gpt-4o"), "gen-42", wants_usage)
    decoder, relayed = SSEDecoder(), streaming.Relayed()
    out, broken = streaming.relay_read(codec, decoder, raw, relayed)
    assert broken is None and codec.state.done
    return out + codec.finish(BILLING, False, codec.state.usage)


def client_chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(block[6:]) for block in raw.split(b"\n\n") if block.startswith(b"data: {")]


def test_openrouter_usage_chunk_never_carries_the_upstreams_money_figures() -> None:
    for wants_usage in (False, True):
        for codec_type in (streaming.ChunkCodec, CompletionCodec):
            chunks = client_chunks(relay(OPENROUTER_STREAM, wants_usage, codec_type))
            usages = [c["usage"] for c in chunks if c.get("usage")]
            # the upstream's price to the operator (cost 0.95, cost_details) must never reach the client
            assert all(u.get("cost") == BILLING["request_cost"] and "cost_details" not in u for u in usages), \
                (wants_usage, codec_type.__name__, usages)


def test_openrouter_usage_reaches_the_client_once_and_billed_after_the_finish() -> None:
    chunks = client_chunks(relay(OPENROUTER_STREAM, True))
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == 1, with_usage  # one usage chunk, as include_usage promises
    assert with_usage[0]["billing"] == BILLING
    finish_at = next(i for i, c in enumerate(chunks) if any(ch.get("finish_reason") for ch in c["choices"]))
    assert chunks.index(with_usage[0]) >= finish_at  # OpenAI's order: usage last
    # the SDK reads it
    parsed = [openai.types.chat.ChatCompletionChunk.model_validate(c) for c in chunks]
    assert parsed[-1].usage is not None and parsed[-1].usage.completion_tokens == 2


def _n_chunk(index: int, text: str | None = None, finish: str | None = None) -> bytes:
    """One choice's event of an n>1 stream, as OpenAI writes it (one choice an event)."""
    delta = {} if text is None else {"content": text}
    body = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o-mini",
            "system_fingerprint": "fp_1", "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


async def test_an_n2_stream_cut_while_one_choice_still_runs_is_truncated_not_complete() -> None:
    """n=2: choice 0 finished, choice 1 was mid-answer when the upstream closed the body (no [DONE]). The
    client must learn the answer was cut (as it does for n=1), not get choice 1 half-written as a success."""
    raw = (_n_chunk(0, "Hel") + _n_chunk(1, "Wor") + _n_chunk(0, "lo") + _n_chunk(0, finish="stop")
           + _n_chunk(1, "ld, and then"))

    class Body:
        def __init__(self) -> None:
            self.parts = [raw]

        def at_eof(self) -> bool:
            return not self.parts

        def read_nowait(self) -> bytes:
            return self.parts.pop(0) if self.parts else b""

        async def readany(self) -> bytes:
            return self.read_nowait()

    class Resp:
        content = Body()

    class Out:
        async def write(self, data: bytes) -> None:
            pass

        async def keepalive(self) -> None:
            pass

    adapter = registry.get("openai")
    target = Target(provider="p", upstream_model="gpt-4o-mini", public_model="gw/m", base_url="", api_key="")
    codec = streaming.ChunkCodec(adapter, adapter.new_stream_state(ChatRequest(body={}, stream=True), target),
                                 "gen-1", False)
    with pytest.raises(UpstreamFailed) as info:
        await streaming.pump(Resp(), codec, Out(), 5.0, 1.0, streaming.Relayed(), lambda: 0.0)  # type: ignore[arg-type]
    assert info.value.code == "upstream_truncated"


def test_a_gemini_chunk_array_with_a_finish_reason_on_every_chunk_replays_whole() -> None:
    """`streamGenerateContent` without `alt=sse` answers its chunks as one JSON array. Vertex AI's recorded with
    STOP on every chunk and no usage gave the first chunk's text alone, as a complete answer; it replays every
    chunk's text and one finish chunk, the last reason's (an unknown enum: stop), as its SSE stream does."""
    name = "vertexai/streaming-failure-unknown-finish-enum.txt"
    adapter = registry.get("gemini")
    target = Target(provider="google", upstream_model="gemini-2.0-flash", public_model="google/flash", base_url="",
                    api_key="")
    codec = streaming.ChunkCodec(adapter, adapter.new_stream_state(ChatRequest(body={}, stream=True), target),
                                 "gen-1", False)
    raw, n = codec.replay(orjson.dumps(recorded_chunks(name)), target)
    chunks = client_chunks(raw + codec.finish(BILLING, False, codec.state.usage))
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == "".join(part["text"] for chunk in recorded_chunks(name)
                           for part in chunk["candidates"][0]["content"]["parts"])
    assert n == len(text.encode())
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"][0]["finish_reason"]] \
        == ["stop"]
    assert codec.state.done and codec.state.finish_reason == "stop"
