"""providers.completions, providers.passthrough and providers.gemini_embed on recorded examples, without a
server: legacy completions to chat and back, OpenAI's other endpoints passed through, Gemini embeddings."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from harness import validate

from providers import completions, gemini_embed, passthrough
from providers.types import ProviderError, Target

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OPENAI = SHARED / "wire" / "openai"
TARGET = Target(provider="oai", base_url="https://api.example.com/v1", api_key="sk-k", upstream_model="up-model",
                public_model="oai/model", drop=("logit_bias",))


def wire(name: str) -> Any:
    return json.loads((OPENAI / name).read_text())


def test_recorded_completion_request_as_chat() -> None:
    request = wire("docs-completions.request.json")
    chat = completions.chat_body(request)
    validate(chat, "CreateChatCompletionRequest")
    assert chat == {"model": request["model"], "messages": [{"role": "user", "content": "Say this is a test"}],
                    "max_tokens": 7, "temperature": 0}


def test_completion_without_max_tokens_gets_the_legacy_default() -> None:
    assert completions.chat_body({"model": "m", "prompt": ["one prompt"]})["max_tokens"] == 16


@pytest.mark.parametrize("extra", [{"echo": True}, {"suffix": "x"}, {"logprobs": 2}, {"best_of": 3},
                                   {"prompt": ["a", "b"]}, {"prompt": [1, 2, 3]}])
def test_completion_options_chat_cannot_express(extra: dict[str, Any]) -> None:
    with pytest.raises(ProviderError):
        completions.chat_body({"model": "m", "prompt": "p", **extra})


def test_chat_answer_as_a_completion_validates() -> None:
    answer = wire("docs-chat-default.response.json")
    out = completions.completion_from_chat(answer)
    validate(out, "CreateCompletionResponse")
    assert out["choices"][0]["text"] == answer["choices"][0]["message"]["content"]
    assert out["usage"] == answer["usage"] and out["object"] == "text_completion"


def test_chat_chunks_as_completion_chunks() -> None:
    role = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    finish = {**role, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}], "billing": {"x": 1}}
    usage = {**role, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    assert completions.completion_chunk(role)["choices"] == [{"text": "", "index": 0, "logprobs": None,
                                                              "finish_reason": None}]
    last = completions.completion_chunk(finish)
    validate(last, "CreateCompletionResponse")
    assert last["choices"][0]["finish_reason"] == "stop" and last["billing"] == {"x": 1}
    assert completions.completion_chunk(usage)["usage"]["total_tokens"] == 3


def test_passthrough_request_renames_the_model_drops_and_asks_for_stream_usage() -> None:
    req = passthrough.build_request("completions", {"model": "oai/model", "prompt": "p", "logit_bias": {},
                                                    "stream": True}, TARGET, stream=True)
    body = json.loads(req.body)
    assert req.url == "https://api.example.com/v1/completions" and req.headers["Authorization"] == "Bearer sk-k"
    assert body == {"model": "up-model", "prompt": "p", "stream": True, "stream_options": {"include_usage": True}}
    plain = json.loads(passthrough.build_request("embeddings", {"model": "x", "input": "i", "stream": False},
                                                 TARGET).body)
    assert plain == {"model": "up-model", "input": "i"}


def test_recorded_completion_response_passes_through() -> None:
    raw = (OPENAI / "docs-completions.response.json").read_bytes()
    body, usage = passthrough.parse_completion(raw, TARGET)
    validate(body, "CreateCompletionResponse")
    assert body["model"] == "oai/model" and (usage.prompt_tokens, usage.completion_tokens) == (5, 7)


def test_embeddings_response_passes_through_with_usage() -> None:
    raw = json.dumps({"object": "list", "data": [{"object": "embedding", "embedding": [0.1, 0.2], "index": 0}],
                      "model": "text-embedding-ada-002", "usage": {"prompt_tokens": 8, "total_tokens": 8}}).encode()
    body, usage = passthrough.parse_embeddings(raw, TARGET)
    validate(body, "CreateEmbeddingResponse")
    assert usage.prompt_tokens == 8 and usage.reported and body["model"] == "oai/model"


def test_images_response_counts_images() -> None:
    raw = json.dumps({"created": 1, "data": [{"b64_json": "x"}, {"url": "https://e/x.png"}],
                      "usage": {"input_tokens": 50, "output_tokens": 50, "total_tokens": 100}}).encode()
    body, usage = passthrough.parse_images(raw, TARGET)
    assert body["data"][1]["url"] == "https://e/x.png"
    assert (usage.images, usage.prompt_tokens, usage.completion_tokens) == (2, 50, 50)
    with pytest.raises(ProviderError):
        passthrough.parse_images(b'{"created": 1}', TARGET)


def test_gemini_batch_embed_request_in_googles_documented_shape() -> None:
    req = gemini_embed.build_request({"input": ["a", "b"], "dimensions": 3}, TARGET)
    assert req.url == "https://api.example.com/v1/v1beta/models/up-model:batchEmbedContents"
    assert req.headers["x-goog-api-key"] == "sk-k"
    assert json.loads(req.body) == {"requests": [
        {"model": "models/up-model", "content": {"parts": [{"text": "a"}]}, "outputDimensionality": 3},
        {"model": "models/up-model", "content": {"parts": [{"text": "b"}]}, "outputDimensionality": 3}]}
    with pytest.raises(ProviderError):
        gemini_embed.build_request({"input": [[1, 2]]}, TARGET)


def test_gemini_batch_embed_response_in_both_encodings() -> None:
    raw = json.dumps({"embeddings": [{"values": [0.5, -0.25]}, {"values": [1.0, 0.0]}]}).encode()
    body, usage = gemini_embed.parse_response(raw, TARGET)
    assert not usage.reported and "usage" not in body  # Gemini reports none: the gateway estimates
    assert [d["embedding"] for d in body["data"]] == [[0.5, -0.25], [1.0, 0.0]]
    encoded, _ = gemini_embed.parse_response(raw, TARGET, "base64")
    first = base64.b64decode(encoded["data"][0]["embedding"])
    assert struct.unpack("<2f", first) == (0.5, -0.25)
