"""Plain data passed between the gateway and the provider adapters.

Adapters are pure: they take these dataclasses (and plain dicts/bytes) and return them, so that every
translation can be tested on recorded wire bytes without a server. Nothing here does I/O.

Exception tree::

    ProviderError                  the upstream said no, or said something we cannot read
    ├── Untranslatable             a request field the upstream kind cannot honour (`param` names it)
    └── UpstreamHTTPError          a non-2xx answer, already read into (status, message, type, code)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar, dataclass_transform

import orjson

JSON = dict[str, Any]
_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def record(cls: type[_T]) -> type[_T]:
    """A frozen dataclass to the type checker (`make lint` refuses an assignment to a field), a plain
    slots dataclass at run time, hashed by its fields as a frozen one is.

    For the small records every request makes and drops (a hold's admission, its answer, a bill, an
    upstream request): a frozen dataclass's `__init__` sets each field through `object.__setattr__`,
    ~150 ns a field, which came to 4 % of a request's instructions. Records that live longer and are
    shared between requests (routes, targets, config) stay `frozen=True`, checked at run time too.

    The request path makes the hottest of them with positional arguments, in field order, from variables
    named like the fields: CPython 3.11 calls a class's `__init__` with keywords through a dict built
    for the call and unpacked again (~1,000 instructions a call, 2 % of a request's).
    """
    return dataclass(cls, slots=True, unsafe_hash=True)


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how one request goes upstream: everything an adapter needs from the config.

    `api_key` is already resolved (configured key or the client's BYOK key); it may be empty for
    upstreams that need none (a local Ollama or vLLM).
    """

    provider: str  # the provider's name in the config ("openai", "deepseek", ...)
    base_url: str  # no trailing slash
    api_key: str
    upstream_model: str  # the model name the upstream knows
    public_model: str  # the catalog id the client sees in responses ("openai/gpt-5")
    max_tokens_field: str | None = None  # rename max_tokens to this field ("max_completion_tokens")
    drop: tuple[str, ...] = ()  # request fields the upstream rejects for this model
    headers: tuple[tuple[str, str], ...] = ()  # extra static headers from the config
    # for kinds that require max_tokens (anthropic), and the most a translation may raise it to (thinking)
    default_max_tokens: int | None = None
    keep_cache_control: bool = False  # kind openai: the upstream takes Anthropic-style `cache_control` marks
    keep_reasoning_details: bool = False  # kind openai: the upstream wants history's `reasoning_details` back


@record
class ChatRequest:
    """A client's chat request after the gateway checked its shape.

    `body` is the client's JSON with gateway-only fields (`provider_api_key`) already removed; adapters
    must not mutate it.
    """

    body: JSON
    stream: bool


@record
class UpstreamRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool


@dataclass(slots=True)
class Usage:
    """Token counts of one generation, the one source of truth for billing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # part of prompt_tokens read from the provider's prompt cache
    cache_write_tokens: int = 0  # part of prompt_tokens written to the cache (Anthropic)
    reasoning_tokens: int = 0  # part of completion_tokens
    images: int = 0  # images generated (priced per image, not per token)
    reported: bool = False  # False when the upstream sent no usage and counts are missing/estimated
    cache_write_1h_tokens: int = 0  # part of cache_write_tokens kept for an hour (Anthropic's `ttl: "1h"`)
    web_searches: int = 0  # searches the upstream ran itself (Anthropic's web_search server tool), priced apiece
    service_tier: str = ""  # the processing tier the answer says served it (OpenAI's flex/priority), priced apart

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@record
class ChatResult:
    """A complete non-streamed answer: an OpenAI `chat.completion` object and its usage."""

    body: JSON
    usage: Usage


@dataclass(slots=True)
class SSEEvent:
    """One server-sent event as decoded by `providers.framing.SSEDecoder`."""

    data: bytes
    event: str = ""
    id: str = ""


@dataclass(slots=True)
class StreamState:
    """Per-request state of a stream translation; adapters may subclass it for their own fields."""

    public_model: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str | None = None
    done: bool = False  # the upstream signalled the end ([DONE], message_stop, ...)
    response_id: str = ""
    created: int = 0
    # indexes of the choices seen and of those finished (OpenAI-kind streams, n > 1): a stream that ends
    # without [DONE] is complete only when every choice it began has finished
    choices_seen: set[int] = field(default_factory=set)
    choices_finished: set[int] = field(default_factory=set)
    # the processing tier the stream's events named (OpenAI: on every chunk; Claude: message_start's usage):
    # what an estimate of a stream cut before its usage is priced at
    service_tier: str = ""


class ProviderError(Exception):
    """The upstream's answer cannot be used."""


class Untranslatable(ProviderError):
    """A field of the client's request that the upstream kind cannot honour; `param` names it, so the
    client's 400 points at the field (and a fallback of another kind may still serve the request)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# OpenAI's tools for an answer that no translation gives, each with what the client would miss; any value
# (`web_search_options: {}` included) asks for them
_OPENAI_ONLY = (("web_search_options", "the answer would not be searched"),
                ("moderation", "the answer would carry no moderation results"))


def refuse_openai_only(body: JSON, kind: str) -> None:
    """Refuse what only OpenAI-kind upstreams honour: log probabilities, the legacy `functions` /
    `function_call` fields, `logit_bias`, `web_search_options`, `moderation` and audio output (`modalities`).
    Dropping them would answer a different question than the client asked (no logprobs where the client reads
    them, prose where it expects a function call, banned tokens back in, an unsearched answer, no audio), so
    the client gets a 400 naming the field instead. `logprobs: false`, `top_logprobs: 0`, empty values and
    `modalities: ["text"]` ask for nothing and pass.
    """
    if body.get("logprobs") not in (None, False):
        raise Untranslatable(f"{kind} models return no log probabilities: 'logprobs' must be false or absent",
                             param="logprobs")
    if body.get("top_logprobs") not in (None, 0):
        raise Untranslatable(f"{kind} models return no log probabilities: 'top_logprobs' must be absent",
                             param="top_logprobs")
    for name in ("functions", "function_call"):
        if body.get(name):
            raise Untranslatable(f"'{name}' (legacy function calling) is not supported for {kind} models: "
                                 "use 'tools' and 'tool_choice'", param=name)
    if body.get("logit_bias"):
        raise Untranslatable(f"'logit_bias' is not supported for {kind} models: its token ids are OpenAI's "
                             "tokenizer's", param="logit_bias")
    for name, why in _OPENAI_ONLY:
        if body.get(name) is not None:
            raise Untranslatable(f"'{name}' is not supported for {kind} models: {why}", param=name)
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise Untranslatable(f"{kind} models answer in text only: 'modalities' must not ask for audio",
                             param="modalities")


def allowed_tools(choice: Any, tools: Any) -> tuple[str, list[Any]] | None:
    """For `tool_choice: {"type": "allowed_tools", "allowed_tools": {"mode", "tools"}}` (OpenAI's way to narrow
    one request's tools while `tools` stays the same, for its prompt cache): its mode, "auto" or "required",
    and the client's `tools` it names, in their order; None for any other tool_choice. Claude and Gemini have
    no such field, so their translations send only these tools, with the mode as their own auto / any. A name
    not among `tools` is refused, as OpenAI refuses it, rather than quietly allowing fewer tools."""
    if not isinstance(choice, dict) or choice.get("type") != "allowed_tools":
        return None
    spec = choice.get("allowed_tools")
    mode = spec.get("mode") if isinstance(spec, dict) else None
    listed = spec.get("tools") if isinstance(spec, dict) else None
    if mode not in ("auto", "required") or not isinstance(listed, list) or not listed:
        raise Untranslatable('tool_choice allowed_tools must be {"mode": "auto" or "required", "tools": [...]} '
                             "naming at least one tool", param="tool_choice")
    names = {_function_name(entry) for entry in listed}
    if None in names:
        raise Untranslatable('tool_choice allowed_tools: each tool must be {"type": "function", "function": '
                             '{"name": ...}}', param="tool_choice")
    kept = [tool for tool in tools if _function_name(tool) in names] if isinstance(tools, list) else []
    missing = names - {_function_name(tool) for tool in kept}
    if missing:
        shown = ", ".join(repr(name[:64]) for name in sorted(map(str, missing))[:5])
        raise Untranslatable(f"tool_choice allowed_tools names tools that are not in 'tools': {shown}",
                             param="tool_choice")
    return mode, kept


def _function_name(tool: Any) -> str | None:
    """The name of an OpenAI function tool (`{"type": "function", "function": {"name": ...}}`), else None."""
    fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) else None


def assistant_text(message: JSON, where: str) -> str:
    """The text an assistant message of the history stands for when its `content` holds none: its `refusal`
    (the model declined, in words the next turn should see), else the `transcript` of its audio answer, else
    nothing. Left out, the turn would vanish and the model would not know what it had answered. An audio
    answer known only by its `id` (kept at OpenAI, which alone can read it back) is refused."""
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        return refusal
    audio = message.get("audio")
    if audio is None:
        return ""
    transcript = audio.get("transcript") if isinstance(audio, dict) else None
    if isinstance(transcript, str) and transcript:
        return transcript
    raise Untranslatable(f"{where}.audio: an earlier audio answer known only by its id is kept at OpenAI and cannot "
                         "be sent to another provider; send its transcript as the message's content", param="messages")


def tool_arguments(raw: Any, where: str) -> JSON:
    """An OpenAI tool call's `arguments` (JSON text; empty means none) as the object Anthropic's `input` and
    Gemini's `args` take; `where` names the call's `function` in the client's request."""
    try:
        args = orjson.loads(raw or "{}")
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"{where}.arguments is not valid JSON") from exc
    if not isinstance(args, dict):
        raise ProviderError(f"{where}.arguments must be a JSON object")
    return args


def thought_signature(call: Any) -> str | None:
    """The Gemini thought signature a chat tool call carries, in Google's own OpenAI-compatible spelling
    (`extra_content.google.thought_signature`), or None. Clients send back whatever they were given, so
    anything not shaped as `signed` writes it is no signature, not an error."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def signed(signature: str) -> JSON:
    """The `extra_content` of a tool call that carries a Gemini thought signature (see `thought_signature`)."""
    return {"google": {"thought_signature": signature}}


def gemini_call_id(call: Any) -> str | None:
    """The id Gemini itself gave a chat tool call (`functionCall.id`), or None for an id the gateway or another
    provider made. The call says so with `extra_content.google.function_call_id`, the same id: Gemini matches a
    `functionResponse.id` to its call's, while endpoints that never give ids refuse the field."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    google = extra.get("google") if isinstance(extra, dict) else None
    call_id = google.get("function_call_id") if isinstance(google, dict) else None
    return call_id if isinstance(call_id, str) and call_id and call_id == call.get("id") else None


THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})  # Claude's block types of its reasoning

# The names a chat message or delta gives the model's reasoning text: DeepSeek's `reasoning_content` (which the
# gateway's own translations of Claude and Gemini write too), and `reasoning`, OpenRouter's, Ollama's /v1's and
# newer vLLM's (which sends both, holding the same text). Only these two fields of a message or delta: the
# request's top-level `reasoning` object is another thing (`providers.reasoning`).
REASONING_FIELDS = ("reasoning_content", "reasoning")


def reasoning_text(message: JSON) -> str:
    """The reasoning text of a chat message or delta, under either of `REASONING_FIELDS` ("" when none). A server
    that sends both names sends the same text twice: it is read once, the first name holding any."""
    for name in REASONING_FIELDS:
        value = message.get(name)
        if value.__class__ is str and value:
            return value
    return ""


def claude_thinking(call: Any) -> list[JSON]:
    """The Claude thinking blocks a chat tool call carries (`extra_content.anthropic.thinking_blocks`), in
    order, or []. Claude refuses the next turn of a tool loop with thinking unless the turn that called the
    tool comes back with its thinking blocks verbatim, so they ride where Gemini's thought signature rides.
    Only well-formed blocks count (`thinking` with its text and signature, `redacted_thinking` with its data):
    clients send back whatever they were given, and anything else is no block, not an error."""
    extra = call.get("extra_content") if isinstance(call, dict) else None
    anthropic = extra.get("anthropic") if isinstance(extra, dict) else None
    blocks = anthropic.get("thinking_blocks") if isinstance(anthropic, dict) else None
    return [block for block in blocks if _thinking_block(block)] if isinstance(blocks, list) else []


def _thinking_block(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    if block.get("type") == "thinking":
        return isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str) \
            and bool(block["signature"])
    return block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str) and bool(block["data"])


def claude_signed(blocks: list[JSON]) -> JSON:
    """The `extra_content` of a tool call that carries Claude thinking blocks (see `claude_thinking`)."""
    return {"anthropic": {"thinking_blocks": blocks}}


class UpstreamHTTPError(ProviderError):
    """A non-2xx upstream answer, parsed from the provider's error shape.

    `message` is the upstream's own text; the gateway scrubs secrets from it before a client sees it.
    `retryable` marks overload/5xx/429 answers a fallback may retry elsewhere. `retry_after` is a wait (in
    seconds, as a `Retry-After` value) the upstream stated in its body rather than in that header (Gemini).
    """

    def __init__(self, status: int, message: str, type_: str = "upstream_error", code: str | None = None,
                 param: str | None = None, retryable: bool = False, key_refused: bool = False,
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.key_refused = key_refused or status in (401, 403)  # the provider refused the key sent
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.retryable = retryable
        self.retry_after = retry_after


def whole_number(value: Any) -> int | None:
    """`value` when it is a JSON integer (not a bool, which Python counts as one), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ends_by_itself(state: StreamState) -> list[JSON]:
    """`parse_stream_end` of a kind whose streams say when they are done (OpenAI's [DONE], Claude's
    message_stop): nothing is left to relay at the body's end."""
    return []


def status_phrase(status: int) -> str:
    """An HTTP status's reason phrase, the message of an error answer that says nothing itself."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def images_follow(text: str, count: int, where: str) -> str:
    """A tool result's text noting that its `count` images follow `where`: a chat `tool` message and a
    Gemini functionResponse hold no images, so translations move them to the next user turn."""
    note = f"[{count} image(s) follow {where}]"
    return f"{text}\n{note}" if text else note


def images_heading(call_id: str) -> str:
    """The text ahead of a tool result's moved images, naming the call they answer."""
    return f"[Image(s) of the result of tool call {call_id}]"


def is_utf8(raw: bytes) -> bool:
    """Whether `raw` decodes as UTF-8: bytes relayed as they came into JSON a client parses must."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def load_object(raw: bytes, what: str = "answer") -> JSON:
    """An upstream's JSON object, or a ProviderError: a body that is not one is the upstream's fault,
    and the relay turns that error into a 502 rather than letting a decode error escape."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProviderError(f"upstream {what} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ProviderError(f"upstream {what} is not a JSON object")
    return data
