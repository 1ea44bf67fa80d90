"""OpenAI chat answers as Anthropic Messages answers: the answer half of `providers.anthropic_inbound`.

- A `chat.completion` -> a `message`: `reasoning_content` (or `reasoning`, as OpenRouter, Ollama and vLLM name
  it; see `types.REASONING_FIELDS`) -> a `thinking` block, `content` -> a `text` block,
  `refusal` -> a `text` block with stop_reason `refusal`, `tool_calls` -> `tool_use` blocks; finish_reason
  stop/length/tool_calls/content_filter -> stop_reason end_turn/max_tokens/tool_use/refusal, and
  `stop_sequence` with the matched string when the upstream names it (vLLM's `choices[].stop_reason`).
  Usage: input_tokens exclude cache reads and writes, as Anthropic's do.
- Chat chunks -> `message_start`, `content_block_start/delta/stop` per block, `message_delta`, `message_stop`.
- A Gemini thought signature on a tool call rides as the signature of a thinking block right before its
  `tool_use`, prefixed `GEMINI_SIGNATURE`; the id Gemini gave a call is its tool_use id behind `GEMINI_CALL_ID`
  (see `providers.anthropic_inbound`, which reads both back).

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

from typing import Any

import orjson

from providers.types import JSON, Usage, gemini_call_id, reasoning_text, thought_signature

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal",
                 "function_call": "tool_use"}
GEMINI_SIGNATURE = "gemini:"  # marks a thinking block's signature as a Gemini thought signature we put there
GEMINI_CALL_ID = "gemini_"  # marks a tool_use id as the id Gemini gave its call (fits Claude's id pattern)


# -- answer ----------------------------------------------------------------------------------------


def stop_reason(finish_reason: Any) -> str:
    return _STOP_REASONS.get(str(finish_reason), "end_turn")


def usage_json(usage: Usage) -> JSON:
    """Anthropic's `usage`: input_tokens are the fresh ones, cache reads and writes counted apart."""
    fresh = max(usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens, 0)
    return {"input_tokens": fresh, "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens, "cache_creation_input_tokens": usage.cache_write_tokens}


def stop_of(choice: JSON, refused: bool, stop_sequences: Any) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a choice. A refusal is one, whatever the finish_reason; a stop on one
    of the client's `stop_sequences` is named when the upstream says which (vLLM's `stop_reason` holds the
    matched string), else it is an `end_turn` like any other stop."""
    if refused:
        return "refusal", None
    matched = choice.get("stop_reason")
    if (choice.get("finish_reason") == "stop" and isinstance(matched, str) and isinstance(stop_sequences, list)
            and matched in stop_sequences):
        return "stop_sequence", matched
    return stop_reason(choice.get("finish_reason")), None


def message_from_chat(answer: JSON, usage: Usage, model: str, stop_sequences: Any = None) -> JSON:
    """An Anthropic `message` for an OpenAI `chat.completion` (its first choice); an OpenAI `refusal` is
    the text of the answer, which stopped for `refusal`."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[JSON] = []
    if reasoning := reasoning_text(message):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    refused = isinstance(message.get("refusal"), str) and bool(message["refusal"])
    if refused:
        content.append({"type": "text", "text": message["refusal"]})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        if signature := _signature_of(call):
            _sign(content, signature)
        content.append({"type": "tool_use", "id": tool_use_id(call), "name": str(fn.get("name")),
                        "input": _arguments(fn.get("arguments"))})
    reason, matched = stop_of(choice, refused, stop_sequences)
    return {"id": str(answer.get("id", "")), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": matched, "usage": usage_json(usage)}


def tool_use_id(call: Any) -> str:
    """The tool_use id of a chat tool call: its id, behind `GEMINI_CALL_ID` when Gemini gave it (the chat call's
    `extra_content` says so, which no tool_use can carry), so that it goes back to Gemini with the call and its
    `functionResponse` (see `providers.anthropic_inbound`)."""
    call_id = str(call.get("id"))
    return GEMINI_CALL_ID + call_id if gemini_call_id(call) else call_id


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
    block, then (at `end`) message_delta with the stop reason and usage, and message_stop. `input_tokens`: what
    message_start states (Anthropic's carries the prompt's count there; chat upstreams report theirs only at the
    end, so the caller's estimate), the final message_delta then carrying the upstream's count."""

    def __init__(self, message_id: str, model: str, stop_sequences: Any = None, input_tokens: int = 0) -> None:
        self.message_id, self.model, self.stop_sequences = message_id, model, stop_sequences
        self.input_tokens = input_tokens
        self.started = False
        self.refused = False  # a `refusal` delta came: its text is relayed and the stop reason is `refusal`
        self.finish: JSON = {}  # the choice that carried finish_reason
        self.block = -1  # index of the open content block, -1 when none is open
        self.kind = ""  # "text", "thinking" or "tool_use"
        self.tools: dict[int, int] = {}  # OpenAI tool_calls index -> content block index
        self.usage = Usage()

    def feed(self, chunk: JSON) -> list[Event]:
        events = self._start() if not self.started else []
        if isinstance(chunk.get("usage"), dict) and not chunk.get("choices"):
            return events
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if reasoning := reasoning_text(delta):
                events += self._delta("thinking", {"type": "thinking_delta", "thinking": reasoning})
            for name in ("content", "refusal"):
                if isinstance(delta.get(name), str) and delta[name]:
                    self.refused = self.refused or name == "refusal"
                    events += self._delta("text", {"type": "text_delta", "text": delta[name]})
            for call in delta.get("tool_calls") or ():
                events += self._tool(call)
            if choice.get("finish_reason"):
                self.finish = choice
                events += self._close()
        return events

    def end(self, usage: Usage, extra: JSON | None = None) -> list[Event]:
        """The closing events; `extra` fields (the bill) ride on message_delta, which the SDKs tolerate."""
        events = (self._start() if not self.started else []) + self._close()
        reason, matched = stop_of(self.finish, self.refused, self.stop_sequences)
        delta: JSON = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": matched},
                       "usage": usage_json(usage), **(extra or {})}
        return [*events, ("message_delta", delta), ("message_stop", {"type": "message_stop"})]

    def _start(self) -> list[Event]:
        self.started = True
        message: JSON = {"id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
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
            events += self._open("tool_use", {"type": "tool_use", "id": tool_use_id(call) if call.get("id") else
                                              f"toolu_{index}",
                                              "name": str(fn.get("name") or ""), "input": {}})
            self.tools[index] = self.block
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": self.tools[index],
                                                   "delta": {"type": "input_json_delta", "partial_json": arguments}}))
        return events


# -- a whole message as its stream -------------------------------------------------------------------

_DELTAS = {"text": ("text", "text_delta"), "thinking": ("thinking", "thinking_delta")}  # block type -> field, delta


def message_events(message: JSON) -> list[Event]:
    """An Anthropic `message` as the events Anthropic streams for it: message_start (the usage but for the
    output), each content block's start/delta(s)/stop, message_delta (stop reason, the whole usage), message_stop.
    Text and thinking come as one delta each (a thinking block's signature as a signature_delta after it),
    tool input as one input_json_delta; other blocks (redacted thinking, server tool results) whole in their
    start, as Anthropic sends them."""
    usage: JSON = message["usage"] if isinstance(message.get("usage"), dict) else {}
    head = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {**usage, "output_tokens": 0}}
    events: list[Event] = [("message_start", {"type": "message_start", "message": head})]
    for index, block in enumerate(b for b in message["content"] if isinstance(b, dict)):
        events += _block_events(index, block)
    delta = {"stop_reason": message.get("stop_reason"), "stop_sequence": message.get("stop_sequence")}
    return [*events, ("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}),
            ("message_stop", {"type": "message_stop"})]


def _block_events(index: int, block: JSON) -> list[Event]:
    kind = block.get("type")
    deltas: list[JSON] = []
    start = block
    if kind in _DELTAS:
        field, delta_type = _DELTAS[kind]
        start = {**block, field: ""}
        deltas.append({"type": delta_type, field: str(block.get(field) or "")})
        if kind == "thinking":
            start["signature"] = ""
            deltas.append({"type": "signature_delta", "signature": str(block.get("signature") or "")})
    elif kind in ("tool_use", "server_tool_use"):
        start = {**block, "input": {}}
        deltas.append({"type": "input_json_delta", "partial_json": orjson.dumps(block.get("input") or {}).decode()})
    events: list[Event] = [("content_block_start", {"type": "content_block_start", "index": index,
                                                    "content_block": start})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
               for delta in deltas]
    return [*events, ("content_block_stop", {"type": "content_block_stop", "index": index})]
