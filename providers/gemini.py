"""Adapter for Google's Gemini API: `generateContent` and `streamGenerateContent?alt=sse`. The request body
is built by `gemini_request`; answers, errors and streams are read back here.

Decisions where the formats differ:
- system/developer messages, wherever they stand, go to `systemInstruction`; `tool` results are
  `functionResponse` parts of a `user` turn named after the assistant call with that tool_call_id (images a
  tool returned follow all the functionResponse parts of that turn as inlineData, behind a text naming the
  call); turns of one role are merged; empty texts are left out (Gemini refuses them). `n` > 1 is a
  `ProviderError`.
- images, audio and files must be base64 data: URIs (the gateway inlines https image URLs first).
- tool schemas within the OpenAPI subset of Gemini's `Schema` go as `parameters`, others (strict OpenAI tools:
  `additionalProperties`, type lists, `$ref`, an `enum` of anything but strings) as `parametersJsonSchema`;
  the same for `responseSchema`. `tool_choice` `allowed_tools` sends only the tools it allows, with its mode
  (auto -> AUTO, required -> ANY; `providers.types.allowed_tools`).
- `reasoning_effort` / `reasoning` become `generationConfig.thinkingConfig` (see `gemini_request`), with
  `includeThoughts` so that the thought summaries come back; thought parts become `reasoning_content`;
  code execution, grounding and image output are dropped. Calls keep the id Gemini gives them
  (`functionCall.id`, newer models), which goes back as `functionCall.id` and `functionResponse.id`; others
  get ids `call_` + 24 random hex digits (unique across turns, unlike a counter), never sent to Gemini.
- a functionCall's `thoughtSignature` (Gemini 3 requires it back on that call in the next request, else 400)
  goes out as the tool call's `extra_content.google.thought_signature`, Google's own OpenAI-compatible
  spelling, and comes back from there onto the `functionCall` part (a malformed one is ignored). Signatures
  on text parts are dropped: Gemini does not require them back. A current-turn step with no signature to
  give back (a conversation begun on another model) gets Google's documented stand-in on its first call
  (`gemini_request.sign_current_turn`), for Gemini 3 and later and unversioned names.
- a prompt blocked before any candidate is an answer (Gemini said 200 and bills the prompt): content None,
  `refusal` naming the block reason, finish_reason `content_filter`.
- usage: prompt = promptTokenCount + toolUsePromptTokenCount (billed as input; the total is then Gemini's
  totalTokenCount), completion = candidatesTokenCount + thoughtsTokenCount.
- errors: a `google.rpc.RetryInfo` detail's `retryDelay` (Gemini sends no `Retry-After` header) becomes
  the error's `retry_after`.
- streams have no [DONE]: the chunk with a finishReason and the final usageMetadata (the Developer API puts
  both on the last chunk only) ends the answer with a finish chunk, a usage chunk when usage was reported,
  and `done`. A finishReason without usageMetadata does not end it: Vertex AI streams have been recorded
  with `finishReason: "STOP"` on every chunk, and no usage, then an error body; such an answer ends at
  the body's end (`parse_stream_end`), with the last finishReason seen.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from providers.gemini_request import checks_signatures, gemini_body, sign_current_turn
from providers.types import (
    JSON,
    ChatRequest,
    ChatResult,
    ProviderError,
    SSEEvent,
    StreamState,
    Target,
    UpstreamHTTPError,
    UpstreamRequest,
    Usage,
    load_object,
    signed,
    status_phrase,
)

STREAM_FRAMING = "sse"
NEEDS_INLINE_IMAGES = True  # Gemini takes image bytes only
TEXT_AT = ("candidates", 0, "content", "parts", 0, "text")  # where a text event holds its text
# a text event's parse relays its text and restates the stream's usage so far (`RESTATES`, the state's fields it
# sets); the first also marks the role as sent, which the gateway sees (gateway.template.state_view)
VERBATIM_CHUNKS = True
RESTATES = ("usage", "meta")
SUPPORTED_PARAMETERS = ("temperature", "top_p", "top_k", "seed", "max_tokens", "max_completion_tokens", "stop",
                        "response_format", "structured_outputs", "tools", "tool_choice", "reasoning",
                        "reasoning_effort")  # what the translation carries
MAX_CHOICES = 1  # see `_generation_config`
SENDS_TIERS = False  # no translation carries a tier: served and billed at the standard one

# wire/finish-reason-map.json "gemini_vertex" (LiteLLM); the rest (STOP, MALFORMED_FUNCTION_CALL, ...) is "stop"
_FINISH_REASONS = {"MAX_TOKENS": "length", **dict.fromkeys((
    "SAFETY", "RECITATION", "LANGUAGE", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "NO_IMAGE", "IMAGE_RECITATION", "IMAGE_OTHER", "ESCALATION"), "content_filter")}
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_KEY_REFUSED = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED"})
_HTTP_STATUSES = frozenset(int(status) for status in HTTPStatus)
_DURATION = re.compile(r"(\d{1,9}(?:\.\d{0,9})?)s")  # google.protobuf.Duration in JSON, not negative


# -- request ---------------------------------------------------------------------------------------


def build_request(req: ChatRequest, target: Target) -> UpstreamRequest:
    """POST {base_url}/v1beta/models/{model}:generateContent (or :streamGenerateContent?alt=sse)."""
    body = {key: value for key, value in req.body.items() if key not in target.drop}
    method = "streamGenerateContent?alt=sse" if req.stream else "generateContent"
    headers = {"content-type": "application/json"}
    if target.api_key:
        headers["x-goog-api-key"] = target.api_key
    headers.update(target.headers)
    url = f"{target.base_url}/v1beta/models/{target.upstream_model}:{method}"
    out = gemini_body(body)
    if checks_signatures(target.upstream_model):
        sign_current_turn(out["contents"])
    return UpstreamRequest("POST", url, headers, orjson.dumps(out), req.stream)


def max_output_tokens(body: JSON, target: Target) -> int | None:
    """None: this kind sends no more output tokens than the client asked for."""
    return None


# -- non-streamed answer ---------------------------------------------------------------------------


def parse_response(body: bytes, target: Target) -> ChatResult:
    """A `GenerateContentResponse` as an OpenAI `chat.completion` (first candidate) and its usage."""
    data = load_object(body, "response")
    if data.get("error"):
        raise _status_error(data["error"], 502)
    candidate = _first_candidate(data)
    message: JSON = {"role": "assistant", "content": None, "refusal": None}
    if candidate is not None:
        message.update(_fields(candidate))
        finish_reason = _finish_reason(candidate.get("finishReason"), "tool_calls" in message)
    elif "promptFeedback" in data:
        message["refusal"], finish_reason = _blocked(data["promptFeedback"]), "content_filter"
    else:
        raise ProviderError("upstream response has neither candidates nor promptFeedback")
    response_id, usage = data.get("responseId"), usage_from(data.get("usageMetadata"))
    answer: JSON = {
        "id": f"gen-{response_id}" if isinstance(response_id, str) and response_id else f"gen-{uuid.uuid4().hex}",
        "object": "chat.completion", "created": int(time.time()), "model": target.public_model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage.reported:
        answer["usage"] = usage_json(usage)
    return ChatResult(body=answer, usage=usage)


def _first_candidate(data: JSON) -> JSON | None:
    candidates = data.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def _fields(candidate: JSON) -> JSON:
    """`reasoning_content`, `content` and `tool_calls` of a candidate, each only when it has some."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    if type(parts) is list and len(parts) == 1 and type(part := parts[0]) is dict and type(part.get("text")) is str \
            and not part.get("thought"):  # a stream's common event: one text part
        return {"content": part["text"]}
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    for part in parts if isinstance(parts, list) else ():  # code execution, images ... are skipped
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif isinstance(part, dict) and isinstance(part.get("functionCall"), dict):
            calls.append(_tool_call(part))
    fields: JSON = {"reasoning_content": "".join(thoughts)} if thoughts else {}
    if texts:
        fields["content"] = "".join(texts)
    if calls:
        fields["tool_calls"] = calls
    return fields


def _tool_call(part: JSON) -> JSON:
    """An OpenAI tool call for a `functionCall` part, with Gemini's own id when it gave one (marked as its,
    `extra_content.google.function_call_id`, so that only such an id goes back: see `types.gemini_call_id`).
    Gemini 3 refuses the next turn unless the call comes back with its `thoughtSignature`, so the signature
    rides along where Google's own OpenAI endpoint puts it, `extra_content.google.thought_signature`, which
    clients built for that endpoint already send back."""
    call = part["functionCall"]
    own_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
    out: JSON = {"id": own_id or f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
        "name": str(call.get("name", "")), "arguments": orjson.dumps(call.get("args") or {}).decode()}}
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        out["extra_content"] = signed(signature)
    if own_id:
        out.setdefault("extra_content", {"google": {}})["google"]["function_call_id"] = own_id
    return out


def _finish_reason(raw: Any, tool_calls: bool) -> str:
    """Gemini's finishReason as OpenAI's; STOP after a function call is `tool_calls`."""
    mapped = _FINISH_REASONS.get(raw, "stop") if isinstance(raw, str) else "stop"
    return "tool_calls" if tool_calls and mapped == "stop" else mapped


def _blocked(feedback: Any) -> str:
    feedback = feedback if isinstance(feedback, dict) else {}
    text = f"Gemini blocked the prompt ({feedback.get('blockReason') or 'no reason given'})"
    return f"{text}: {feedback['blockReasonMessage']}" if feedback.get("blockReasonMessage") else text


def usage_from(meta: Any) -> Usage:
    """`Usage` from Gemini's `usageMetadata` (absent -> `reported=False`)."""
    if not isinstance(meta, dict):
        return Usage()
    count = {key: value for key, value in meta.items() if isinstance(value, int) and not isinstance(value, bool)}
    thoughts = count.get("thoughtsTokenCount", 0)
    return Usage(prompt_tokens=count.get("promptTokenCount", 0) + count.get("toolUsePromptTokenCount", 0),
                 completion_tokens=count.get("candidatesTokenCount", 0) + thoughts,
                 cached_tokens=count.get("cachedContentTokenCount", 0), reasoning_tokens=thoughts, reported=True)


def usage_json(usage: Usage) -> JSON:
    """An OpenAI `usage` object."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


# -- errors ----------------------------------------------------------------------------------------


def parse_error(status: int, body: bytes) -> UpstreamHTTPError:
    """A non-2xx answer: google.rpc.Status `{"error": {code, message, status, details}}` or any text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, list) and data:  # streamGenerateContent without alt=sse answers a JSON array
        data = data[0]
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return _status_error(data["error"], status)
    return _status_error({"message": body.decode("utf-8", "replace").strip()[:500]}, status)


def _status_error(error: Any, status: int) -> UpstreamHTTPError:
    """`code` is Gemini's status name (RESOURCE_EXHAUSTED, NOT_FOUND ...); `details` stay behind."""
    error = error if isinstance(error, dict) else {"message": str(error)}
    reason = status_phrase(status)
    type_ = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    details = error.get("details") if isinstance(error.get("details"), list) else []
    refused = any(isinstance(d, dict) and d.get("reason") in _KEY_REFUSED
                  for d in details)  # Gemini refuses a key with a 400
    return UpstreamHTTPError(status, str(error.get("message") or "") or reason, type_=type_,
                             code=str(error["status"]) if error.get("status") else None,
                             retryable=status == 429 or status >= 500, key_refused=refused,
                             retry_after=_retry_delay(details))


def _retry_delay(details: list[Any]) -> str | None:
    """A `google.rpc.RetryInfo` detail's `retryDelay` (a protobuf Duration, "38s" or "45.837906927s") as
    `Retry-After` seconds, rounded up: Gemini states its wait there and sends no `Retry-After` header."""
    for detail in details:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and (match := _DURATION.fullmatch(delay.strip())):
            return str(math.ceil(float(match.group(1))))
    return None


# -- stream ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class GeminiStreamState(StreamState):
    started: bool = False  # the first chunk (the one with the role) went out
    tool_calls: int = 0  # function calls relayed so far: the index of the next one
    pending: str | None = None  # the last finishReason of a chunk without usage: the end, unless more comes
    meta: Any = None  # the usageMetadata `usage` was read from: the next event's mostly restates it


def new_stream_state(req: ChatRequest, target: Target) -> StreamState:
    return GeminiStreamState(public_model=target.public_model, response_id=f"gen-{uuid.uuid4().hex}",
                             created=int(time.time()))


def parse_stream_event(state: StreamState, event: SSEEvent) -> list[JSON]:
    """One streamed `GenerateContentResponse` -> the `chat.completion.chunk`s to relay."""
    assert isinstance(state, GeminiStreamState), "a state made by gemini.new_stream_state"
    if state.done or not event.data.strip():
        return []
    data = load_object(event.data, "stream chunk")
    if data.get("error"):  # an error inside the 200 stream
        error = data["error"]
        code = error.get("code") if isinstance(error, dict) else None
        raise _status_error(error, code if isinstance(code, int) and code >= 400 and code in _HTTP_STATUSES else 502)
    meta = data.get("usageMetadata")
    if (final := isinstance(meta, dict)) and meta != state.meta:  # (the Developer API's is on every event)
        state.usage, state.meta = usage_from(meta), meta  # cumulative: the last one counts
    candidate = _first_candidate(data)
    if candidate is None:
        if "promptFeedback" in data:  # the prompt was blocked: no candidate will come
            return _finish(state, {"refusal": _blocked(data["promptFeedback"])}, "content_filter")
        return []
    delta = _fields(candidate)
    if calls := delta.get("tool_calls"):
        delta["tool_calls"] = [{"index": state.tool_calls + i, **call} for i, call in enumerate(calls)]
        state.tool_calls += len(calls)
    if reason := candidate.get("finishReason"):
        if final:
            return _finish(state, delta, _finish_reason(reason, state.tool_calls > 0))
        state.pending = reason  # maybe one of many (Vertex AI's every chunk): the body's end decides
    return [_chunk(state, delta, None)] if delta else []


def parse_stream_end(state: StreamState) -> list[JSON]:
    """The body's end: an answer whose finishReason came without usage ends here, with the last reason
    seen, as it would have at that chunk. A body that ends without any stays unfinished (truncated)."""
    assert isinstance(state, GeminiStreamState), "a state made by gemini.new_stream_state"
    if state.done or state.pending is None:
        return []
    return _finish(state, {}, _finish_reason(state.pending, state.tool_calls > 0))


def _finish(state: GeminiStreamState, delta: JSON, finish_reason: str) -> list[JSON]:
    """The last delta, the finish chunk and the usage chunk (`choices: []`) when usage was reported."""
    chunks = [_chunk(state, delta, None)] if delta else []
    chunks.append(_chunk(state, {}, finish_reason))
    if state.usage.reported:
        chunks.append({"id": state.response_id, "object": "chat.completion.chunk", "created": state.created,
                       "model": state.public_model, "choices": [], "usage": usage_json(state.usage)})
    state.finish_reason, state.done = finish_reason, True
    return chunks


def _chunk(state: GeminiStreamState, delta: JSON, finish_reason: str | None) -> JSON:
    if not state.started:
        delta, state.started = {"role": "assistant", **delta}, True
    return {"id": state.response_id, "object": "chat.completion.chunk", "created": state.created,
            "model": state.public_model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

