"""Adapter for Google's Gemini API: `generateContent` and `streamGenerateContent?alt=sse`.

Decisions where the formats differ:
- system/developer messages, wherever they stand, go to `systemInstruction`; `tool` results are
  `functionResponse` parts of a `user` turn named after the assistant call with that tool_call_id; turns of
  one role are merged; empty texts are left out (Gemini refuses them). `n` > 1 is a `ProviderError`.
- images, audio and files must be base64 data: URIs (the gateway inlines https image URLs first).
- tool schemas within the OpenAPI subset of Gemini's `Schema` go as `parameters`, others (strict OpenAI tools:
  `additionalProperties`, type lists, `$ref`) as `parametersJsonSchema`; the same for `responseSchema`.
- thought parts become `reasoning_content`; thought signatures, code execution, grounding and image output
  are dropped. Calls get ids `call_` + 24 random hex digits (unique across turns, unlike a counter).
- a prompt blocked before any candidate is an answer (Gemini said 200 and bills the prompt): content None,
  `refusal` naming the block reason, finish_reason `content_filter`.
- usage: prompt = promptTokenCount + toolUsePromptTokenCount (billed as input; the total is then Gemini's
  totalTokenCount), completion = candidatesTokenCount + thoughtsTokenCount.
- streams have no [DONE]: the chunk with a finishReason (only the last one has it) ends the answer with a
  finish chunk, a usage chunk when usage was reported, and `done`.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

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
)

STREAM_FRAMING = "sse"
NEEDS_INLINE_IMAGES = True  # Gemini takes image bytes only
SUPPORTED_PARAMETERS = ("temperature", "top_p", "top_k", "seed", "max_tokens", "max_completion_tokens", "stop",
                        "response_format", "tools", "tool_choice")  # what the translation carries
MAX_CHOICES = 1  # see `_generation_config`

# wire/finish-reason-map.json "gemini_vertex" (LiteLLM); the rest (STOP, MALFORMED_FUNCTION_CALL, ...) is "stop"
_FINISH_REASONS = {"MAX_TOKENS": "length", **dict.fromkeys((
    "SAFETY", "RECITATION", "LANGUAGE", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "NO_IMAGE", "IMAGE_RECITATION", "IMAGE_OTHER", "ESCALATION"), "content_filter")}
_SYSTEM_ROLES = frozenset({"system", "developer"})
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
_SAMPLING = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "seed": "seed"}  # plain renames
_MAX_TOKENS_FIELDS = ("max_completion_tokens", "max_tokens")
# the fields of Gemini's OpenAPI-subset `Schema`; a schema using others goes as JSON Schema instead
_SCHEMA_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required",
    "anyOf", "propertyOrdering", "default", "example", "minItems", "maxItems", "minLength", "maxLength",
    "pattern", "minimum", "maximum", "minProperties", "maxProperties"})
_NO_PARAMETERS = frozenset({"type", "properties", "required", "additionalProperties", "$schema"})
_ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
_HTTP_STATUSES = frozenset(int(status) for status in HTTPStatus)


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
    return UpstreamRequest("POST", url, headers, orjson.dumps(gemini_body(body)), req.stream)


def gemini_body(body: JSON) -> JSON:
    """The `GenerateContentRequest` for an OpenAI chat request body (which is left unchanged)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ProviderError("messages must be a list")
    contents, system = _contents(messages)
    out: JSON = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    if body.get("tools"):
        out["tools"] = [{"functionDeclarations": [_declaration(tool) for tool in body["tools"]]}]
    if body.get("tool_choice") is not None:
        out["toolConfig"] = {"functionCallingConfig": _calling_config(body["tool_choice"])}
    if config := _generation_config(body):
        out["generationConfig"] = config
    return out


def _contents(messages: list[Any]) -> tuple[list[JSON], list[JSON]]:
    """(contents, systemInstruction parts); tool results find their function's name by tool_call_id."""
    contents: list[JSON] = []
    system: list[JSON] = []
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in _SYSTEM_ROLES:
            system += [{"text": text} for text in _texts(message.get("content"), where)]
            continue
        if role == "user":
            gemini_role, parts = "user", _parts(message.get("content"), where)
        elif role == "assistant":
            gemini_role, parts = "model", _assistant_parts(message, call_names, where)
        elif role == "tool":
            gemini_role, parts = "user", [_function_response(message, call_names, where)]
        else:
            raise ProviderError(f"{where} has an unsupported role {role!r}")
        if parts and contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"] += parts
        elif parts:
            contents.append({"role": gemini_role, "parts": parts})
    return contents, system


def _texts(content: Any, where: str) -> list[str]:
    """The non-empty texts of a system or tool message's content (a string or text parts)."""
    if content is None or isinstance(content, str):
        return [content] if content else []
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return [part["text"] for part in content if isinstance(part.get("text"), str) and part["text"]]
    raise ProviderError(f"{where}.content must be a string or a list of text parts")


def _parts(content: Any, where: str) -> list[JSON]:
    """Gemini parts of a user or assistant content: text, and images/audio/files as inlineData."""
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise ProviderError(f"{where}.content must be a string or a list of parts")
    parts: list[JSON] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal") and isinstance(part.get(kind), str):
            parts += [{"text": part[kind]}] if part[kind] else []
        elif kind == "image_url":
            image = part.get("image_url")
            parts.append(_inline_data(image.get("url") if isinstance(image, dict) else image, where))
        elif kind == "input_audio" and isinstance(audio := part.get("input_audio"), dict) and audio.get("data"):
            parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format') or 'wav'}", "data": audio["data"]}})
        elif kind == "file" and isinstance(file := part.get("file"), dict) and file.get("file_data"):
            parts.append(_inline_data(file["file_data"], where))
        else:
            raise ProviderError(f"{where}: a content part of type {kind!r} cannot be sent to Gemini")
    return parts


def _inline_data(url: Any, where: str) -> JSON:
    """`inlineData` from a base64 data: URI; Gemini does not fetch URLs."""
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        raise ProviderError(f"{where}: Gemini takes image bytes only and the image URL {url[:100]!r} was not "
                            "inlined; send it as a data: URI")
    header, comma, data = url.partition(",") if isinstance(url, str) else ("", "", "")
    mime_type = header.removeprefix("data:").split(";")[0]
    if not (header.startswith("data:") and comma and header.endswith(";base64") and mime_type):
        raise ProviderError(f"{where}: images and files must be base64 data: URIs (data:<type>;base64,...)")
    return {"inlineData": {"mimeType": mime_type, "data": data}}


def _assistant_parts(message: JSON, call_names: dict[str, str], where: str) -> list[JSON]:
    parts = _parts(message.get("content"), where)
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ProviderError(f"{where}: a tool call has no function name")
        try:
            args = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError as exc:
            raise ProviderError(f"{where}: tool call arguments are not valid JSON: {exc}") from exc
        if not isinstance(args, dict):
            raise ProviderError(f"{where}: tool call arguments must be a JSON object")
        if isinstance(call.get("id"), str):
            call_names[call["id"]] = function["name"]
        parts.append({"functionCall": {"name": function["name"], "args": args}})
    return parts


def _function_response(message: JSON, call_names: dict[str, str], where: str) -> JSON:
    """A `functionResponse` part: the JSON object the tool returned, else {"content": its text}."""
    call_id = message.get("tool_call_id")
    name = call_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        raise ProviderError(f"{where}: tool_call_id {call_id!r} matches no earlier assistant tool call")
    text = "".join(_texts(message.get("content"), where))
    try:
        response = orjson.loads(text)
    except orjson.JSONDecodeError:
        response = None
    return {"functionResponse": {"name": name, "response": response if isinstance(response, dict)
                                 else {"content": text}}}


def _declaration(tool: Any) -> JSON:
    function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ProviderError("only function tools with a name can be sent to Gemini")
    declaration: JSON = {"name": function["name"]}
    if function.get("description"):
        declaration["description"] = function["description"]
    params = function.get("parameters")
    # Gemini refuses an OBJECT schema without properties: a function without parameters sends none
    if isinstance(params, dict) and (params.get("properties") or not set(params) <= _NO_PARAMETERS):
        declaration["parameters" if _fits_gemini_schema(params) else "parametersJsonSchema"] = params
    return declaration


def _fits_gemini_schema(schema: Any) -> bool:
    """Whether a JSON Schema stays inside the OpenAPI subset of Gemini's `Schema` message."""
    if not isinstance(schema, dict) or not set(schema) <= _SCHEMA_KEYS or not isinstance(schema.get("type", ""), str):
        return False
    properties, any_of = schema.get("properties", {}), schema.get("anyOf", [])
    if not isinstance(properties, dict) or not isinstance(any_of, list):
        return False
    children = [*properties.values(), *any_of, *([schema["items"]] if "items" in schema else [])]
    return all(_fits_gemini_schema(child) for child in children)


def _calling_config(choice: Any) -> JSON:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise ProviderError(f"tool_choice {choice!r} cannot be sent to Gemini")


def _generation_config(body: JSON) -> JSON:
    if body.get("n") not in (None, 1):
        raise ProviderError("Gemini models give one choice per request: n must be 1")
    config: JSON = {}
    max_tokens = next((body[k] for k in _MAX_TOKENS_FIELDS if body.get(k) is not None), None)
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    config.update({name: body[field] for field, name in _SAMPLING.items() if body.get(field) is not None})
    if stop := body.get("stop"):
        config["stopSequences"] = [stop] if isinstance(stop, str) else stop
    fmt = body.get("response_format")
    fmt = fmt if isinstance(fmt, dict) else {}
    if fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
    schema = fmt.get("json_schema", {}).get("schema") if isinstance(fmt.get("json_schema"), dict) else None
    if fmt.get("type") == "json_schema" and isinstance(schema, dict):
        config["responseSchema" if _fits_gemini_schema(schema) else "responseJsonSchema"] = schema
    return config


# -- non-streamed answer ---------------------------------------------------------------------------


def parse_response(body: bytes, target: Target) -> ChatResult:
    """A `GenerateContentResponse` as an OpenAI `chat.completion` (first candidate) and its usage."""
    data = _load_object(body, "response")
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
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[JSON] = []
    for part in parts if isinstance(parts, list) else ():  # code execution, images ... are skipped
        if isinstance(part, dict) and isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif isinstance(part, dict) and isinstance(call := part.get("functionCall"), dict):
            calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {
                "name": str(call.get("name", "")), "arguments": orjson.dumps(call.get("args") or {}).decode()}})
    fields: JSON = {"reasoning_content": "".join(thoughts)} if thoughts else {}
    if texts:
        fields["content"] = "".join(texts)
    if calls:
        fields["tool_calls"] = calls
    return fields


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
    reason = HTTPStatus(status).phrase if status in _HTTP_STATUSES else f"HTTP {status}"
    type_ = "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
    return UpstreamHTTPError(status, str(error.get("message") or "") or reason, type_=type_,
                             code=str(error["status"]) if error.get("status") else None,
                             retryable=status == 429 or status >= 500)


# -- stream ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class GeminiStreamState(StreamState):
    started: bool = False  # the first chunk (the one with the role) went out
    tool_calls: int = 0  # function calls relayed so far: the index of the next one


def new_stream_state(req: ChatRequest, target: Target) -> StreamState:
    return GeminiStreamState(public_model=target.public_model, response_id=f"gen-{uuid.uuid4().hex}",
                             created=int(time.time()))


def parse_stream_event(state: StreamState, event: SSEEvent) -> list[JSON]:
    """One streamed `GenerateContentResponse` -> the `chat.completion.chunk`s to relay."""
    assert isinstance(state, GeminiStreamState), "a state made by gemini.new_stream_state"
    if state.done or not event.data.strip():
        return []
    data = _load_object(event.data, "stream chunk")
    if data.get("error"):  # an error inside the 200 stream
        error = data["error"]
        code = error.get("code") if isinstance(error, dict) else None
        raise _status_error(error, code if isinstance(code, int) and code >= 400 and code in _HTTP_STATUSES else 502)
    if isinstance(data.get("usageMetadata"), dict):
        state.usage = usage_from(data["usageMetadata"])  # cumulative: the last one counts
    candidate = _first_candidate(data)
    if candidate is None:
        if "promptFeedback" in data:  # the prompt was blocked: no candidate will come
            return _finish(state, {"refusal": _blocked(data["promptFeedback"])}, "content_filter")
        return []
    delta = _fields(candidate)
    if calls := delta.get("tool_calls"):
        delta["tool_calls"] = [{"index": state.tool_calls + i, **call} for i, call in enumerate(calls)]
        state.tool_calls += len(calls)
    if candidate.get("finishReason"):
        return _finish(state, delta, _finish_reason(candidate["finishReason"], state.tool_calls > 0))
    return [_chunk(state, delta, None)] if delta else []


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


def _load_object(raw: bytes, what: str) -> JSON:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"upstream {what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProviderError(f"upstream {what} is not a JSON object")
    return data
