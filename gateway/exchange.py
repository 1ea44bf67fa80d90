"""What an API family plugs into the shared pipeline: admit -> translate -> egress -> relay -> settle.

The pipeline (`gateway.pipeline`) knows nothing about chat, embeddings or Anthropic's format. Each
API family is an `Endpoint`: it says what a request may cost at worst, estimates usage the upstream did
not report, picks the `Exchange` for the provider kind behind a route, and presents the answer with its
bill. An `Exchange` is the translation for one (endpoint, provider kind) pair: the upstream request, the
answer read back as a `Reply`, and a stream codec. Translation itself stays in `providers/` (pure); the
classes here only choose and wire it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from gateway import billing, presets
from gateway.billing import Bill
from gateway.catalog import Route
from gateway.config import Config, PresetConfig
from gateway.errors import InvalidRequest
from gateway.streaming import ChunkCodec, StreamCodec, message_bytes, strip_reasoning
from providers import openai, passthrough, reasoning, registry
from providers.registry import Adapter
from providers.types import JSON, ChatRequest, Target, UpstreamHTTPError, UpstreamRequest, Usage


@dataclass(slots=True)
class Reply:
    """A complete non-streamed answer, client-shaped but without its bill yet."""

    body: JSON
    usage: Usage
    finish_reason: str | None = None
    upstream_id: str = ""
    text_bytes: int = 0  # generated text, for an estimate when the upstream reported no usage
    extra: dict[str, Any] = field(default_factory=dict)


class Exchange(Protocol):
    """One endpoint's translation for one provider kind."""

    needs_inline_images: bool

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest: ...

    def parse(self, raw: bytes, target: Target) -> Reply: ...

    def parse_error(self, status: int, raw: bytes) -> UpstreamHTTPError: ...

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec: ...


class Endpoint(Protocol):
    """An API family served by the pipeline."""

    name: str  # "chat", "completions", ...: recorded with each generation

    def exchange(self, route: Route) -> Exchange: ...

    def worst_case(self, body: JSON, route: Route, config: Config) -> Usage: ...

    def estimate(self, body: JSON, text_bytes: int) -> Usage: ...

    def wants_usage(self, body: JSON) -> bool: ...

    def present(self, reply: Reply, bill: Bill, generation_id: str) -> JSON: ...

    def apply_preset(self, preset: PresetConfig, body: JSON) -> JSON: ...


def no_presets(preset: PresetConfig) -> NoReturn:
    """`apply_preset` of the endpoints that have no system prompt to put a preset's into."""
    raise InvalidRequest("Presets apply to /v1/chat/completions and /v1/messages only.", code="preset_not_supported",
                         param="model")


def untranslatable(route: Route, what: str) -> InvalidRequest:
    return InvalidRequest(f"Model '{route.model_id}' (provider kind {route.provider.kind}) does not serve {what}.",
                          code="unsupported_endpoint", param="model")


def chat_text_bytes(choices: list[Any]) -> int:
    """Generated text of a chat answer's choices, counted as a stream's deltas are (content, reasoning,
    refusal, tool-call arguments)."""
    n = 0
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            n += message_bytes(message)
    return n


class ChatExchange:
    """OpenAI chat in, any adapter out: the provider modules' own job. A request with `reasoning.exclude`
    gets its answer without reasoning (`reasoning_content` or `reasoning`), whatever the kind (the tokens are
    billed all the same)."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.needs_inline_images = adapter.NEEDS_INLINE_IMAGES
        self.hide_reasoning = False  # set by `build` from the request it sends

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        self.hide_reasoning = reasoning.excluded(body)
        return self.adapter.build_request(ChatRequest(body, stream), target)

    def parse(self, raw: bytes, target: Target) -> Reply:
        result = self.adapter.parse_response(raw, target)
        answer = result.body
        choices = answer.get("choices") or [{}]
        generated = chat_text_bytes(choices)  # hidden reasoning was generated all the same
        if self.hide_reasoning:
            for choice in choices:
                if isinstance(message := choice.get("message"), dict):
                    strip_reasoning(message)
        return Reply(answer, result.usage, choices[0].get("finish_reason"), str(answer.get("id", "")), generated)

    def parse_error(self, status: int, raw: bytes) -> UpstreamHTTPError:
        return self.adapter.parse_error(status, raw)

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec:
        state = self.adapter.new_stream_state(ChatRequest(body=body, stream=True), target)
        return ChunkCodec(self.adapter, state, generation_id, wants_usage, hide_reasoning=reasoning.excluded(body))


class PassthroughExchange:
    """An OpenAI endpoint besides chat on an OpenAI-kind upstream: the body goes out as the client sent it."""

    needs_inline_images = False

    def __init__(self, path: str, parse: Callable[[bytes, Target], tuple[JSON, Usage]]) -> None:
        self.path, self._parse = path, parse

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        return passthrough.build_request(self.path, body, target, stream)

    def parse(self, raw: bytes, target: Target) -> Reply:
        answer, usage = self._parse(raw, target)
        choices = answer.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        text = sum(billing.utf8_len(c["text"]) for c in choices or ()
                   if isinstance(c, dict) and isinstance(c.get("text"), str))
        return Reply(body=answer, usage=usage, finish_reason=first.get("finish_reason"),
                     upstream_id=str(answer.get("id", "")), text_bytes=text)

    def parse_error(self, status: int, raw: bytes) -> UpstreamHTTPError:
        return openai.parse_error(status, raw)

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec:
        return ChunkCodec(registry.get("openai"), openai.new_stream_state(ChatRequest(body=body, stream=True), target),
                          generation_id, wants_usage)


def openai_present(reply: Reply, bill: Bill, generation_id: str) -> JSON:
    """An OpenAI-shaped answer with the gateway's id, OpenRouter's `usage.cost` and the billing block."""
    answer = reply.body
    block = bill.block()
    answer["id"] = generation_id
    answer["billing"] = block
    usage = answer.get("usage")
    if not isinstance(usage, dict):  # absent, or a compatible server's `"usage": null`
        usage = answer["usage"] = usage_json(reply.usage)
    billing.restate_usage(usage, block)
    return answer


def usage_json(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def wants_stream_usage(body: JSON) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


def reasoning_room(route: Route, config: Config) -> int:
    """The output tokens a choice may reason beyond the `max_tokens` it is sent, on a model where that bounds only the
    answer's text (xAI counts reasoning apart: `params.reasoning_beyond_max_tokens`); held as an output no request
    field bounds is: the model's `max_output_tokens`, else `billing.default_max_output_tokens`. Elsewhere none."""
    if not route.model.params.reasoning_beyond_max_tokens:
        return 0
    return route.model.max_output_tokens or config.billing.default_max_output_tokens


class ChatEndpoint:
    """POST /v1/chat/completions."""

    name = "chat"

    def exchange(self, route: Route) -> Exchange:
        return ChatExchange(registry.get(route.provider.kind))

    def worst_case(self, body: JSON, route: Route, config: Config) -> Usage:
        """The client's own worst case, or more when the translation gives the upstream more room (Claude's
        thinking raises max_tokens above its budget)."""
        usage = billing.worst_case_usage(body, route.model.max_output_tokens, config.billing.default_max_output_tokens,
                                         reasoning_room(route, config), self.prompt_tokens(body))
        sent = registry.get(route.provider.kind).max_output_tokens(body, route.target(""))
        if sent is not None and sent > usage.completion_tokens:
            usage.completion_tokens = sent
        return usage

    def estimate(self, body: JSON, text_bytes: int) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens(body), completion_tokens=billing.estimate_tokens(text_bytes))

    def prompt_tokens(self, body: JSON) -> int:
        """The prompt estimate of holds and missing usage (/v1/messages makes it once a request)."""
        return billing.estimate_prompt_tokens(body)

    def wants_usage(self, body: JSON) -> bool:
        return wants_stream_usage(body)

    def present(self, reply: Reply, bill: Bill, generation_id: str) -> JSON:
        return openai_present(reply, bill, generation_id)

    def apply_preset(self, preset: PresetConfig, body: JSON) -> JSON:
        return presets.apply_chat(preset, body)


CHAT = ChatEndpoint()
