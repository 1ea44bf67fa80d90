"""Claude's token counts: an Anthropic `usage` object (or the running counts of a stream's events) read into
the gateway's `Usage`, and that `Usage` written as OpenAI's `usage` object for a translated answer.

Prompt tokens = input + cache reads + cache writes (of which `usage.cache_creation.ephemeral_1h_input_tokens`
were written for an hour, at a higher price); reasoning = `output_tokens_details.thinking_tokens`; the searches
of Anthropic's web_search tool are counted apart, as Anthropic bills them. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from providers.types import JSON, Usage, whole_number

_COUNTS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens", "output_tokens")


def usage_from(raw: Any) -> Usage:
    """`Usage` of an Anthropic `usage` object (absent -> `reported=False`)."""
    counts: dict[str, int] = {}
    add_counts(counts, raw)
    return usage_of(counts, tier_of(raw))


# where an Anthropic `usage` object names how the request was served at a price of its own: `speed` "fast"
# (2-6x), `service_tier` "priority", `inference_geo` "us" (1.1x, on top of the others)
_TIER_FIELDS = ("speed", "service_tier", "inference_geo")
_STANDARD = frozenset({"standard", "global", "not_available"})


def tier_of(raw: Any) -> str:
    """The processing tier an Anthropic `usage` object says served the request: those of its tier fields naming
    something other than the standard, joined by "+" ("fast", "priority+us": Anthropic multiplies their
    premiums), else the standard one it names ("standard"), or ""."""
    if not isinstance(raw, dict):
        return ""
    named = [tier for name in _TIER_FIELDS if isinstance(tier := raw.get(name), str) and tier]
    premiums = [tier for tier in named if tier not in _STANDARD]
    return "+".join(premiums) if premiums else (named[0] if named else "")


def add_counts(counts: dict[str, int], raw: Any) -> None:
    """Note the token counts an Anthropic `usage` object holds; later (cumulative) counts replace earlier."""
    if not isinstance(raw, dict):
        return
    for name in _COUNTS:
        value = whole_number(raw.get(name))
        if value is not None:
            counts[name] = value
    details = raw.get("output_tokens_details")
    thinking = whole_number(details.get("thinking_tokens")) if isinstance(details, dict) else None
    if thinking is not None:
        counts["thinking_tokens"] = thinking
    creation = raw.get("cache_creation")  # the writes by lifetime: a 1-hour one is billed 2x input, not 1.25x
    hour = whole_number(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, dict) else None
    if hour is not None:
        counts["cache_creation_1h"] = hour
    server = raw.get("server_tool_use")  # Anthropic bills each search of its web_search tool apart from tokens
    searches = whole_number(server.get("web_search_requests")) if isinstance(server, dict) else None
    if searches is not None:
        counts["web_searches"] = searches


def usage_of(counts: dict[str, int], tier: str = "") -> Usage:
    """`Usage` from Anthropic counts: prompt tokens are fresh input + cache reads + cache writes."""
    if "input_tokens" not in counts and "output_tokens" not in counts:
        return Usage(service_tier=tier)  # an estimate is priced at it
    read, write = counts.get("cache_read_input_tokens", 0), counts.get("cache_creation_input_tokens", 0)
    return Usage(prompt_tokens=counts.get("input_tokens", 0) + read + write,
                 completion_tokens=counts.get("output_tokens", 0), cached_tokens=read, cache_write_tokens=write,
                 reasoning_tokens=counts.get("thinking_tokens", 0), reported=True,
                 cache_write_1h_tokens=min(counts.get("cache_creation_1h", 0), write),
                 web_searches=counts.get("web_searches", 0), service_tier=tier)


def openai_usage(usage: Usage) -> JSON:
    """OpenAI's `usage` object for a `Usage`."""
    out: JSON = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                 "total_tokens": usage.total_tokens,
                 "prompt_tokens_details": {"cached_tokens": usage.cached_tokens,
                                           "cache_write_tokens": usage.cache_write_tokens}}
    if usage.cache_write_1h_tokens:
        out["prompt_tokens_details"]["cache_write_1h_tokens"] = usage.cache_write_1h_tokens
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out
