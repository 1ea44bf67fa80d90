"""OpenAI's endpoints besides chat, passed through to OpenAI-kind upstreams: legacy completions,
embeddings, moderations and image generation.

The client's body goes out with the upstream's model name and the model's configured drops; the answer
comes back with the public model id and the fields OpenAI's schema requires filled in where compatible
servers omit them. Usage is read where the endpoint reports it (completions, embeddings); moderations
report none, and an image answer counts its images.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from providers.openai import token_count, usage_from
from providers.types import JSON, ProviderError, Target, UpstreamRequest, Usage, load_object

COMPLETION_FINISH = frozenset({"stop", "length", "content_filter"})


def build_request(path: str, body: JSON, target: Target, stream: bool = False) -> UpstreamRequest:
    """POST {base_url}/{path} with the client's body for the target model; streams always ask for usage."""
    out = {k: v for k, v in body.items() if k not in target.drop}
    out["model"] = target.upstream_model
    if stream:
        options = out.get("stream_options")
        out["stream"] = True
        if "stream_options" not in target.drop:  # as the chat adapter: a server that refuses the field
            out["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    else:
        out.pop("stream", None)
        out.pop("stream_options", None)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    return UpstreamRequest(method="POST", url=f"{target.base_url}/{path}", headers=headers, body=orjson.dumps(out),
                           stream=stream)


def parse_completion(raw: bytes, target: Target) -> tuple[JSON, Usage]:
    """A legacy `text_completion` object as OpenAI's schema describes it, plus its usage."""
    data = load_object(raw)
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ProviderError("upstream completion has no choices")
    _fill_common(data, target, "text_completion")
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            raise ProviderError("upstream completion choice is not an object")
        choice.setdefault("index", i)
        choice.setdefault("logprobs", None)
        if not isinstance(choice.get("text"), str):
            choice["text"] = ""
        choice["finish_reason"] = completion_finish(choice.get("finish_reason"))
    return data, usage_from(data.get("usage"), data.get("service_tier"))


def completion_finish(value: Any) -> str:
    """The legacy enum (stop, length, content_filter); tool_calls and the unknown become stop."""
    return value if isinstance(value, str) and value in COMPLETION_FINISH else "stop"  # a list is unhashable


def parse_embeddings(raw: bytes, target: Target) -> tuple[JSON, Usage]:
    data = load_object(raw)
    if not isinstance(data.get("data"), list):
        raise ProviderError("upstream embeddings answer has no data")
    data["model"] = target.public_model
    data.setdefault("object", "list")
    for i, item in enumerate(data["data"]):
        if isinstance(item, dict):
            item.setdefault("object", "embedding")
            item.setdefault("index", i)
    usage = data.get("usage")
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        reported = Usage(prompt_tokens=prompt if isinstance(prompt, int) else 0, reported=isinstance(prompt, int))
        usage.setdefault("total_tokens", reported.prompt_tokens)
        return data, reported
    return data, Usage()


def parse_moderation(raw: bytes, target: Target) -> tuple[JSON, Usage]:
    """Moderations report no tokens: what they cost is the model's per-request price."""
    data = load_object(raw)
    if not isinstance(data.get("results"), list):
        raise ProviderError("upstream moderation answer has no results")
    data["model"] = target.public_model
    return data, Usage(reported=True)


def parse_images(raw: bytes, target: Target) -> tuple[JSON, Usage]:
    """An `ImagesResponse`; the bill counts the images it holds (token usage, when sent, is recorded)."""
    data = load_object(raw)
    images = data.get("data")
    if not isinstance(images, list):
        raise ProviderError("upstream images answer has no data")
    if not isinstance(data.get("created"), int):
        data["created"] = int(time.time())
    tokens = data["usage"] if isinstance(data.get("usage"), dict) else {}
    usage = Usage(prompt_tokens=token_count(tokens.get("input_tokens")),
                  completion_tokens=token_count(tokens.get("output_tokens")), images=len(images), reported=True)
    read = {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens}
    if tokens and any(tokens.get(name).__class__ is not int or tokens[name] != n for name, n in read.items()):
        # the answer states the counts billed, as a chat answer's usage does (`openai.usage_from`)
        tokens.update(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                      total_tokens=usage.total_tokens)
    return data, usage


def _fill_common(data: JSON, target: Target, kind: str) -> None:
    data["model"] = target.public_model
    data.setdefault("object", kind)
    if not isinstance(data.get("created"), int):
        data["created"] = int(time.time())
    if not isinstance(data.get("id"), str):
        data["id"] = ""
    if data.get("system_fingerprint", "") is None:
        del data["system_fingerprint"]
