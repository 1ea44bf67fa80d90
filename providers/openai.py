"""Adapter for OpenAI's Chat Completions wire format and the servers that copy it.

Kind `openai` covers OpenAI, DeepSeek, xAI, OpenRouter, Ollama's `/v1` and vLLM. The request is built by
`openai_request` (the client's body, adapted for the target model), errors are read by `openai_errors`.
Answers and streams are read back here: passed through with the public model id, and the fields OpenAI's
schema requires but compatible servers (xAI, DeepSeek, Ollama, OpenRouter's providers) often omit are filled
in, so that what the client gets validates against OpenAI's schema: a choice's `index` (its position),
`finish_reason` (inferred; null in a chunk), `message` / `delta` (empty), `logprobs`; a tool call's `index`
in chunks, its `type`, its `id` (made up when missing) and its `arguments` as JSON text; a null
`system_fingerprint` is removed. Extra fields the upstream sends (DeepSeek's `reasoning_content`, the
`reasoning` of OpenRouter, Ollama and vLLM under its own name, OpenRouter's `provider`, `usage.cost`) are kept.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.openai_errors import parse_error as parse_error  # the adapter's error half
from providers.openai_errors import stream_error
from providers.openai_request import build_request as build_request  # the adapter's request half
from providers.types import (
    JSON,
    ChatRequest,
    ChatResult,
    ProviderError,
    SSEEvent,
    StreamState,
    Target,
    Usage,
    ends_by_itself,
    load_object,
)

STREAM_FRAMING = "sse"
NEEDS_INLINE_IMAGES = False  # OpenAI-compatible servers fetch image URLs themselves
TEXT_AT = ("choices", 0, "delta", "content")  # where a content chunk holds its text
VERBATIM_CHUNKS = True  # a content-only chunk's bytes say all its parse would (see registry.Adapter)
RESTATES: tuple[str, ...] = ()  # a content chunk states no usage
# what a client may set (OpenRouter's parameter names), shown by /v1/models/{id}/endpoints
SUPPORTED_PARAMETERS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "max_tokens",
                        "max_completion_tokens", "logit_bias", "logprobs", "top_logprobs", "seed", "response_format",
                        "structured_outputs", "stop", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort")
MAX_CHOICES = 128  # `n`: OpenAI's documented maximum, billed in one usage block
SENDS_TIERS = True  # passed through; OpenAI's answer names the tier that served it

_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_FINISH_REASON_MAP = {"eos": "stop", "eos_token": "stop", "error": "stop"}  # finish-reason-map.json


def max_output_tokens(body: JSON, target: Target) -> int | None:
    """None: this kind sends no more output tokens than the client asked for."""
    return None


# -- non-streamed answer ---------------------------------------------------------------------------


def parse_response(body: bytes, target: Target) -> ChatResult:
    """An upstream `chat.completion` as OpenAI's schema describes it, plus its usage."""
    data = load_object(body, "response")
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ProviderError("upstream response has no choices")
    data["model"] = target.public_model
    data.setdefault("object", "chat.completion")
    if not isinstance(data.get("created"), int):
        data["created"] = int(time.time())
    _drop_null_fingerprint(data)
    data["choices"] = choices = [choice for choice in choices if isinstance(choice, dict)]
    for i, choice in enumerate(choices):
        _fill_choice(choice, i)
    return ChatResult(data, usage_from(data.get("usage"), data.get("service_tier")))


def _drop_null_fingerprint(data: JSON) -> None:
    if data.get("system_fingerprint", "") is None:  # the schema allows a string or nothing
        del data["system_fingerprint"]


def _fill_choice(choice: JSON, position: int) -> None:
    _fill_index(choice, position)
    _fill_logprobs(choice)
    message = choice.get("message")
    if not isinstance(message, dict):
        message = choice["message"] = {}
    message.setdefault("role", "assistant")
    message.setdefault("content", None)
    message.setdefault("refusal", None)
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                _fill_call(call)
    choice["finish_reason"] = _finish_reason(choice.get("finish_reason"), bool(calls))


def _fill_index(item: JSON, position: int) -> None:
    if not isinstance(item.get("index"), int) or isinstance(item.get("index"), bool):
        item["index"] = position


def _fill_logprobs(choice: JSON) -> None:
    logprobs = choice.setdefault("logprobs", None)
    if isinstance(logprobs, dict):
        logprobs.setdefault("content", None)
        logprobs.setdefault("refusal", None)


def _fill_call(call: JSON) -> None:
    """A complete tool call (Ollama's may lack an id; some servers send the arguments as an object)."""
    if call.get("type", "function") == "function":
        call["type"] = "function"
    if not isinstance(call.get("id"), str):
        call["id"] = "call_" + uuid.uuid4().hex[:24]
    fn = call.get("function")
    if isinstance(fn, dict) and not isinstance(fn.get("arguments"), str):
        fn["arguments"] = orjson.dumps(fn.get("arguments") or {}).decode()


def _finish_reason(value: Any, tool_calls: bool) -> str:
    """OpenAI's enum; missing -> inferred, non-standard values per finish-reason-map.json, else stop."""
    if value is None:
        return "tool_calls" if tool_calls else "stop"
    if value.__class__ is not str:  # an object or a list is unhashable: no set lookup, and no reason we know
        return "stop"
    if value in _FINISH_REASONS:
        return value  # type: ignore[no-any-return]
    return _FINISH_REASON_MAP.get(value, "stop")


def usage_from(raw: Any, tier: Any = None) -> Usage:
    """`Usage` from an OpenAI-shaped `usage` object (absent or null -> `reported=False`), and the answer's
    `service_tier` (the processing tier that served it, priced apart).

    OpenAI counts reasoning inside `completion_tokens`; xAI (and Gemini's OpenAI-compatible endpoint) count it
    beside them, in `total_tokens` only (prompt + completion + reasoning). Such a usage object is restated in
    place the OpenAI way (its `completion_tokens` include the reasoning), which is also what is billed; so is
    one whose counts are not whole non-negative numbers (OpenRouter's float counts): the answer states the
    counts billed and recorded, not figures beside a `usage.cost` computed from others."""
    if not isinstance(raw, dict):
        return Usage(service_tier=tier if tier.__class__ is str else "")  # an estimate is priced at it
    prompt_details = _details(raw.get("prompt_tokens_details"))
    completion_details = _details(raw.get("completion_tokens_details"))
    cached = prompt_details.get("cached_tokens")
    if cached is None:
        cached = raw.get("prompt_cache_hit_tokens")  # DeepSeek
    prompt, completion = token_count(raw.get("prompt_tokens")), token_count(raw.get("completion_tokens"))
    reasoning = token_count(completion_details.get("reasoning_tokens"))
    if reasoning and token_count(raw.get("total_tokens")) == prompt + completion + reasoning:  # beside the output
        completion += reasoning
    if raw.get("prompt_tokens") != prompt or raw.get("completion_tokens") != completion \
            or raw["prompt_tokens"].__class__ is not int or raw["completion_tokens"].__class__ is not int:
        # the answer states the counts billed (a float count rounded up, a negative one as none), whole
        raw.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=token_count(cached),
        cache_write_tokens=token_count(prompt_details.get("cache_write_tokens")),  # OpenRouter
        reasoning_tokens=reasoning,
        reported=True,
        service_tier=tier if tier.__class__ is str else "",
    )


def _details(value: Any) -> JSON:
    """A `*_tokens_details` object; anything else (null, a list a server sent) holds no counts."""
    return value if value.__class__ is dict else {}


def token_count(value: Any) -> int:
    """A token count as an OpenAI-kind upstream may write it (its images' too): a float one (OpenRouter counts
    image output as e.g. 14417.92 tokens) rounded up, as billing rounds a cost up; anything else (a bool, a
    string, a negative number) is none."""
    if value.__class__ is int:
        return value if value >= 0 else 0  # type: ignore[no-any-return]
    if value.__class__ is float and value > 0:
        return math.ceil(min(value, 1e18))  # no JSON float is infinite; the gateway bounds what it bills
    return 0


# -- stream ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class OpenAIStreamState(StreamState):
    # (choice index, upstream tool-call index) -> (call id, index relayed): Ollama's /v1 sends every call of a
    # parallel set at index 0, each with its own id (ollama/ollama#15457), which clients would merge into one
    calls: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)
    legacy: bool = False  # a native /v1/completions stream: `text_completion` choices, no `delta`


def new_stream_state(req: ChatRequest, target: Target) -> StreamState:
    return OpenAIStreamState(public_model=target.public_model)


def parse_stream_event(state: StreamState, event: SSEEvent) -> list[JSON]:
    """One upstream SSE event -> the `chat.completion.chunk` objects to relay (0 or 1)."""
    if state.done:
        return []
    if event.data.strip() == b"[DONE]":
        state.done = True
        return _finish_unfinished(state)
    chunk = load_object(event.data, "stream chunk")
    error = chunk.get("error")
    if error:
        raise stream_error(error)
    chunk["model"] = state.public_model
    _record_chunk(state, chunk)
    return [chunk]


parse_stream_end = ends_by_itself  # the stream says when it is done


def _record_chunk(state: StreamState, chunk: JSON) -> None:
    """Fill what compatible servers omit and note id, created, finish_reason and usage in the state."""
    if isinstance(chunk.get("id"), str) and not state.response_id:
        state.response_id = chunk["id"]
    if isinstance(chunk.get("created"), int):
        state.created = state.created or chunk["created"]
    else:
        state.created = state.created or int(time.time())
        chunk["created"] = state.created
    chunk.setdefault("object", "chat.completion.chunk")
    _drop_null_fingerprint(chunk)
    choices = chunk.get("choices")
    if type(choices) is not list:
        chunk["choices"] = choices = []
    for choice in choices:  # a plain loop: a generator per chunk costs more than the check
        if type(choice) is not dict:
            chunk["choices"] = choices = [c for c in choices if isinstance(c, dict)]
            break
    for i, choice in enumerate(choices):
        if _plain_content_choice(choice):
            state.choices_seen.add(choice["index"])
            continue  # most chunks of a stream, and complete as they are: nothing to fill, nothing finished
        _fill_chunk_choice(choice, i, state)
        state.choices_seen.add(choice["index"])
        if choice["finish_reason"] is not None:
            state.finish_reason = choice["finish_reason"]
            state.choices_finished.add(choice["index"])
    if not state.service_tier and (tier := chunk.get("service_tier")).__class__ is str:
        state.service_tier = tier  # named on every chunk: a stream cut before its usage is billed at it
    if isinstance(chunk.get("usage"), dict):
        state.usage = usage_from(chunk["usage"], chunk.get("service_tier") or state.service_tier)


def _finish_unfinished(state: StreamState) -> list[JSON]:
    """At [DONE], the finish chunk a server left out (some end every choice with `finish_reason: null`): the
    choices begun and never finished end as a non-streamed answer's would (`tool_calls` when they called a
    tool, else `stop`), so the client still gets its finish chunk, which carries the bill."""
    unfinished = sorted(state.choices_seen - state.choices_finished)
    if not unfinished:
        return []
    legacy = isinstance(state, OpenAIStreamState) and state.legacy
    called = {c for c, _ in state.calls} if isinstance(state, OpenAIStreamState) else set()
    choices: list[JSON] = []
    for i in unfinished:
        reason = "tool_calls" if i in called else "stop"
        choices.append({"text": "", "index": i, "logprobs": None, "finish_reason": reason} if legacy
                       else {"index": i, "delta": {}, "logprobs": None, "finish_reason": reason})
        state.choices_finished.add(i)
        state.finish_reason = reason
    return [{"object": "text_completion" if legacy else "chat.completion.chunk",
             "created": state.created or int(time.time()), "model": state.public_model, "choices": choices}]


def _plain_content_choice(choice: JSON) -> bool:
    """A choice as OpenAI itself sends it mid-stream: an `index`, a `delta` without tool calls, a null
    `finish_reason` and no `logprobs` to complete. Checked first because it is the per-chunk path."""
    delta = choice.get("delta")
    return (type(delta) is dict and "tool_calls" not in delta and choice.get("finish_reason", False) is None
            and type(choice.get("index")) is int and choice.get("logprobs") is None
            and delta.get("role", "") is not None)


def _fill_chunk_choice(choice: JSON, position: int, state: StreamState) -> None:
    """`index`, `delta` (with its tool calls' `index`) and `finish_reason` (null until the last chunk). A
    streamed legacy `text_completion` choice (native /v1/completions) keeps its own shape: no `delta`."""
    _fill_index(choice, position)
    if "text" in choice and "delta" not in choice:
        if isinstance(state, OpenAIStreamState):
            state.legacy = True
        finish = choice.get("finish_reason")
        choice["finish_reason"] = None if finish is None else _finish_reason(finish, False)
        return
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        delta = choice["delta"] = {}
    if "role" in delta and delta["role"] is None:  # DeepSeek's finish chunk: the schema has no null role
        del delta["role"]
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for j, call in enumerate(calls):
            if isinstance(call, dict):
                _fill_index(call, j)
                _renumber(state, choice["index"], call)
                fn = call.get("function")
                if isinstance(fn, dict) and fn.get("arguments") is not None and not isinstance(fn["arguments"], str):
                    fn["arguments"] = orjson.dumps(fn["arguments"]).decode()  # sent whole, as an object
    if "logprobs" in choice:
        _fill_logprobs(choice)
    finish = choice.get("finish_reason")
    choice["finish_reason"] = None if finish is None else _finish_reason(finish, bool(calls))


def _renumber(state: StreamState, choice: int, call: JSON) -> None:
    """A tool-call delta's `index` as relayed: a new id at an index a call with another id holds is a new call,
    given the next free index; deltas without an id continue the call last seen at their index.

    The delta that opens a call without an id (vLLM's with some tool parsers, other servers' streams) gets one
    made up, as a non-streamed answer's call does, with its `type`: the client needs an id to answer the call
    with, and the SDKs join a call's ids, so an id the server sends later for that call is left out."""
    if not isinstance(state, OpenAIStreamState):
        return
    key, call_id = (choice, call["index"]), call.get("id")
    call_id = call_id if isinstance(call_id, str) else ""
    known = state.calls.get(key)
    if known is None or (call_id and known[0] and call_id != known[0]):
        taken = [relay for (c, _), (_, relay) in state.calls.items() if c == choice]
        relay = call["index"] if known is None and call["index"] not in taken else max(taken, default=-1) + 1
        state.calls[key] = (call_id, relay)
        if not call_id:
            call["id"] = "call_" + uuid.uuid4().hex[:24]
            call.setdefault("type", "function")
    elif call_id and not known[0]:
        state.calls[key] = (call_id, known[1])
        del call["id"]  # the client got one when the call opened
    call["index"] = state.calls[key][1]


# -- a whole answer as its stream ------------------------------------------------------------------


_STREAM_WIDE = ("service_tier", "system_fingerprint")  # answer fields a stream repeats on each chunk


def answer_chunks(answer: JSON) -> list[JSON]:
    """A whole chat answer (or legacy completion) as the chunks a stream of it carries, in OpenAI's order: for
    each choice the role, its text (content, reasoning, refusal), its tool calls and its finish; then the usage
    (`choices: []`) when the answer has one."""
    legacy = answer.get("object") == "text_completion"
    head = {"id": answer.get("id"), "object": "text_completion" if legacy else "chat.completion.chunk",
            "created": answer.get("created"), "model": answer.get("model")}
    for name in _STREAM_WIDE:  # a stream names them on every chunk (the tier is what the answer is charged at)
        if answer.get(name) is not None:
            head[name] = answer[name]
    chunks: list[JSON] = []
    for i, choice in enumerate(answer.get("choices") or ()):
        index = choice.get("index", i)
        if legacy:
            deltas: list[JSON] = [{"text": choice.get("text") or ""}]
        else:
            message = choice.get("message") or {}
            text = {k: v for k, v in message.items() if k not in ("role", "tool_calls") and v is not None}
            calls = [{"index": j, **call} for j, call in enumerate(message.get("tool_calls") or ())]
            deltas = [{"role": "assistant", "content": ""}, *([text] if text else []),
                      *([{"tool_calls": calls}] if calls else [])]
        for delta in deltas:
            chunks.append({**head, "choices": [_choice(index, delta, None, legacy)]})
        finish = _choice(index, {"text": ""} if legacy else {}, choice.get("finish_reason") or "stop", legacy)
        chunks.append({**head, "choices": [finish]})
    if isinstance(answer.get("usage"), dict):
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return chunks


def _choice(index: int, delta: JSON, finish_reason: str | None, legacy: bool) -> JSON:
    if legacy:  # a legacy completion chunk's choice holds its `text` itself
        return {"index": index, **delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
