"""Anthropic's Messages format in front of any provider: the reverse of `providers.anthropic`.

A client speaking Anthropic's API (the Anthropic SDK, Claude Code) sends a Messages request; it becomes the
gateway's internal OpenAI chat request, which every adapter already serves, and the OpenAI-shaped answer
(or stream of chunks) becomes an Anthropic `message` (or its SSE events). Translation decisions:

- `system` (a string or text blocks) -> one leading system message; `cache_control` marks are kept on
  text parts. `stop_sequences` -> `stop`; `metadata.user_id` -> `user`; `top_k`, `thinking`,
  `service_tier` have no OpenAI equivalent and stay behind (a native Anthropic route keeps them).
- Blocks: text -> text parts; images (base64 / url sources) -> `image_url` (data URI / URL);
  `tool_use` -> assistant `tool_calls` (input as JSON text); each `tool_result` -> a `tool` message placed
  before the rest of its user turn; `thinking` / `redacted_thinking` blocks of earlier turns are dropped
  (one of ours still hands its Gemini signature to the call after it, below).
- Tools: `input_schema` -> `parameters`; `tool_choice` auto/any/tool/none -> auto/required/named/none;
  `disable_parallel_tool_use` -> `parallel_tool_calls: false`.
- Answers: `reasoning_content` -> a `thinking` block, `content` -> a `text` block, `tool_calls` ->
  `tool_use` blocks; finish_reason stop/length/tool_calls/content_filter -> stop_reason
  end_turn/max_tokens/tool_use/refusal. Usage: input_tokens exclude cache reads and writes, as Anthropic's do.
- Gemini thought signatures: Gemini 3 refuses the next turn unless each signed function call comes back with
  its signature, which chat carries as the tool call's `extra_content.google.thought_signature`. Anthropic's
  format has no field on `tool_use` for it, but its clients keep `thinking` blocks and their signatures (Claude
  wants them back with tool use), so the signature travels as the `signature` of a thinking block right
  before the call's `tool_use`: the reasoning block when that is the block just before, else a new block
  with empty `thinking`. The rule that brings it back: a thinking block directly followed by a `tool_use`,
  whose signature starts with `GEMINI_SIGNATURE` ("gemini:"), gives that call the rest of the signature.
  The prefix marks the signatures this module wrote: a conversation begun on Claude carries thinking blocks
  with Anthropic's own signatures before its tool_use blocks, even with empty `thinking` (Claude's
  `display: "omitted"`), and Gemini 3 refuses a signature it did not make ("Corrupted thought signature"),
  where it accepts earlier turns with none. No base64 signature starts with "gemini:", so no foreign one is
  ever handed on; a client that never talks to Gemini sees and sends nothing new. When such a conversation
  goes on with Claude on the native route, `claude_history` leaves the thinking blocks written here behind
  (Anthropic checks every signature it is sent).

Pure and synchronous: no I/O, no aiohttp. `ProviderError` means the request cannot be expressed.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers.types import JSON, ProviderError, Usage, signed, thought_signature

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
                 "function_call": "tool_use"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_SAMPLING = ("temperature", "top_p", "stream")
GEMINI_SIGNATURE = "gemini:"  # marks a thinking block's signature as a Gemini thought signature we put there


def claude_history(messages: Any) -> Any:
    """`messages` without the thinking blocks this module wrote for other models' answers (an empty signature,
    or a Gemini one), for a conversation that goes on with Claude on the native route: Anthropic checks every
    signature it is sent, and may drop any earlier turn's thinking. A copy where something was removed."""
    if not isinstance(messages, list):
        return messages
    return [_without_our_thinking(m) for m in messages]


def _without_our_thinking(message: Any) -> Any:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or not any(_ours(block) for block in content):
        return message
    return {**message, "content": [block for block in content if not _ours(block)]}


def _ours(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") != "thinking":
        return False
    signature = block.get("signature")
    return not signature or (isinstance(signature, str) and signature.startswith(GEMINI_SIGNATURE))


# -- request ---------------------------------------------------------------------------------------


def chat_body(body: JSON) -> JSON:
    """The OpenAI chat request an Anthropic Messages request stands for."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ProviderError("'messages' must be a list")
    out: JSON = {"model": body.get("model"), "messages": [*_system(body.get("system")), *_messages(messages)]}
    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = body["max_tokens"]
    for name in _SAMPLING:
        if body.get(name) is not None:
            out[name] = body[name]
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        out["stop"] = body["stop_sequences"]
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    _tools(body, out)
    return out


def _system(system: Any) -> list[JSON]:
    if system is None or system == "" or system == []:
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise ProviderError("'system' must be a string or a list of text blocks")
    parts = [_text_part(block, f"system[{i}]") for i, block in enumerate(system)]
    return [{"role": "system", "content": parts}]


def _text_part(block: Any, where: str) -> JSON:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise ProviderError(f"{where} must be a text block")
    part: JSON = {"type": "text", "text": block["text"]}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _messages(messages: list[Any]) -> list[JSON]:
    out: list[JSON] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise ProviderError(f"messages[{i}] must be an object with role user or assistant")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
        elif isinstance(content, list):
            out += _assistant(content, i) if msg["role"] == "assistant" else _user(content, i)
        else:
            raise ProviderError(f"messages[{i}].content must be a string or a list of blocks")
    return out


def _user(blocks: list[Any], i: int) -> list[JSON]:
    """Tool results first (each its own `tool` message, answering the previous assistant turn), then the rest."""
    results: list[JSON] = []
    parts: list[JSON] = []
    for j, block in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            results.append(_tool_message(block, where))
        elif kind == "text":
            parts.append(_text_part(block, where))
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source"), where)}})
        else:
            raise ProviderError(f"{where}: block type {kind!r} is not supported on this model")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _image_url(source: Any, where: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise ProviderError(f"{where}: images need a base64 or url source")


def _tool_message(block: JSON, where: str) -> JSON:
    if not isinstance(block.get("tool_use_id"), str):
        raise ProviderError(f"{where}: tool_result needs a tool_use_id")
    content = block.get("content")
    if isinstance(content, list):
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        if len(texts) != len(content):
            raise ProviderError(f"{where}: only text tool results are supported on this model")
        content = "".join(str(t) for t in texts)
    text = content if isinstance(content, str) else ""
    if block.get("is_error") is True:
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}


def _assistant(blocks: list[Any], i: int) -> list[JSON]:
    texts, calls = [], []
    signature = None  # the Gemini signature of the block just before, when it was one of our thinking blocks
    for j, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            calls.append(_tool_call(block, signature))
        elif kind not in ("thinking", "redacted_thinking"):
            raise ProviderError(f"messages[{i}].content[{j}]: block type {kind!r} is not supported on this model")
        signature = _gemini_signature(block) if kind == "thinking" else None
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    return [message]


def _tool_call(block: JSON, signature: str | None) -> JSON:
    call: JSON = {"id": str(block.get("id")), "type": "function",
                  "function": {"name": str(block.get("name")),
                               "arguments": orjson.dumps(block.get("input") or {}).decode()}}
    if signature:
        call["extra_content"] = signed(signature)
    return call


def _gemini_signature(block: JSON) -> str | None:
    """The Gemini thought signature a thinking block of ours carries. Only signatures behind our prefix are
    taken: an Anthropic one handed to Gemini would get the turn refused. Clients send back whatever they were
    given, so anything else (no string, no prefix, nothing after it) is no signature, not an error."""
    signature = block.get("signature")
    if isinstance(signature, str) and signature.startswith(GEMINI_SIGNATURE):
        return signature[len(GEMINI_SIGNATURE):] or None
    return None


def _tools(body: JSON, out: JSON) -> None:
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        converted = []
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or "input_schema" not in tool:
                raise ProviderError(f"tools[{j}]: only custom tools with a name and input_schema are supported")
            fn: JSON = {"name": tool["name"], "parameters": tool["input_schema"]}
            if tool.get("description"):
                fn["description"] = tool["description"]
            converted.append({"type": "function", "function": fn})
        out["tools"] = converted
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif kind in _TOOL_CHOICES:
        out["tool_choice"] = _TOOL_CHOICES[kind]
    if choice.get("disable_parallel_tool_use") is True:
        out["parallel_tool_calls"] = False


# -- answer ----------------------------------------------------------------------------------------


def stop_reason(finish_reason: Any) -> str:
    return _STOP_REASONS.get(str(finish_reason), "end_turn")


def usage_json(usage: Usage) -> JSON:
    """Anthropic's `usage`: input_tokens are the fresh ones, cache reads and writes counted apart."""
    fresh = max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    return {"input_tokens": fresh, "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens, "cache_creation_input_tokens": usage.cache_write_tokens}


def message_from_chat(answer: JSON, usage: Usage, model: str) -> JSON:
    """An Anthropic `message` for an OpenAI `chat.completion` (its first choice)."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[JSON] = []
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        content.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        if signature := _signature_of(call):
            _sign(content, signature)
        content.append({"type": "tool_use", "id": str(call.get("id")), "name": str(fn.get("name")),
                        "input": _arguments(fn.get("arguments"))})
    return {"id": str(answer.get("id", "")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason(choice.get("finish_reason")), "stop_sequence": None,
            "usage": usage_json(usage)}


def _signature_of(call: Any) -> str | None:
    """The thinking-block signature for a tool call that carries a Gemini thought signature (see the module
    docstring), else None."""
    signature = thought_signature(call)
    return GEMINI_SIGNATURE + signature if signature else None


def _sign(content: list[JSON], signature: str) -> None:
    """Put the signature on a thinking block right before the tool_use about to be added: the reasoning
    block when it is the last one (one block, as Claude would send), else a new one with empty thinking."""
    last = content[-1] if content else None
    if last is not None and last["type"] == "thinking" and not last["signature"]:
        last["signature"] = signature
    else:
        content.append({"type": "thinking", "thinking": "", "signature": signature})


def _arguments(raw: Any) -> Any:
    try:
        value = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


# -- stream ----------------------------------------------------------------------------------------

Event = tuple[str, JSON]


class MessageStream:
    """Chat chunks in, Anthropic stream events out: message_start, content_block_start/delta/stop per
    block, then (at `end`) message_delta with the stop reason and usage, and message_stop."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id, self.model = message_id, model
        self.started = False
        self.block = -1  # index of the open content block, -1 when none is open
        self.kind = ""  # "text", "thinking" or "tool_use"
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self.finish_reason: str | None = None
        self.usage = Usage()

    def feed(self, chunk: JSON) -> list[Event]:
        events = self._start() if not self.started else []
        if isinstance(chunk.get("usage"), dict) and not chunk.get("choices"):
            return events
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                events += self._delta("thinking", {"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._delta("text", {"type": "text_delta", "text": delta["content"]})
            for call in delta.get("tool_calls") or ():
                events += self._tool(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                events += self._close()
        return events

    def end(self, usage: Usage, extra: JSON | None = None) -> list[Event]:
        """The closing events; `extra` fields (the bill) ride on message_delta, which the SDKs tolerate."""
        events = (self._start() if not self.started else []) + self._close()
        delta: JSON = {"type": "message_delta",
                       "delta": {"stop_reason": stop_reason(self.finish_reason), "stop_sequence": None},
                       "usage": usage_json(usage), **(extra or {})}
        return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]

    def _start(self) -> list[Event]:
        self.started = True
        message: JSON = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        return [("message_start", {"type": "message_start", "message": message})]

    def _open(self, kind: str, block: JSON) -> list[Event]:
        events = self._close()
        self.block += 1
        self.kind = kind
        return [*events, ("content_block_start", {"type": "content_block_start", "index": self.block,
                                                  "content_block": block})]

    def _close(self) -> list[Event]:
        if not self.kind:
            return []
        self.kind = ""
        return [("content_block_stop", {"type": "content_block_stop", "index": self.block})]

    def _delta(self, kind: str, delta: JSON) -> list[Event]:
        events: list[Event] = []
        if self.kind != kind:
            empty = {"type": "text", "text": ""} if kind == "text" else {"type": "thinking", "thinking": "",
                                                                          "signature": ""}
            events = self._open(kind, empty)
        return [*events, ("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                  "delta": delta})]

    def _sign(self, signature: str) -> list[Event]:
        """A signature_delta on the thinking block before the tool_use that opens next: the open reasoning
        block, else a new empty one. The signature comes with the call's first delta (Gemini sends a call
        whole); one arriving later, once the tool_use block is open, could not precede it and is not sent."""
        events: list[Event] = []
        if self.kind != "thinking":
            events = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        return [*events, ("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                  "delta": {"type": "signature_delta", "signature": signature}})]

    def _tool(self, call: JSON) -> list[Event]:
        fn = call.get("function") or {}
        index = call.get("index", 0)
        events: list[Event] = []
        if index not in self.tools:
            if signature := _signature_of(call):
                events = self._sign(signature)
            events += self._open("tool_use", {"type": "tool_use", "id": str(call.get("id") or f"toolu_{index}"),
                                              "name": str(fn.get("name") or ""), "input": {}})
            self.tools[index] = self.block
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": self.tools[index],
                                                   "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return events
