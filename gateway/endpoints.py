"""OpenAI's endpoints besides chat on the shared pipeline: legacy completions, embeddings, moderations and
image generation. Each says which provider kinds serve it and how, what a request may cost at worst, and
how its answer is presented with the bill (the billing block and OpenRouter's `usage.cost`, as chat's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway import billing
from gateway.billing import Bill
from gateway.catalog import Route
from gateway.config import Config, PresetConfig
from gateway.exchange import (
    ChatEndpoint,
    ChatExchange,
    Exchange,
    PassthroughExchange,
    Reply,
    no_presets,
    reasoning_room,
    untranslatable,
)
from gateway.sse import frame
from gateway.streaming import ChunkCodec, StreamCodec
from providers import completions, gemini_embed, passthrough, registry
from providers.types import JSON, Target, UpstreamHTTPError, UpstreamRequest, Usage

Parser = Callable[[bytes, Target], tuple[JSON, Usage]]
_INTEGERS = frozenset({int, bool})  # what `isinstance(v, int)` holds for among JSON's values


def token_ids(value: list[Any]) -> bool:
    """Whether a non-empty array holds integers only (token ids), read in C: a batch of embeddings inputs holds up
    to 300k of them, tested one by one in Python before."""
    return bool(value) and _INTEGERS.issuperset(map(type, value))


def input_tokens(value: Any) -> int:
    """Tokens of an embeddings/moderations `input`: strings by their length, token-id arrays as counted."""
    if isinstance(value, str):
        return billing.estimate_tokens(billing.utf8_len(value))
    if isinstance(value, list):
        if token_ids(value):
            return len(value)
        return sum(input_tokens(v) for v in value)
    if isinstance(value, dict):  # a moderation part: {"type": "text", "text": ...} or an image
        return input_tokens(value.get("text")) if value.get("type") == "text" else billing.IMAGE_TOKENS
    return 0


def prompt_count(prompt: Any) -> int:
    """How many prompts a legacy completion asks for: a batch (a list of strings or of token-id lists) is
    answered with `n` choices for each of its prompts; a string or one token-id list is one prompt."""
    if isinstance(prompt, list) and prompt and not token_ids(prompt):
        return len(prompt)
    return 1


def _count(body: JSON, name: str, default: int = 1) -> int:
    value = body.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


# -- completions -----------------------------------------------------------------------------------


class CompletionCodec(ChunkCodec):
    """Chat chunks re-encoded as streamed `text_completion` objects."""

    def encode(self, chunk: JSON) -> bytes:
        return frame(completions.completion_chunk(chunk))


class ChatCompletionsExchange(ChatExchange):
    """A legacy completion on a chat-only model: one user turn out, `choices[].text` back."""

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        return super().build(completions.chat_body(body), target, stream)

    def parse(self, raw: bytes, target: Target) -> Reply:
        reply = super().parse(raw, target)
        reply.body = completions.completion_from_chat(reply.body)
        return reply

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec:
        chat = ChatExchange.codec(self, completions.chat_body(body), target, generation_id, wants_usage)
        assert isinstance(chat, ChunkCodec)
        return CompletionCodec(chat.adapter, chat.state, generation_id, wants_usage)


class NativeCompletionsExchange(PassthroughExchange):
    """A legacy completion on the upstream's own `/completions`, told the `max_tokens` its hold counted when
    the client named none: compatible servers (Ollama, llama.cpp) generate without limit then."""

    def __init__(self) -> None:
        super().__init__("completions", passthrough.parse_completion)

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        if body.get("max_tokens") is None:
            body = {**body, "max_tokens": completions.DEFAULT_MAX_TOKENS}
        return super().build(body, target, stream)


class CompletionsEndpoint(ChatEndpoint):
    """POST /v1/completions: presented and streamed as chat is, held on its own `prompt` and `n`/`best_of`."""

    name = "completions"

    def exchange(self, route: Route) -> Exchange:
        if route.model.completions == "native":
            if route.provider.kind != "openai":
                raise untranslatable(route, "native /v1/completions")
            return NativeCompletionsExchange()
        return ChatCompletionsExchange(registry.get(route.provider.kind))

    def worst_case(self, body: JSON, route: Route, config: Config) -> Usage:
        asked = _count(body, "max_tokens", completions.DEFAULT_MAX_TOKENS)  # what the upstream is sent
        ceiling = route.model.max_output_tokens
        per_choice = (min(asked, ceiling) if ceiling else asked) + reasoning_room(route, config)
        n = max(_count(body, "n"), _count(body, "best_of")) * prompt_count(body.get("prompt"))
        return Usage(prompt_tokens=input_tokens(body.get("prompt")), completion_tokens=n * per_choice)

    def estimate(self, body: JSON, text_bytes: int) -> Usage:
        return Usage(prompt_tokens=input_tokens(body.get("prompt")),
                     completion_tokens=billing.estimate_tokens(text_bytes))

    def apply_preset(self, preset: PresetConfig, body: JSON) -> JSON:
        no_presets(preset)


# -- embeddings, moderations, images ----------------------------------------------------------------


class GeminiEmbedExchange:
    """OpenAI embeddings on Gemini's batchEmbedContents."""

    needs_inline_images = False

    def __init__(self) -> None:
        self.encoding_format: Any = "float"

    def build(self, body: JSON, target: Target, stream: bool) -> UpstreamRequest:
        self.encoding_format = body.get("encoding_format", "float")
        return gemini_embed.build_request(body, target)

    def parse(self, raw: bytes, target: Target) -> Reply:
        answer, usage = gemini_embed.parse_response(raw, target, self.encoding_format)
        return Reply(body=answer, usage=usage)

    def parse_error(self, status: int, raw: bytes) -> UpstreamHTTPError:
        return registry.get("gemini").parse_error(status, raw)

    def codec(self, body: JSON, target: Target, generation_id: str, wants_usage: bool) -> StreamCodec:
        raise AssertionError("embeddings never stream")


class _OneShot:
    """An endpoint answered in one JSON object, served by OpenAI-kind upstreams only."""

    name = ""
    path = ""
    what = ""
    own_id = False  # the answer's id becomes the generation id (the handle for /v1/generation)

    def exchange(self, route: Route) -> Exchange:
        if route.provider.kind != "openai":
            raise untranslatable(route, self.what)
        return PassthroughExchange(self.path, self.parser())

    def parser(self) -> Parser:
        raise NotImplementedError

    def estimate(self, body: JSON, text_bytes: int) -> Usage:
        return Usage(prompt_tokens=input_tokens(body.get("input")))

    def wants_usage(self, body: JSON) -> bool:
        return False

    def present(self, reply: Reply, bill: Bill, generation_id: str) -> JSON:
        answer = reply.body
        answer["billing"] = bill.block()
        usage = answer.get("usage")
        if isinstance(usage, dict):
            billing.restate_usage(usage, answer["billing"])
        if self.own_id:
            answer["id"] = generation_id
        else:
            answer.setdefault("id", generation_id)
        return answer

    def apply_preset(self, preset: PresetConfig, body: JSON) -> JSON:
        no_presets(preset)


class EmbeddingsEndpoint(_OneShot):
    """POST /v1/embeddings: priced per input token (the model's input_per_mtok)."""

    name, path, what = "embeddings", "embeddings", "/v1/embeddings"
    own_id = True

    def exchange(self, route: Route) -> Exchange:
        if route.provider.kind == "gemini":
            return GeminiEmbedExchange()
        return super().exchange(route)

    def parser(self) -> Parser:
        return passthrough.parse_embeddings

    def worst_case(self, body: JSON, route: Route, config: Config) -> Usage:
        return Usage(prompt_tokens=input_tokens(body.get("input")))

    def present(self, reply: Reply, bill: Bill, generation_id: str) -> JSON:
        reply.body["usage"] = {"prompt_tokens": reply.usage.prompt_tokens, "total_tokens": reply.usage.prompt_tokens}
        return super().present(reply, bill, generation_id)


class ModerationsEndpoint(_OneShot):
    """POST /v1/moderations: priced per request (OpenAI does not charge; the operator may)."""

    name, path, what = "moderations", "moderations", "/v1/moderations"
    own_id = True

    def parser(self) -> Parser:
        return passthrough.parse_moderation

    def worst_case(self, body: JSON, route: Route, config: Config) -> Usage:
        return Usage()


class ImagesEndpoint(_OneShot):
    """POST /v1/images/generations: priced per image (the model's per_image), plus tokens when reported."""

    name, path, what = "images", "images/generations", "/v1/images/generations"

    def parser(self) -> Parser:
        return passthrough.parse_images

    def worst_case(self, body: JSON, route: Route, config: Config) -> Usage:
        """`n` images and, for a model with token prices (gpt-image-1 reports its tokens), the prompt and
        each image's output tokens up to the model's `max_output_tokens` (else the billing default)."""
        n = _count(body, "n")
        per_image = route.model.max_output_tokens or config.billing.default_max_output_tokens
        return Usage(prompt_tokens=input_tokens(body.get("prompt")), completion_tokens=n * per_image, images=n)

    def estimate(self, body: JSON, text_bytes: int) -> Usage:
        return Usage()


COMPLETIONS = CompletionsEndpoint()
EMBEDDINGS = EmbeddingsEndpoint()
MODERATIONS = ModerationsEndpoint()
IMAGES = ImagesEndpoint()
