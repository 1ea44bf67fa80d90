"""Money: what a request may cost at worst (the hold), what it did cost, and the billing block clients see.

Everything is integer nano-dollars; dollars appear only in the JSON written to clients. Token prices are
per million tokens, so a cost is one integer sum divided once, rounded up: a request never costs less
than its tokens.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from gateway import pdf
from gateway.catalog import Price
from providers.types import Usage, record

NANO = 1_000_000_000
MTOK = 1_000_000
IMAGE_TOKENS = 1_600  # generous per-image allowance for the prompt estimate (a 2048px tile set)
MESSAGE_OVERHEAD = 8  # role, separators
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})  # OpenAI chat, Responses, Anthropic
# a PDF page: Claude reads each as its text (1,500-3,000 tokens by Anthropic's PDF guide) and as an image
PDF_PAGE_TOKENS = 3_000 + IMAGE_TOKENS
PDF_BYTES_PER_PAGE = 50_000  # pages assumed of a PDF whose pages cannot be counted (errs high: text pages weigh less)
PDF_DATA_URI = "data:application/pdf;base64,"
TEXT_FIELDS = {"text": "text", "tool_result": "content"}  # a block's one long string: a prompt, a tool's output
PDF_PARTS = frozenset({"document", "file"})  # the only types `_pdf_base64` may find a PDF in
RARE_PARTS = IMAGE_PARTS | PDF_PARTS  # what an agent's blocks almost never are
LONG_TEXT = 512  # characters of such a string beyond which it is measured, not serialized, with its block


def nano_to_usd(nano: int) -> float:
    return nano / NANO


def token_cost(price: Price, usage: Usage) -> int:
    """The cost of `usage` at `price`, per-request, per-image and per-search fees included. Of the prompt, cache reads
    cost the cached price and cache writes the write price (providers charge a write above fresh input), those
    kept for an hour the 1-hour write price (Anthropic: 2x input, against 1.25x for its 5-minute default)."""
    read = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - read)
    hour = min(usage.cache_write_1h_tokens, written)
    fresh = usage.prompt_tokens - read - written
    write_price, hour_price = price.cache_writes()
    total = (fresh * price.input_per_mtok + read * price.cached_input_per_mtok + (written - hour) * write_price
             + hour * hour_price + usage.completion_tokens * price.output_per_mtok)
    return (-(-total // MTOK) + price.per_request + usage.images * price.per_image
            + usage.web_searches * price.per_web_search)


def estimate_tokens(text_bytes: int) -> int:
    """Tokens of text by its UTF-8 length: ~4 bytes a token in English, fewer elsewhere; err high."""
    return -(-text_bytes // 3)


def utf8_len(text: str) -> int:
    """A string's size in UTF-8 without encoding it when it is ASCII (CPython knows that in O(1)): a long prompt or
    answer is not copied only to be measured."""
    return len(text) if text.isascii() else len(text.encode())


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """An upper-leaning estimate of a request's prompt tokens, without a tokenizer: an OpenAI chat body or an
    Anthropic Messages body (its top-level `system`, images inside `tool_result` blocks). The one estimate
    of holds, of usage the upstream did not report, and of /v1/messages/count_tokens. Its PDFs share one
    inflate budget (`gateway.pdf`)."""
    budget = pdf.InflateBudget()
    messages = body.get("messages") or ()
    tokens = MESSAGE_OVERHEAD * len(messages)
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            tokens += estimate_tokens(utf8_len(content))
        elif isinstance(content, list):
            tokens += _blocks_tokens(content, budget)
        if isinstance(message, dict) and message.get("tool_calls"):
            tokens += estimate_tokens(len(orjson.dumps(message["tool_calls"])))
    for name in ("system", "tools"):
        if body.get(name):
            tokens += estimate_tokens(len(orjson.dumps(body[name])))
    return tokens


def _blocks_tokens(blocks: list[Any], budget: pdf.InflateBudget) -> int:
    """Each block is its serialized size, but an image costs a flat allowance whatever its encoding (base64
    text is no measure of its tokens), a PDF its pages, and a block holding blocks (Anthropic's `tool_result`)
    its own fields plus each of its blocks.

    One loop for a message's blocks, not a call each, and a block's `type` looked up once: an agent's turn
    sends hundreds of text, tool_use and tool_result blocks, and almost never an image or a PDF."""
    tokens = 0
    for block in blocks:
        if not isinstance(block, dict):
            tokens += estimate_tokens(len(orjson.dumps(block)))
            continue
        kind = block.get("type")
        field = TEXT_FIELDS.get(kind) if isinstance(kind, str) else None  # any JSON may come: a list is unhashable
        if field is None and isinstance(kind, str) and kind in RARE_PARTS:
            if kind in IMAGE_PARTS:
                tokens += IMAGE_TOKENS
                continue
            if (pdf_part := _pdf_base64(block)) is not None:
                encoded, rest = pdf_part
                tokens += pdf_tokens(encoded, budget) + estimate_tokens(len(orjson.dumps(rest)))
                continue
        nested = block.get("content")
        if isinstance(nested, list):
            rest = dict(block)
            del rest["content"]
            tokens += estimate_tokens(len(orjson.dumps(rest))) + _blocks_tokens(nested, budget)
        elif field is not None and (text := block.get(field)).__class__ is str and len(text) > LONG_TEXT:
            # measured apart: a source file is not copied to be measured
            tokens += estimate_tokens(len(orjson.dumps({**block, field: ""})) + utf8_len(text))  # type: ignore[arg-type]
        else:
            tokens += estimate_tokens(len(orjson.dumps(block)))
    return tokens


def _pdf_base64(part: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The base64 text of an inline PDF, and the block without it (measured apart: megabytes of base64 are not
    copied to be measured): Anthropic's `document` block with a base64 source, or an OpenAI chat `file` part
    with a PDF data: URI (what Gemini and OpenAI take)."""
    source = part.get("source")
    if part.get("type") == "document" and isinstance(source, dict) and source.get("type") == "base64" \
            and source.get("media_type") == "application/pdf" and isinstance(source.get("data"), str):
        return str(source["data"]), {**part, "source": {**source, "data": ""}}
    file = part.get("file")
    data = file.get("file_data") if part.get("type") == "file" and isinstance(file, dict) else None
    if isinstance(data, str) and data.startswith(PDF_DATA_URI):
        return data.removeprefix(PDF_DATA_URI), {**part, "file": {**file, "file_data": PDF_DATA_URI}}  # type: ignore[dict-item]
    return None


def pdf_tokens(encoded: str, budget: pdf.InflateBudget | None = None) -> int:
    """A PDF's allowance: `PDF_PAGE_TOKENS` a page, its pages counted in its bytes (`gateway.pdf`), else
    assumed from its size. Base64 length is no measure: 1 MB of PDF is ~350k tokens read as text, a few
    pages' worth to the model."""
    try:
        raw = base64.b64decode(encoded)
    except (binascii.Error, ValueError):
        raw = b""
    size = len(raw) or len(encoded) * 3 // 4
    pages = pdf.count_pages(raw, budget) if raw else None
    return (pages or max(1, -(-size // PDF_BYTES_PER_PAGE))) * PDF_PAGE_TOKENS


def requested_max_output(body: dict[str, Any]) -> int | None:
    """The larger of the two fields when both are set: which one an upstream honours depends on its kind
    and on `params.max_tokens_field`, and the hold must cover either."""
    most = None
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0 and (most is None or value > most):
            most = value
    return most


def worst_case_usage(body: dict[str, Any], model_max_output: int | None, default_max_output: int,
                     reasoning_room: int = 0, prompt_tokens: int | None = None) -> Usage:
    """The usage a hold must cover: the prompt estimate (`prompt_tokens` when the caller made it already) plus
    every output token the request may produce.

    With `n` choices the upstream may produce `max_tokens` for each of them (the prompt is counted once), and
    `reasoning_room` more each where `max_tokens` does not bound the model's reasoning (`exchange.reasoning_room`).
    """
    asked = requested_max_output(body)
    if asked:  # what the upstream is sent; the default is the worst case only when nobody set one
        max_out = min(asked, model_max_output) if model_max_output else asked
    else:
        max_out = model_max_output or default_max_output
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    prompt = estimate_prompt_tokens(body) if prompt_tokens is None else prompt_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=(max_out + reasoning_room) * choices)


@record
class Bill:
    """What the client is told about its request's cost."""

    cost: int  # nano-dollars charged
    balance: int  # nano-dollars available after the charge
    reserved: int  # the hold placed before the call
    using_own_key: bool
    estimated: bool  # usage had to be estimated (upstream sent none)

    def block(self) -> dict[str, Any]:
        """The Dewiar `billing` block, plus what no peer tells: currency, the hold, whether estimated."""
        return {
            "request_cost": nano_to_usd(self.cost),
            "balance_remaining": nano_to_usd(self.balance),
            "using_own_key": self.using_own_key,
            "currency": "USD",
            "reserved": nano_to_usd(self.reserved),
            "estimated": self.estimated,
        }


# Money figures an upstream's `usage` may carry about the operator's own account (OpenRouter: the price
# it charged, its upstream's, whether the operator's key was used; xAI: its price in 1e-10 USD "ticks"):
# never the client's business.
UPSTREAM_MONEY = ("cost_details", "is_byok", "cost_in_usd_ticks")


def restate_usage(usage: dict[str, Any], block: dict[str, Any]) -> None:
    """An upstream's `usage` object as the client's: `cost` (OpenRouter's field, which clients read) is
    what this request cost the key, and the upstream's own money figures are gone."""
    usage["cost"] = block["request_cost"]
    for name in UPSTREAM_MONEY:
        usage.pop(name, None)
