"""Adapter for Anthropic's Messages API (`POST {base_url}/v1/messages`): answers, errors and streams
read back into OpenAI's chat shapes. The request translation lives in `anthropic_request`.

Answers: `thinking` text is exposed as `reasoning_content` (as DeepSeek does, in stream deltas too). Claude
refuses the next turn of a tool loop with thinking unless the calling turn comes back with its thinking blocks
(signatures included, `redacted_thinking` too), so the blocks before a tool call ride on that call as
`extra_content.anthropic.thinking_blocks` (streamed: in the `delta.tool_calls[i]` that opens the call), beside
where Gemini's thought signature rides; `anthropic_request` puts them back. A turn without tool calls carries
none: Claude does not want its thinking back there. Token counts are read by `anthropic_usage`.
A call of the `json_response_format` tool (how `anthropic_request` carries `response_format`) is the answer:
its input becomes the message `content` as JSON text (streamed: its `input_json_delta` fragments become
content deltas), it is no tool call, and the answer's finish_reason is `stop` rather than `tool_calls`.
Non-streamed, text blocks beside it (Anthropic writes none when the tool is forced) are left out, so the
content stays parseable JSON.

Pure and synchronous: no I/O, no aiohttp. `ProviderError` from `build_request` means the client's request
cannot be expressed for Anthropic (bad tool-call arguments JSON, an unsupported part or role).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers import anthropic_request, reasoning
from providers.anthropic_request import JSON_TOOL, translate_body
from providers.anthropic_usage import add_counts, openai_usage, tier_of, usage_from, usage_of
from providers.types import (
    JSON,
    THINKING_BLOCKS,
    ChatRequest,
    ChatResult,
    ProviderError,
    SSEEvent,
    StreamState,
    Target,
    UpstreamHTTPError,
    UpstreamRequest,
    claude_signed,
    ends_by_itself,
    is_utf8,
    load_object,
    status_phrase,
)

STREAM_FRAMING = "sse"
NEEDS_INLINE_IMAGES = False
TEXT_AT = ("delta", "text")  # where a text delta holds its text
VERBATIM_CHUNKS = True  # a text delta's bytes say all its parse would, past the stream's start (see registry.Adapter)
RESTATES: tuple[str, ...] = ()  # a text delta states no usage
SUPPORTED_PARAMETERS = ("temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "stop", "tools",
                        "tool_choice", "parallel_tool_calls", "response_format", "structured_outputs", "reasoning",
                        "reasoning_effort")  # what the translation carries
MAX_CHOICES = 1  # the Messages API has no `n`: one answer per request
SENDS_TIERS = True  # the native route passes them; Claude's usage names its tier either way
API_VERSION = "2023-06-01"
FAST_MODE_BETA = "fast-mode-2026-02-01"  # `speed: "fast"` is refused without it on some models

# finish-reason-map.json (LiteLLM); model_context_window_exceeded is the SDK's newer "ran out of room"
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                   "refusal": "content_filter", "compaction": "length", "model_context_window_exceeded": "length"}
_RETRYABLE_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})


# -- request ---------------------------------------------------------------------------------------


def build_request(req: ChatRequest, target: Target) -> UpstreamRequest:
    """POST {base_url}/v1/messages with the client's chat request in Anthropic's shape."""
    return messages_request(translate_body(req, target), target, req.stream)


def max_output_tokens(body: JSON, target: Target) -> int | None:
    """The max_tokens the upstream request will carry, which the hold must cover: Claude requires one, so a
    request naming none is sent the model's (else 4096, whatever `billing.default_max_output_tokens` says),
    and thinking raises it to make room for its budget. None for a request the translation refuses
    (`build_request` reports that)."""
    if not any(body.get(name) is not None for name in reasoning.FIELDS):
        return anthropic_request.max_tokens(body, target)
    try:
        return int(translate_body(ChatRequest(body=body, stream=False), target)["max_tokens"])
    except ProviderError:
        return None


def messages_request(body: JSON, target: Target, stream: bool, beta: str = "") -> UpstreamRequest:
    """POST {base_url}/v1/messages with a body already in Anthropic's shape (`anthropic-beta` when given, with fast
    mode's added for a body asking for it: a preset's or a chat request's `speed` comes from no Anthropic client)."""
    if body.get("speed") == "fast" and FAST_MODE_BETA not in beta:
        beta = f"{beta},{FAST_MODE_BETA}" if beta else FAST_MODE_BETA
    headers = {"anthropic-version": API_VERSION, "content-type": "application/json",
               "accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["x-api-key"] = target.api_key
    if beta:
        headers["anthropic-beta"] = beta
    headers.update(target.headers)
    return UpstreamRequest(method="POST", url=f"{target.base_url}/v1/messages", headers=headers,
                           body=orjson.dumps(body), stream=stream)


# -- non-streamed answer ---------------------------------------------------------------------------


def parse_response(body: bytes, target: Target) -> ChatResult:
    """An Anthropic `message` as an OpenAI `chat.completion`, plus its usage."""
    data = load_object(body, "response")
    content = data.get("content")
    if not isinstance(content, list) or not isinstance(data.get("id"), str):
        raise ProviderError("upstream response is not an Anthropic message")
    texts, thoughts, calls, json_answer = [], [], [], None
    signed: list[JSON] = []  # thinking blocks waiting for the tool call they precede
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind in THINKING_BLOCKS:
            thoughts.append(str(block.get("thinking") or "") if kind == "thinking" else "")
            signed += _carried(block)
        elif kind == "tool_use" and block.get("name") == JSON_TOOL:
            json_answer = orjson.dumps(block.get("input") or {}).decode()
        elif kind == "tool_use":
            call: JSON = {"id": str(block.get("id")), "type": "function", "function": {
                "name": str(block.get("name")), "arguments": orjson.dumps(block.get("input") or {}).decode()}}
            if signed:
                call["extra_content"], signed = claude_signed(signed), []
            calls.append(call)
    text = json_answer if json_answer is not None else "".join(texts) if texts else None
    message: JSON = {"role": "assistant", "content": text, "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if any(thoughts):
        message["reasoning_content"] = "".join(thoughts)
    usage = usage_from(data.get("usage"))
    answer = {
        "id": data["id"], "object": "chat.completion", "created": int(time.time()), "model": target.public_model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(data.get("stop_reason"), bool(calls))}],
    }
    if usage.reported:
        answer["usage"] = openai_usage(usage)
    return ChatResult(body=answer, usage=usage)


def _carried(block: JSON) -> list[JSON]:
    """A thinking block as it must come back to Claude (nothing when it has no signature to prove it)."""
    if block.get("type") == "redacted_thinking":
        return [{"type": "redacted_thinking", "data": block["data"]}] if isinstance(block.get("data"), str) else []
    signature = block.get("signature")
    if not isinstance(signature, str) or not signature:
        return []
    return [{"type": "thinking", "thinking": str(block.get("thinking") or ""), "signature": signature}]


def finish_reason(stop_reason: Any, tool_calls: bool) -> str:
    """OpenAI's finish_reason for an Anthropic stop_reason."""
    if stop_reason is None and tool_calls:
        return "tool_calls"
    if stop_reason == "tool_use" and not tool_calls:
        return "stop"  # the only tool called was the response_format one: the answer is its content
    return _FINISH_REASONS.get(str(stop_reason), "stop")


# -- errors ----------------------------------------------------------------------------------------


def parse_error(status: int, body: bytes) -> UpstreamHTTPError:
    """A non-2xx answer: Anthropic's `{"type": "error", "error": {"type", "message"}}` or anything else."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):  # a proxy's HTML page, an empty body, some other shape
        error = {"message": body.decode("utf-8", "replace").strip()[:500]}
    code = str(error["type"]) if error.get("type") else None  # "overloaded_error", "rate_limit_error", ...
    return UpstreamHTTPError(status, str(error.get("message") or "") or status_phrase(status),
                             type_=code or "upstream_error", code=code, retryable=status == 429 or status >= 500)


# -- stream ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class AnthropicStreamState(StreamState):
    tool_index: dict[Any, int] = field(default_factory=dict)  # content block index -> OpenAI tool_calls index
    tool_args: set[Any] = field(default_factory=set)  # content block indexes of calls some arguments went out for
    stop_reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)  # Anthropic's token counts so far
    answer_block: Any = None  # content block index of the response_format tool's call, once it started
    answer_sent: bool = False  # some of that call's input went out as content
    thinking: dict[Any, JSON] = field(default_factory=dict)  # content block index -> thinking block being read
    signed: list[JSON] = field(default_factory=list)  # finished thinking blocks waiting for the next tool call


def new_stream_state(req: ChatRequest, target: Target) -> StreamState:
    return AnthropicStreamState(public_model=target.public_model)


def parse_stream_event(state: StreamState, event: SSEEvent) -> list[JSON]:
    """One Anthropic SSE event -> the `chat.completion.chunk` objects to relay (0 to 2)."""
    if not isinstance(state, AnthropicStreamState):
        raise TypeError("the state must come from providers.anthropic.new_stream_state")
    if state.done:
        return []
    data = load_object(event.data, "stream event")
    name = event.event or str(data.get("type") or "")
    handler = _HANDLERS.get(name)
    return handler(state, data) if handler else []  # ping and unknown (future) events carry nothing for us


parse_stream_end = ends_by_itself  # the stream says when it is done


def _message_start(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    message = data.get("message") or {}
    state.response_id = str(message.get("id") or "")
    add_counts(state.counts, message.get("usage"))
    state.service_tier = tier_of(message.get("usage")) or state.service_tier
    # so far: a stream cut short is billed its exact input all the same
    state.usage = usage_of(state.counts, state.service_tier)
    return [_chunk(state, {"role": "assistant", "content": ""})]


def _block_start(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    block = data.get("content_block") or {}
    kind = block.get("type")
    if kind == "tool_use" and block.get("name") == JSON_TOOL:
        state.answer_block = data.get("index")
        return _answer_text(state, orjson.dumps(block["input"]).decode() if block.get("input") else "")
    if kind == "tool_use":
        index = state.tool_index[data.get("index")] = len(state.tool_index)
        args = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        if args:
            state.tool_args.add(data.get("index"))
        call = {"index": index, "id": str(block.get("id")), "type": "function",
                "function": {"name": str(block.get("name")), "arguments": args}}
        if state.signed:
            call["extra_content"], state.signed = claude_signed(state.signed), []
        return [_chunk(state, {"tool_calls": [call]})]
    if kind == "thinking":
        state.thinking[data.get("index")] = {"type": "thinking", "thinking": str(block.get("thinking") or ""),
                                             "signature": str(block.get("signature") or "")}
    elif kind == "redacted_thinking":
        state.signed += _carried(block)
    return []  # text and thinking blocks start empty; their deltas follow


def _block_delta(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    delta = data.get("delta") or {}
    kind = delta.get("type")
    if kind == "text_delta" and delta.get("text"):
        return [_chunk(state, {"content": delta["text"]})]
    thinking = state.thinking.get(data.get("index"))
    if kind == "signature_delta" and thinking is not None:
        thinking["signature"] += str(delta.get("signature") or "")
    if kind == "thinking_delta" and delta.get("thinking"):
        if thinking is not None:
            thinking["thinking"] += str(delta["thinking"])
        return [_chunk(state, {"reasoning_content": delta["thinking"]})]
    if kind == "input_json_delta" and state.answer_block is not None and data.get("index") == state.answer_block:
        return _answer_text(state, str(delta.get("partial_json") or ""))
    index = state.tool_index.get(data.get("index"))
    if kind == "input_json_delta" and delta.get("partial_json") and index is not None:
        state.tool_args.add(data.get("index"))
        call = {"index": index, "function": {"arguments": delta["partial_json"]}}
        return [_chunk(state, {"tool_calls": [call]})]
    return []  # signature_delta, citations_delta, empty fragments, server tool input


# a text or tool-input delta as Claude writes it (no spaces, these keys in this order): its block's index, which
# kind, and the one JSON string it carries, escapes and all
_WRITTEN_DELTA = re.compile(rb'\{"type":"content_block_delta","index":(0|[1-9][0-9]*),"delta":\{"type":"'
                            rb'(text_delta","text|input_json_delta","partial_json)":"'
                            rb'([^"\\\x00-\x1f]*(?:\\[^\x00-\x1f][^"\\\x00-\x1f]*)*)"\}\}')


def delta_text_bytes(state: StreamState, data: bytes) -> int | None:
    """What `parse_stream_event` makes of a `content_block_delta` event's data, without parsing it: the UTF-8
    bytes of text or tool-call arguments its chunk would hold (0 for none), the state updated as it would be;
    None, the state untouched, for any other shape, which must be parsed. A relay that sends Claude's events on
    as they came (the native route) needs no more of its text deltas and tool-input fragments than this count,
    and a long answer is thousands of them."""
    if not isinstance(state, AnthropicStreamState) or state.done or state.answer_block is not None:
        return None
    match = _WRITTEN_DELTA.fullmatch(data)
    if match is None:
        return None
    index, kind, raw = match.groups()
    if b"\\" in raw:
        try:
            n = len(orjson.loads(b'"' + raw + b'"').encode())
        except (orjson.JSONDecodeError, UnicodeEncodeError):
            return None
    elif raw.isascii() or is_utf8(raw):
        n = len(raw)
    else:
        return None
    if kind != b"text_delta\",\"text":
        if not n or int(index) not in state.tool_index:
            return 0
        state.tool_args.add(int(index))
    if n:
        state.created = state.created or int(time.time())  # as `_chunk` stamps the chunk it would make
    return n


def _block_stop(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    """The end of a thinking block (kept for the next tool call), of a tool call or of the response_format
    tool's call: `{}` as the arguments (as content) if its input came without fragments, as Claude streams a
    call of a tool without parameters (OpenAI's arguments are JSON text, `{}` for no arguments)."""
    thinking = state.thinking.pop(data.get("index"), None)
    if thinking is not None:
        state.signed += _carried(thinking)
    index = state.tool_index.get(data.get("index"))
    if index is not None and data.get("index") not in state.tool_args:
        state.tool_args.add(data.get("index"))
        return [_chunk(state, {"tool_calls": [{"index": index, "function": {"arguments": "{}"}}]})]
    if state.answer_block is not None and data.get("index") == state.answer_block and not state.answer_sent:
        return _answer_text(state, "{}")
    return []


def _answer_text(state: AnthropicStreamState, text: str) -> list[JSON]:
    if not text:
        return []
    state.answer_sent = True
    return [_chunk(state, {"content": text})]


def _message_delta(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    delta = data.get("delta") or {}
    if delta.get("stop_reason"):
        state.stop_reason = str(delta["stop_reason"])
    add_counts(state.counts, data.get("usage"))
    state.service_tier = tier_of(data.get("usage")) or state.service_tier
    state.usage = usage_of(state.counts, state.service_tier)
    return []


def _message_stop(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    state.finish_reason = finish_reason(state.stop_reason, bool(state.tool_index))
    state.done = True
    chunks = [_chunk(state, {}, state.finish_reason)]
    state.usage = usage_of(state.counts, state.service_tier)
    if state.usage.reported:
        usage_chunk = _chunk(state, {})
        usage_chunk["choices"] = []
        usage_chunk["usage"] = openai_usage(state.usage)
        chunks.append(usage_chunk)
    return chunks


def _error_event(state: AnthropicStreamState, data: JSON) -> list[JSON]:
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    kind = str(error.get("type") or "api_error")
    raise UpstreamHTTPError(503 if kind == "overloaded_error" else 502,
                            str(error.get("message") or "upstream error in stream"),
                            type_=kind, code=kind, retryable=kind in _RETRYABLE_TYPES)


_HANDLERS: dict[str, Callable[[AnthropicStreamState, JSON], list[JSON]]] = {
    "message_start": _message_start,
    "content_block_start": _block_start,
    "content_block_delta": _block_delta,
    "content_block_stop": _block_stop,
    "message_delta": _message_delta,
    "message_stop": _message_stop,
    "error": _error_event,
}


def _chunk(state: StreamState, delta: JSON, finish_reason: str | None = None) -> JSON:
    state.created = state.created or int(time.time())
    return {"id": state.response_id, "object": "chat.completion.chunk", "created": state.created,
            "model": state.public_model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

