"""The request half of the `openai` adapter: the client's chat body as an OpenAI-compatible upstream takes it.

The body is passed through with the model substituted and the per-model parameter fixes of the config
applied (renames and drops are data in `Target`), its history cleared of what earlier answers added for the
client only (`reasoning_content` or `reasoning`, the `extra_content` holding a Gemini thought signature or
Claude's thinking blocks on tool calls), and without Anthropic's `cache_control` marks unless the provider keeps
them (`Target.keep_cache_control`).

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers.types import JSON, REASONING_FIELDS, ChatRequest, Target, UpstreamRequest

MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
_REASONING = frozenset(REASONING_FIELDS)
_REASONING_AND_DETAILS = _REASONING | {"reasoning_details"}  # OpenRouter's signed reasoning, for OpenRouter only


def build_request(req: ChatRequest, target: Target) -> UpstreamRequest:
    """POST {base_url}/chat/completions with the client's body, adapted for the target model."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if req.stream else "application/json",
    }
    if target.api_key:
        headers["Authorization"] = f"Bearer {target.api_key}"
    headers.update(target.headers)
    return UpstreamRequest("POST", f"{target.base_url}/chat/completions", headers,
                           orjson.dumps(adapt_body(req, target)), req.stream)


def adapt_body(req: ChatRequest, target: Target) -> JSON:
    """A shallow copy of the client's body with the target's model, renames and drops applied."""
    body = dict(req.body)
    body["model"] = target.upstream_model
    field = target.max_tokens_field
    if field:
        for alias in MAX_TOKENS_FIELDS:
            if alias != field and alias in body:
                value = body.pop(alias)
                body.setdefault(field, value)
    for name in target.drop:
        body.pop(name, None)
    strip_marks = not target.keep_cache_control
    answer_only = _REASONING if target.keep_reasoning_details else _REASONING_AND_DETAILS
    body["messages"] = [_history_message(m, strip_marks, answer_only) for m in body.get("messages") or ()]
    if strip_marks:
        _drop_cache_control(body)
    if req.stream:
        body["stream"] = True
        if "stream_options" not in target.drop:  # a server that refuses the field (Mistral: 422) reports usage anyway
            options = body.get("stream_options")
            body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)  # OpenAI answers 400 to stream_options without stream
    return body


def _history_message(message: Any, strip_marks: bool, answer_only: frozenset[str]) -> Any:
    """A history message without what other answers added for the client's eyes only, and without its content
    parts' `cache_control` marks when `strip_marks` (see `_drop_cache_control`); a copy when changed.

    DeepSeek answers 400 when a previous turn's `reasoning_content` is sent back, and OpenAI to an unknown
    field in a message, such as `reasoning` (the name OpenRouter, Ollama and vLLM answer with, which a client
    sends back with the turn) or the `extra_content` (a Gemini thought signature, Claude's thinking blocks)
    that a conversation begun on a Gemini or Claude model carries on its tool calls; history needs neither.
    OpenRouter's `reasoning_details` (`answer_only` holds it unless the upstream is OpenRouter, which wants it
    back) is refused the same way by DeepSeek, MiniMax and OpenAI.
    """
    if not isinstance(message, dict):
        return message
    if not answer_only.isdisjoint(message):
        message = {k: v for k, v in message.items() if k not in answer_only}
    calls = message.get("tool_calls")
    if isinstance(calls, list) and any(isinstance(call, dict) and "extra_content" in call for call in calls):
        message = {**message, "tool_calls": [_without_extra_content(call) for call in calls]}
    return _without_marks(message) if strip_marks else message


def _drop_cache_control(body: JSON) -> None:
    """Remove Anthropic's prompt-caching marks (`cache_control`) from the body's tools and top level, in place
    on the copy `_adapt_body` made (its messages' parts lose theirs in `_history_message`). Clients and our
    /v1/messages translation leave them on parts, and a strict OpenAI-compatible upstream answers 400 to the
    unknown field; OpenAI caches prefixes by itself. Upstreams that document the marks (OpenRouter) keep them."""
    body.pop("cache_control", None)
    if isinstance(body.get("tools"), list):
        body["tools"] = [_unmarked(tool) for tool in body["tools"]]


def _without_marks(message: Any) -> Any:
    """A message whose content parts carry no `cache_control` (a copy when one did)."""
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or not any(isinstance(p, dict) and "cache_control" in p for p in content):
        return message
    return {**message, "content": [_unmarked(part) for part in content]}


def _unmarked(item: Any) -> Any:
    if isinstance(item, dict) and "cache_control" in item:
        return {k: v for k, v in item.items() if k != "cache_control"}
    return item


def _without_extra_content(call: Any) -> Any:
    if isinstance(call, dict) and "extra_content" in call:
        return {k: v for k, v in call.items() if k != "extra_content"}
    return call
