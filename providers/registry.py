"""Provider kind name -> adapter module.

An adapter is a module of pure functions (see `Adapter`); adding a provider kind is one new module and
one line here, nothing in the gateway changes.
"""

from __future__ import annotations

from types import ModuleType
from typing import Protocol, cast

from providers import anthropic, gemini, openai
from providers.types import (
    JSON,
    ChatRequest,
    ChatResult,
    SSEEvent,
    StreamState,
    Target,
    UpstreamHTTPError,
    UpstreamRequest,
)


class Adapter(Protocol):
    """What every provider module exposes."""

    STREAM_FRAMING: str  # "sse" or "ndjson": how the upstream frames its stream
    NEEDS_INLINE_IMAGES: bool  # the upstream takes image bytes only: the gateway inlines https image URLs
    # An event that parses into a content-only chunk (OpenAI's content chunk, Anthropic's text delta, Gemini's text
    # event) and leaves the stream's state as it was does nothing but relay its text, found at `TEXT_AT` in the
    # event's JSON: a later event equal to it but for the text may be relayed from its bytes while the state stays
    # so (gateway.template.Template, state_view: the gateway compares the state's fields before and after a parse).
    VERBATIM_CHUNKS: bool
    TEXT_AT: tuple[str | int, ...]
    # The state's fields such an event's parse sets from the event's own counts (Gemini restates the usage so far
    # on every event): they may differ from event to event, and the last event relayed from its bytes is parsed
    # before anything reads the state (gateway.streaming.ChunkCodec.catch_up); () for the others.
    RESTATES: tuple[str, ...]
    SUPPORTED_PARAMETERS: tuple[str, ...]  # request fields the kind carries upstream (OpenRouter's names)
    MAX_CHOICES: int  # the largest `n` the upstream honours (1: it would silently answer one choice)
    # The request's processing-tier fields (`service_tier`, Anthropic's `speed`, `inference_geo`) reach the upstream
    # as sent, or its answer names the tier that served it; False: served at the standard tier whatever was asked
    SENDS_TIERS: bool

    def build_request(self, req: ChatRequest, target: Target) -> UpstreamRequest: ...

    def max_output_tokens(self, body: JSON, target: Target) -> int | None:
        """The output tokens the upstream request allows when the translation sets more than the client
        asked (the hold must cover them), else None."""

    def parse_response(self, body: bytes, target: Target) -> ChatResult: ...

    def parse_error(self, status: int, body: bytes) -> UpstreamHTTPError: ...

    def new_stream_state(self, req: ChatRequest, target: Target) -> StreamState: ...

    def parse_stream_event(self, state: StreamState, event: SSEEvent) -> list[JSON]: ...

    def parse_stream_end(self, state: StreamState) -> list[JSON]:
        """At the body's end, before the gateway judges the stream: the chunks the end completes (a finish
        the adapter could not know was the last until nothing followed), usually none."""


_ADAPTERS: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic, "gemini": gemini}

KINDS: frozenset[str] = frozenset(_ADAPTERS)


def get(kind: str) -> Adapter:
    """The adapter of a provider kind; config validation guarantees the kind exists."""
    return cast(Adapter, _ADAPTERS[kind])
