"""OpenAI embeddings on Gemini: `POST {base_url}/v1beta/models/{model}:batchEmbedContents`.

No recorded batchEmbedContents exchange exists in the wire folder; the shapes are Google's documented
ones (ai.google.dev, `BatchEmbedContentsRequest` / `BatchEmbedContentsResponse`):

    request   {"requests": [{"model": "models/{model}", "content": {"parts": [{"text": ...}]},
                             "outputDimensionality": N?}, ...]}
    response  {"embeddings": [{"values": [float, ...]}, ...]}  (same order as the requests)

OpenAI's `input` (a string or a list of strings) becomes one request per string; token-id inputs have no
Gemini equivalent, and a batch takes at most `MAX_BATCH` requests (Google's 400 "at most 100 requests can
be in one batch" otherwise): both are refused before anything is sent, naming `input`.
`dimensions` -> `outputDimensionality`. `encoding_format: base64` (what the openai SDK asks for by default)
is honoured: little-endian float32, base64, as OpenAI sends it. The answer reports no tokens
unless a `usageMetadata.promptTokenCount` is present, so the gateway estimates them then.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson

from providers.types import JSON, ProviderError, Target, Untranslatable, UpstreamRequest, Usage

MAX_BATCH = 100  # batchEmbedContents' own bound on `requests`


def embed_inputs(body: JSON) -> list[str]:
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise Untranslatable("'input' must be a string or a list of strings for Gemini embedding models",
                             param="input")
    if len(texts) > MAX_BATCH:
        raise Untranslatable(f"'input' holds {len(texts)} strings; Gemini embedding models take at most {MAX_BATCH} "
                             "a request", param="input")
    return texts


def build_request(body: JSON, target: Target) -> UpstreamRequest:
    name = f"models/{target.upstream_model}"
    requests: list[JSON] = []
    for text in embed_inputs(body):
        one: JSON = {"model": name, "content": {"parts": [{"text": text}]}}
        if isinstance(body.get("dimensions"), int):
            one["outputDimensionality"] = body["dimensions"]
        requests.append(one)
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["x-goog-api-key"] = target.api_key
    headers.update(target.headers)
    url = f"{target.base_url}/v1beta/models/{target.upstream_model}:batchEmbedContents"
    return UpstreamRequest("POST", url, headers, orjson.dumps({"requests": requests}), False)


def parse_response(raw: bytes, target: Target, encoding_format: Any = "float") -> tuple[JSON, Usage]:
    """OpenAI's `CreateEmbeddingResponse` for a `BatchEmbedContentsResponse`."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"upstream answer is not valid JSON: {exc}") from exc
    embeddings = data.get("embeddings") if isinstance(data, dict) else None
    if not isinstance(embeddings, list):
        raise ProviderError("upstream answer has no embeddings")
    items = []
    for i, item in enumerate(embeddings):
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list):
            raise ProviderError(f"embeddings[{i}] has no values")
        vector: Any = _base64(values) if encoding_format == "base64" else values
        items.append({"object": "embedding", "index": i, "embedding": vector})
    meta = data.get("usageMetadata")
    count = meta.get("promptTokenCount") if isinstance(meta, dict) else None
    usage = Usage(prompt_tokens=count, reported=True) if isinstance(count, int) else Usage()
    body: JSON = {"object": "list", "data": items, "model": target.public_model}
    if usage.reported:
        body["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
    return body, usage


def _base64(values: list[Any]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
