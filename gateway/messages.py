"""Anthropic's Messages format (`POST /v1/messages`) on the shared pipeline.

A route to an Anthropic-kind provider is a native pass-through: the client's body goes upstream as it
is (model renamed, the client's `anthropic-beta` forwarded), so thinking signatures, cache marks and
server tools survive; the adapter still reads every event for usage and the finish. Any other provider
gets the request translated to OpenAI chat (`providers.anthropic_inbound`), served by its adapter, and
the answer translated back.

Billing: the message JSON carries the `billing` block; a stream's `message_delta` event carries it too,
beside `usage` (the Anthropic SDK keeps unknown fields of an event and `text_stream` never sees it).
Errors reach the client in Anthropic's shape (see `gateway.errors.anthropic_type`).
"""

from __future__ import annotations

from collections.abc import Callable

import orjson

from gateway import billing, presets
from gateway.billing import Bill
from gateway.catalog import Route
from gateway.config import PresetConfig
from gateway.errors import GatewayError, anthropic_error_event
from gateway.exchange import ChatEndpoint, ChatExchange, Exchange, Reply
from gateway.sse import frame
from gateway.streaming import ChunkCodec, StreamCodec, text_bytes
from gateway.template import Template
from providers import (
    anthropic,
    anthropic_answer,
    anthropic_history,
    anthropic_inbound,
    anthropic_runs,
    anthropic_usage,
    reasoning,
    registry,
)
from providers.anthropic_answer import MessageStream
from providers.anthropic_runs import TextRun
from providers.framing import RunFinder
from providers.types import (
    JSON,
    ChatRequest,
    ProviderError,
    SSEEvent,
    Target,
    UpstreamHTTPError,
    UpstreamRequest,
    Usage,
)

HELD_EVENTS = frozenset({"message_delta", "message_stop"})  # wait for the bill
REWRITTEN = HELD_EVENTS | {"message_start"}  # the rest are relayed as their bytes came (one data line each)
# prompt counts Claude states in message_start; its current API repeats them in message_delta, older
# recordings (and Anthropic-compatible servers) do not
PROMPT_COUNTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


class NativeCodec:
    """An Anthropic upstream's events relayed as they are, as their bytes came where nothing changes in
    them; message_start gets the gateway's id and model, message_delta/message_stop wait for the bill.

    message_delta's usage gets message_start's prompt counts where it lacks them, as the gateway's translated
    streams state them: LangChain's ChatAnthropic reads a stream's usage from message_delta alone, and would
    report a prompt billed here as 0 tokens (the Anthropic SDK takes the same counts from either event)."""

    template: Template | None = None  # Claude's events are relayed one by one, but for runs of text deltas
    learning = 0
    last: bytes | None = None

    def __init__(self, target: Target, generation_id: str) -> None:
        self.adapter = registry.get("anthropic")
        self.state = self.adapter.new_stream_state(ChatRequest(body={}, stream=True), target)
        self.generation_id, self.model = generation_id, target.public_model
        self.held: list[tuple[str, JSON]] = []
        # a read's run of plain text deltas of one block comes as one `TextRun` (None: each delta by itself)
        self.runs: RunFinder | None = anthropic_runs.find

    def feed(self, event: SSEEvent) -> tuple[bytes, int]:
        if event.__class__ is TextRun:
            return self._feed_run(event)  # type: ignore[arg-type]  # its class, just checked
        if event.event == "content_block_delta" \
                and (n := anthropic.delta_text_bytes(self.state, event.data)) is not None:  # counted unparsed
            return b"event: content_block_delta\ndata: " + event.data + b"\n\n", n
        chunks = self.adapter.parse_stream_event(self.state, event)  # usage, finish, done; raises on `error`
        n = sum(map(text_bytes, chunks))
        name = event.event
        if name and name not in REWRITTEN and b"\n" not in event.data:  # the adapter read it: valid JSON
            return b"event: " + name.encode() + b"\ndata: " + event.data + b"\n\n", n
        data = orjson.loads(event.data)
        name = name or str(data.get("type") or "")
        if name == "message_start" and isinstance(data.get("message"), dict):
            data["message"].update(id=self.generation_id, model=self.model)
        if name in HELD_EVENTS:
            self.held.append((name, data))
            return b"", n
        return frame(data, event=name or None), n

    def _feed_run(self, run: TextRun) -> tuple[bytes, int]:
        """A run's deltas as they came, as `feed` relays each (the same bytes), counted whole; one by one where
        the state says they must be (they are whole, plain text deltas: reading them raises nothing)."""
        if anthropic_runs.take(self.state, run):
            return run.data + b"\n\n", run.text_bytes
        fed = [self.feed(event) for event in run.events()]
        return b"".join(out for out, _ in fed), sum(n for _, n in fed)

    def catch_up(self) -> None:
        """Nothing: no template here, and a Claude event restates no usage."""

    def feed_end(self) -> tuple[bytes, int]:
        """Nothing: message_stop ends a Claude stream, and is relayed as it came."""
        return b"", 0

    def finish(self, billing: JSON, billing_event: bool, usage: Usage) -> bytes:
        tail = bytearray()
        counts = self.state.counts if isinstance(self.state, anthropic.AnthropicStreamState) else {}
        prompt = {name: counts[name] for name in PROMPT_COUNTS if name in counts}  # as the adapter read them
        for name, data in self.held:
            if name == "message_delta":
                data["billing"] = billing
                if isinstance(data.get("usage"), dict):
                    data["usage"] = {**prompt, **data["usage"]}
            tail += frame(data, event=name)
        return bytes(tail)

    def error(self, err: GatewayError, request_id: str) -> bytes:
        return anthropic_error_event(err, request_id)

    def replay(self, raw: bytes, target: Target) -> tuple[bytes, int]:
        """A whole message (an upstream that ignored `stream`) fed as the events Anthropic streams for it, so
        the client gets them and the adapter counts them as if they had come so."""
        self.adapter.parse_response(raw, target)  # raises when it is no message (an error object, say)
        message = orjson.loads(raw)
        batch, n = b"", 0
        for name, data in anthropic_answer.message_events(message):
            more, k = self.feed(SSEEvent(orjson.dumps(data), name))
            batch, n = batch + more, n + k
        return batch, n


class NativeExchange:
    """Anthropic format in, Anthropic upstream out: nothing translated."""

    needs_inline_images = False

    def __init__(self, beta: str) -> None:
        self.beta = beta

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        out = {k: v for k, v in body.items() if k not in target.drop or k in ("model", "messages", "max_tokens")}
        out["model"] = target.upstream_model
        if "messages" in out:
            out["messages"] = anthropic_history.claude_history(out["messages"])
        if stream:
            out["stream"] = True
        else:
            out.pop("stream", None)
        return anthropic.messages_request(out, target, stream, self.beta)

    def parse(self, raw: bytes, target: Target) -> Reply:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ProviderError(f"upstream answer is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise ProviderError("upstream answer is not an Anthropic message")
        data["model"] = target.public_model
        blocks = [b for b in data["content"] if isinstance(b, dict)]
        tool_use = any(b.get("type") == "tool_use" for b in blocks)
        text = sum(billing.utf8_len(str(b.get("text", ""))) for b in blocks if b.get("type") == "text")
        return Reply(body=data, usage=anthropic_usage.usage_from(data.get("usage")),
                     finish_reason=anthropic.finish_reason(data.get("stop_reason"), tool_use),
                     upstream_id=str(data.get("id", "")), text_bytes=text)

    def parse_error(self, status: int, raw: bytes) -> UpstreamHTTPError:
        return anthropic.parse_error(status, raw)

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec:
        return NativeCodec(target, generation_id)


class MessagesCodec(ChunkCodec):
    """Chat chunks re-encoded as Anthropic stream events.

    A content chunk is one text delta of the open text block, the same bytes around its text whatever came
    before, as long as that block stays open; a template learnt there (`Template`: most of a long answer relayed
    from its bytes, unparsed) holds until a chunk opens or closes a block (a tool call, reasoning, the finish),
    and is learnt again in the next text block (whose index differs)."""

    def __init__(self, chat: ChunkCodec, model: str, stop_sequences: object, input_tokens: int) -> None:
        super().__init__(chat.adapter, chat.state, chat.generation_id, wants_usage=True,
                         hide_reasoning=chat.hide_reasoning)
        self.stream = MessageStream(chat.generation_id, model, stop_sequences, input_tokens)

    def encode(self, chunk: JSON) -> bytes:
        stream = self.stream
        block = stream.block, stream.kind
        out = b"".join(frame(data, event=name) for name, data in stream.feed(chunk))
        if self.template is not None and (stream.block, stream.kind) != block:
            self.template, self.learning, self.seen = None, self.LEARNING, self.view(self.state)
        return out

    def finish(self, billing: JSON, billing_event: bool, usage: Usage) -> bytes:
        tail = b"".join(self.encode(chunk) for chunk in self.held if chunk.get("choices"))
        return tail + b"".join(frame(data, event=name) for name, data in self.stream.end(usage, {"billing": billing}))

    def error(self, err: GatewayError, request_id: str) -> bytes:
        return anthropic_error_event(err, request_id)


class TranslatedExchange(ChatExchange):
    """Anthropic format in, any other kind out, through the OpenAI chat shape. One per attempt: `build`
    keeps the client's stop sequences for the answer, which names the one it stopped on."""

    stop_sequences: object = None
    preset_params: JSON | None = None  # a preset's chat-vocabulary params (`presets.chat_params`)
    reasoning_limits: reasoning.Limits | None = None  # what the model's reasoning takes (`models.*.reasoning`)
    prompt_tokens: Callable[[JSON], int] = staticmethod(billing.estimate_prompt_tokens)  # the endpoint's, made once
    translated: tuple[JSON, JSON] | None = None  # (a Messages body, its chat body): `build`'s, for `codec`

    def chat_body(self, body: JSON) -> JSON:
        """A preset's params are set over the translation's; a preset that sets reasoning (either field) sets all
        of it: the client's thinking beside it would win on Gemini (a budget outranks an effort) or disagree.
        Translated once per body: a stream's codec reads the chat body `build` sent (every block of what may be
        a megabyte of history)."""
        if self.translated is not None and self.translated[0] is body:
            return self.translated[1]
        limits = self.reasoning_limits
        if self.preset_params and not self.preset_params.keys().isdisjoint(reasoning.FIELDS):
            limits = None
        chat = anthropic_inbound.chat_body(body, top_k="top_k" in self.adapter.SUPPORTED_PARAMETERS,
                                           reasoning_limits=limits)
        chat = {**chat, **self.preset_params} if self.preset_params else chat
        self.translated = (body, chat)
        return chat

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        self.stop_sequences = body.get("stop_sequences")
        request = super().build(self.chat_body(body), target, stream)
        self.hide_reasoning = self.hide_reasoning or not anthropic_inbound.thinking_shown(body)
        return request

    def parse(self, raw: bytes, target: Target) -> Reply:
        reply = super().parse(raw, target)
        reply.body = anthropic_answer.message_from_chat(reply.body, reply.usage, target.public_model,
                                                        self.stop_sequences)
        if not reply.usage.reported:
            del reply.body["usage"]  # filled with the estimate when presented
        return reply

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec:
        chat = ChatExchange.codec(self, self.chat_body(body), target, generation_id, True)
        assert isinstance(chat, ChunkCodec)
        chat.hide_reasoning = chat.hide_reasoning or not anthropic_inbound.thinking_shown(body)
        # message_start states the prompt's tokens, as Anthropic's does: the estimate (count_tokens' figure)
        return MessagesCodec(chat, target.public_model, body.get("stop_sequences"), self.prompt_tokens(body))


class MessagesEndpoint(ChatEndpoint):
    """POST /v1/messages; one per request, as it carries the client's `anthropic-beta` header. Held and
    estimated as chat is (the estimator reads both formats); answered in Anthropic's."""

    name = "messages"

    def __init__(self, beta: str = "") -> None:
        self.beta = beta
        self.preset_params: JSON = {}
        self.estimated: tuple[tuple[object, ...], int] | None = None  # (what it read, the estimate)

    def exchange(self, route: Route) -> Exchange:
        if route.provider.kind == "anthropic":
            return NativeExchange(self.beta)
        exchange = TranslatedExchange(registry.get(route.provider.kind))
        exchange.preset_params = self.preset_params
        exchange.reasoning_limits = route.reasoning_limits
        exchange.prompt_tokens = self.prompt_tokens
        return exchange

    def prompt_tokens(self, body: JSON) -> int:
        """The request's prompt estimate, made once for the hold of every attempt, a translated stream's
        message_start and a missing usage: it measures every block of the history. Made again only for a body
        whose messages, system or tools are other objects (images inlined for Gemini, say)."""
        read = (body.get("messages"), body.get("system"), body.get("tools"))
        if self.estimated is None or any(a is not b for a, b in zip(read, self.estimated[0], strict=True)):
            self.estimated = (read, billing.estimate_prompt_tokens(body))
        return self.estimated[1]

    def wants_usage(self, body: JSON) -> bool:
        return True

    def present(self, reply: Reply, bill: Bill, generation_id: str) -> JSON:
        answer = reply.body
        answer["id"] = generation_id
        answer.setdefault("usage", anthropic_answer.usage_json(reply.usage))
        answer["billing"] = bill.block()
        return answer

    def apply_preset(self, preset: PresetConfig, body: JSON) -> JSON:
        self.preset_params = presets.chat_params(preset)
        return presets.apply_anthropic(preset, body)

