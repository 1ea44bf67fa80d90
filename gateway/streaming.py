"""Relaying an upstream event stream to the client, with the bill attached at the end.

Each upstream read becomes one client write, as soon as it arrives. What the client sees is a codec's
business: `ChunkCodec` relays the adapter's `chat.completion.chunk` objects (subclasses re-encode them for
another API, e.g. legacy completions or Anthropic's events). The chunk that carries `finish_reason` is
held back until the request is settled, then sent with `billing` on it: a plain
`for chunk in stream: chunk.choices[0]` loop of the official SDKs sees nothing unusual. When the client
asked for usage, the usage chunk carries `billing` too; an upstream that reported none (a Gemini stream
without `usageMetadata`) still ends with one, holding the usage billed (the gateway's estimate, or zeros
when nothing was generated), as `stream_options.include_usage` promises. The named `billing_update`
event (which the SDKs turn into a chunk without `choices`) is sent only on request.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any, Protocol

import aiohttp
import orjson

from gateway.billing import restate_usage, utf8_len
from gateway.errors import GatewayError, UpstreamFailed, error_event
from gateway.reads import relay_read
from gateway.relay import next_data
from gateway.sse import DONE, SSEWriter, frame
from gateway.template import Template, TemplatedRun, content_text, find_run, state_view
from providers import openai
from providers.anthropic import AnthropicStreamState
from providers.framing import RunFinder, SSEDecoder
from providers.registry import Adapter
from providers.types import (
    JSON,
    REASONING_FIELDS,
    ProviderError,
    SSEEvent,
    StreamState,
    Target,
    UpstreamHTTPError,
    Usage,
    reasoning_text,
)


class StreamCodec(Protocol):
    """Upstream SSE events in, client bytes out; `state` is the upstream's accounting (usage, finish)."""

    state: StreamState
    template: Template | None  # once known, the events it matches are relayed without `feed`
    learning: int  # while > 0, `feed` may learn a template
    last: bytes | None  # the last `data:` line the template relayed, for `catch_up`
    runs: RunFinder | None  # named events `feed` takes a span of whole, as one event (`SSEDecoder.feed_named`)

    def feed(self, event: SSEEvent) -> tuple[bytes, int]:
        """Bytes to relay now (may be empty) and how many bytes of generated text they hold."""

    def finish(self, billing: JSON, billing_event: bool, usage: Usage) -> bytes:
        """The held tail with the bill (and the usage billed) on it, and the stream's terminator."""

    def catch_up(self) -> None:
        """Bring the state up to the events relayed from their bytes (before it is read for the bill)."""

    def feed_end(self) -> tuple[bytes, int]:
        """The body's end, once its last event was fed and the upstream had not said it was done: what the
        adapter still had to relay (a finish it held back), as `feed` gives it."""

    def error(self, err: GatewayError, request_id: str) -> bytes:
        """A failure after the headers went out, as the client's SDK expects one (Anthropic's names the
        request, as its error bodies do)."""

    def replay(self, raw: bytes, target: Target) -> tuple[bytes, int]:
        """A whole JSON answer where a stream was asked for (an upstream that ignored `stream`) as the stream's
        bytes up to its held tail, and the generated text they hold; `state` is left done, with the answer's
        usage. ProviderError when the answer cannot be read (an error object in it included)."""


class Relayed:
    """What reached the client so far: for the bill when the upstream's usage never comes."""

    __slots__ = ("first_at", "text_bytes")

    def __init__(self) -> None:
        self.text_bytes = 0
        self.first_at: float | None = None


def text_bytes(chunk: JSON) -> int:
    """Generated text in a chat chunk (or a legacy completion chunk's `text`), in UTF-8 bytes. Written out
    field by field: it runs for every chunk of every stream."""
    n = 0
    for choice in chunk.get("choices") or ():
        text = choice.get("text")
        if text.__class__ is str:
            n += utf8_len(text)
        delta = choice.get("delta")
        if delta:
            n += message_bytes(delta)
    return n


def message_bytes(message: JSON) -> int:
    """Generated text in a chat delta or message: content, reasoning (once, under either of its names),
    refusal, tool-call arguments."""
    n = 0
    content = message.get("content")
    if content.__class__ is str:
        n += utf8_len(content)
    if (reasoning := reasoning_text(message)):
        n += utf8_len(reasoning)
    if "refusal" in message and (refusal := message["refusal"]).__class__ is str:
        n += utf8_len(refusal)
    for call in message.get("tool_calls") or ():
        args = (call.get("function") or {}).get("arguments")
        if isinstance(args, str):
            n += utf8_len(args)
    return n


def strip_reasoning(message: JSON) -> bool:
    """Take the reasoning (under any of `REASONING_FIELDS`) out of a chat message or delta; True when one of
    them held something (a null one goes too, but then the delta had nothing to hide)."""
    hidden = False
    for name in REASONING_FIELDS:
        if message.pop(name, None) is not None:
            hidden = True
    return hidden


def _hide_reasoning(chunk: JSON) -> bool:
    """Take the reasoning out of a chunk's deltas; True when nothing is left worth sending."""
    emptied = False
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if isinstance(delta, dict) and strip_reasoning(delta):
            emptied = emptied or (not delta and not choice.get("finish_reason"))
    return emptied and len(chunk.get("choices") or ()) == 1


def _is_tail(chunk: JSON) -> bool:
    choices = chunk.get("choices")
    if not choices:
        return True
    for choice in choices:  # noqa: SIM110 - a loop: a generator per chunk costs more than the test
        if choice.get("finish_reason"):
            return True
    return False


class ChunkCodec:
    """The adapter's chat chunks, relayed as OpenAI SSE; every chunk carries the gateway's generation id,
    the handle for /v1/generation. Subclasses change `encode`/`end` to speak another API; one whose
    encoding of a chunk depends on earlier chunks sets `templated` False."""

    templated = True
    runs: RunFinder | None = None
    LEARNING = 3  # content-only chunks a stream tries to learn its template from before it gives up

    def __init__(self, adapter: Adapter, state: StreamState, generation_id: str, wants_usage: bool,
                 hide_reasoning: bool = False) -> None:
        self.adapter, self.state = adapter, state
        self.generation_id, self.wants_usage = generation_id, wants_usage
        self.hide_reasoning = hide_reasoning  # `reasoning.exclude`: no reasoning deltas reach the client
        self.held: list[JSON] = []  # finish and usage chunks waiting for the bill
        self.template: Template | None = None
        self.learning = self.LEARNING if self.templated and adapter.VERBATIM_CHUNKS else 0
        self.restates = adapter.RESTATES
        self.view = state_view(state, self.restates)
        self.seen = self.view(state)  # the state as the last event parsed left it, while templates may be learnt
        self.last: bytes | None = None  # the last `data:` line relayed from its bytes (gateway.reads sets it)
        self.counting = False  # the event being learnt from moved the usage (`feed`)
        if self.learning and isinstance(state, AnthropicStreamState):  # Claude's text deltas: reads relayed whole
            self.runs = partial(find_run, self)

    def feed(self, event: SSEEvent) -> tuple[bytes, int]:
        if event.__class__ is TemplatedRun:  # (after message_stop, in the read, its deltas would relay nothing)
            return (b"", 0) if self.state.done else (event.out, event.text_bytes)  # type: ignore[attr-defined]
        if self.last is not None:
            self.catch_up()
        usage = self.state.usage
        chunks = self.adapter.parse_stream_event(self.state, event)
        if not self.learning and self.template is None:
            return self.relay(chunks, event.data)
        seen, self.seen = self.seen, self.view(self.state)
        if self.seen == seen:
            # counts that moved since the event before (Gemini 2.5's running count) are cut out of a template
            # learnt from this event; counts that stay (Gemini 2.0's) are kept in its bytes, which match faster
            self.counting = self.state.usage is not usage
            return self.relay(chunks, event.data)
        # an event that moved the state (Gemini's first, which sends the role, or one with other usage): no
        # template from it, and the one known stands for parsing no longer (`template.state_view`)
        self.template = None
        return self.relay(chunks, None)

    def feed_end(self) -> tuple[bytes, int]:
        self.catch_up()
        return self.relay(self.adapter.parse_stream_end(self.state), None)

    def catch_up(self) -> None:
        """The state as parsing every event would have left it: the last event relayed from its bytes is parsed
        for the fields its kind restates (Gemini's usage so far; the events before it are superseded)."""
        line, self.last = self.last, None
        if line is not None and self.restates:
            self.adapter.parse_stream_event(self.state, SSEEvent(line[len(b"data: "):]))

    def relay(self, chunks: list[JSON], data: bytes | None) -> tuple[bytes, int]:
        """The adapter's chunks of one event (`data`: its bytes, to learn a template from; None when the
        chunks were made from a whole answer, or the event moved the state) as client bytes, the tail held for
        the bill."""
        batch, n = b"", 0  # mostly one chunk an event: b"" + frame is the frame itself, no copy
        for chunk in chunks:
            chunk["id"] = self.generation_id
            counted = text_bytes(chunk)  # hidden reasoning was generated all the same: it counts for an estimate
            n += counted
            if self.hide_reasoning and _hide_reasoning(chunk):
                continue
            if _is_tail(chunk):
                if chunk.get("choices") and (usage := chunk.get("usage")).__class__ is dict:
                    # usage on the finish chunk (DeepSeek's last one): it rides its own `choices: []` chunk, as
                    # OpenAI sends it, once, and only to a client that asked for it
                    del chunk["usage"]
                    if self.wants_usage:
                        self.held.append(chunk)
                        self._hold_usage({**chunk, "choices": [], "usage": usage})
                        continue
                if chunk.get("choices"):
                    self.held.append(chunk)
                elif self.wants_usage:
                    self._hold_usage(chunk)
                continue
            if (usage := chunk.get("usage")).__class__ is dict:
                # usage on an unfinished chunk (OpenRouter's last one has an empty choice): it waits for the
                # bill like any usage, as a `choices: []` chunk, and only for a client that asked for it
                del chunk["usage"]
                if self.wants_usage:
                    self._hold_usage({**chunk, "choices": [], "usage": usage})
            batch += self.encode(chunk)
            if self.learning and data is not None:
                self._learn(data, chunk, counted)
        return batch, n

    def _hold_usage(self, chunk: JSON) -> None:
        """Hold a `choices: []` chunk for the bill; one with usage replaces the usage chunk held before it: a server
        that reports its running count on every chunk (vLLM's `stream_options.continuous_usage_stats`) would
        otherwise give the client a usage chunk per chunk at the end, which clients that add up every chunk's usage
        (LangChain) count many times over. The last count is the whole one, and the one billed (`state.usage`)."""
        if chunk.get("usage").__class__ is dict:
            self.held = [held for held in self.held if held.get("choices") or held.get("usage").__class__ is not dict]
        self.held.append(chunk)

    def replay(self, raw: bytes, target: Target) -> tuple[bytes, int]:
        """A JSON array is a stream without its SSE framing (Gemini's `streamGenerateContent` without
        `alt=sse`): its items are the events. An object is the answer `generateContent` or a compatible server
        gives without `stream`: read as a non-streamed answer is, and relayed as the chunks a stream of it has."""
        state = self.state
        if raw.lstrip()[:1] == b"[":
            try:
                items = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ProviderError(f"upstream answer is not valid JSON: {exc}") from exc
            batch, n = b"", 0
            for item in items:
                more, k = self.feed(SSEEvent(orjson.dumps(item)))
                batch, n = batch + more, n + k
            if not state.done:
                more, k = self.feed_end()
                batch, n = batch + more, n + k
            if not state.done:
                raise ProviderError("the answer's events ended before it finished")
            return batch, n
        result = self.adapter.parse_response(raw, target)
        answer = result.body
        choices = answer.get("choices") or [{}]
        state.usage, state.response_id = result.usage, str(answer.get("id", ""))
        state.finish_reason, state.done = choices[0].get("finish_reason"), True
        return self.relay(openai.answer_chunks(answer), None)

    def _learn(self, data: bytes, chunk: JSON, counted: int) -> None:
        text = content_text(chunk, counted)
        if text is not None:
            self.learning -= 1
            if (template := Template.learn(data, chunk, text, self.encode, self.adapter.TEXT_AT,
                                           self.counting)) is not None:
                self.template, self.learning = template, 0

    def finish(self, billing: JSON, billing_event: bool, usage: Usage) -> bytes:
        tail = bytearray()
        held = self.held
        if self.wants_usage and all(chunk.get("choices") for chunk in held):
            held = [*held, self.usage_chunk(usage)]
        for chunk in held:
            chunk["billing"] = billing
            if isinstance(chunk.get("usage"), dict):
                restate_usage(chunk["usage"], billing)
            tail += self.encode(chunk)
        if billing_event:
            tail += frame({"billing": billing}, event="billing_update")
        return bytes(tail) + self.end()

    def usage_chunk(self, usage: Usage) -> JSON:
        """The `choices: []` chunk for a client that asked for usage the upstream never sent."""
        return {"id": self.generation_id, "object": "chat.completion.chunk",
                "created": self.state.created or int(time.time()), "model": self.state.public_model, "choices": [],
                "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens}}

    def encode(self, chunk: JSON) -> bytes:
        return frame(chunk)

    def end(self) -> bytes:
        return DONE

    def error(self, err: GatewayError, request_id: str) -> bytes:
        return error_event(err)


async def pump(resp: aiohttp.ClientResponse, codec: StreamCodec, out: SSEWriter, silence_s: float,
               keepalive_s: float, relayed: Relayed, now: Any, head: bytes = b"") -> None:
    """Relay until the upstream says it is done (`head`: the body's first bytes, when the caller read them to
    look at); the codec keeps the tail for `finish`."""
    decoder = SSEDecoder()
    state = codec.state
    try:
        while not state.done:
            if head:
                data, head = head, b""
            else:
                data = await next_data(resp.content, silence_s, keepalive_s, out.keepalive)
            batch, broken = relay_read(codec, decoder, data, relayed)
            if batch:
                if relayed.first_at is None:
                    relayed.first_at = now()
                await out.write(batch)
            if broken is not None:
                raise broken
            if not data and not state.done:
                if state.finish_reason is not None and state.choices_seen <= state.choices_finished:
                    break  # some servers end without [DONE]; the answer itself was complete
                raise UpstreamFailed("the upstream closed the stream before it finished",
                                     code="upstream_truncated")
    except UpstreamHTTPError:
        raise
    except (aiohttp.ClientError, ProviderError) as exc:
        raise UpstreamFailed(f"the upstream stream broke ({type(exc).__name__})",
                             code="upstream_stream_error") from exc


async def finish(out: SSEWriter, codec: StreamCodec, billing: JSON, billing_event: bool, usage: Usage) -> None:
    """The held tail with the bill on it, the opt-in billing event, then the terminator."""
    await out.finish(codec.finish(billing, billing_event, usage))
