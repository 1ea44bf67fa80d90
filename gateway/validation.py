"""Hostile and malformed chat requests, refused with a clear 400 before anything is held or sent upstream.

`read_json` (gateway.requests) has already refused bodies that are too large, not JSON, not UTF-8 or
nested too deeply. What is checked here is what JSON allows but no provider accepts: unknown roles,
numbers out of range (negative `max_tokens`, `temperature` 7, `n` 10,000), model names and BYOK keys
that are not what they claim to be, and requests a model cannot serve (`n` > 1 where the provider gives
one choice per request, `max_tokens` beyond the model's maximum, a key's own caps).
"""

from __future__ import annotations

import math
import re
from typing import Any

from gateway.catalog import Route
from gateway.errors import InvalidRequest
from providers import reasoning, registry
from providers.types import Untranslatable

MAX_MODEL_NAME = 256
MAX_PROVIDER_KEY = 512
CHOICE_ENDPOINTS = frozenset({"chat", "completions"})  # where `n` asks the model for several answers
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PROVIDER_KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII without spaces: it goes into a header

# field: (lowest, highest, must be a whole number) — OpenAI's documented ranges
_NUMBERS: dict[str, tuple[float, float, bool]] = {
    "temperature": (0, 2, False),
    "top_p": (0, 1, False),
    "presence_penalty": (-2, 2, False),
    "frequency_penalty": (-2, 2, False),
    "n": (1, 128, True),
    "max_tokens": (1, 2**31 - 1, True),
    "max_completion_tokens": (1, 2**31 - 1, True),
    "top_logprobs": (0, 20, True),
    "seed": (-(2**63), 2**63 - 1, True),
}

# legacy completions' (`max_tokens` may be 0 there: the endpoint checks it apart; `best_of` is theirs alone)
COMPLETION_NUMBERS = {**{name: _NUMBERS[name] for name in ("temperature", "top_p", "presence_penalty",
                                                            "frequency_penalty", "n")}, "best_of": (0, 20, True)}


def check_chat(body: dict[str, Any], provider_key_header: str | None = None) -> None:
    """Refuse what no upstream would accept, naming the field, before the request costs anything."""
    model = body.get("model")
    if isinstance(model, str) and len(model) > MAX_MODEL_NAME:
        raise InvalidRequest(f"'model' is longer than {MAX_MODEL_NAME} characters.", param="model",
                             code="invalid_value")
    for i, message in enumerate(body.get("messages") or ()):
        _check_message(message, i)
    check_numbers(body, _NUMBERS)
    for provider_key in (body.get("provider_api_key"), provider_key_header):
        if provider_key is not None:
            check_provider_key(provider_key)
    _check_reasoning(body)


def check_numbers(body: dict[str, Any], numbers: dict[str, tuple[float, float, bool]]) -> None:
    """Each field of `numbers` (name: lowest, highest, whole) that the body sets is of its type and range."""
    for name, bounds in numbers.items():
        value = body.get(name)
        if value is not None:
            _check_number(value, name, *bounds)


def _check_reasoning(body: dict[str, Any]) -> None:
    """`reasoning_effort` and `reasoning` in the one reading every provider kind shares: a value no kind could
    honour (an unknown effort, a negative budget, two efforts that disagree) is the client's 400."""
    try:
        reasoning.requested(body)
    except Untranslatable as exc:
        raise InvalidRequest(f"{exc}.", param=exc.param, code="invalid_value") from exc


def _check_message(message: Any, i: int) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"messages[{i}] must be an object.", param=f"messages[{i}]", code="invalid_type")
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(f"messages[{i}].role {str(role)[:40]!r} is not one of {', '.join(sorted(ROLES))}.",
                             param=f"messages[{i}].role", code="invalid_value")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list):
        raise InvalidRequest(f"messages[{i}].content must be a string, an array of parts or null.",
                             param=f"messages[{i}].content", code="invalid_type")
    if isinstance(content, list) and not all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                             for p in content):
        raise InvalidRequest(f"Each part of messages[{i}].content must be an object with a string 'type'.",
                             param=f"messages[{i}].content", code="invalid_type")


def _check_number(value: Any, name: str, low: float, high: float, whole: bool) -> None:
    kind = "an integer" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        raise InvalidRequest(f"'{name}' must be {kind}.", param=name, code="invalid_type")
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(f"'{name}' must be {kind} from {low} to {high}; got {value!r:.40}.", param=name,
                             code="invalid_value")


def check_provider_key(value: Any) -> str:
    """A client's own provider key (BYOK) is sent upstream in a header: printable ASCII only, bounded."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PROVIDER_KEY or not _PROVIDER_KEY.match(value):
        raise InvalidRequest(f"'provider_api_key' must be 1 to {MAX_PROVIDER_KEY} printable ASCII characters "
                             "without spaces.", param="provider_api_key", code="invalid_value")
    return value


def choices(body: dict[str, Any]) -> int:
    """How many choices the request asks for (`n`, default 1)."""
    n = body.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


def serves(body: dict[str, Any], route: Route, endpoint: str = "chat") -> bool:
    """Whether `route`'s provider can give the request all its choices and take its turns (fallbacks that
    cannot are skipped).

    `n` counts choices on the text endpoints only (for images it counts pictures, checked by the handler).
    """
    if (endpoint == "messages" and not _claude_takes_turns(body, route)) or not tier_priced(body, route):
        return False
    return endpoint not in CHOICE_ENDPOINTS or choices(body) <= registry.get(route.provider.kind).MAX_CHOICES


def tier_priced(body: dict[str, Any], route: Route) -> bool:
    """Whether the processing tiers the request asks for are priced for `route`."""
    return unpriced_tier(body, route) is None


def unpriced_tier(body: dict[str, Any], route: Route) -> str | None:
    """The field (OpenAI's `service_tier`, Anthropic's `speed`...) asking for a processing tier
    `route` has no price for: the standard tier always has one, another (flex, priority, fast, at other prices)
    only when the model's price lists it. A tier the gateway cannot price is refused rather than served at one
    price and billed at another; a model whose `params.drop` names the field serves the standard tier."""
    for name, _, price in route.tiers_asked(body):
        if price is None:
            return name
    return None


def within_output_cap(body: dict[str, Any], route: Route) -> bool:
    """Whether the output tokens the request asks for are within the model's `max_output_tokens` (a fallback
    that gives fewer is skipped: the gateway refuses such an ask to the model itself)."""
    ceiling = route.model.max_output_tokens
    return not ceiling or output_ask_over(body, ceiling) is None


def output_ask_over(body: dict[str, Any], ceiling: int) -> str | None:
    """The field (`max_completion_tokens`, then `max_tokens`) asking for more output tokens than `ceiling`:
    a model's maximum or a key's cap."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > ceiling:
            return name
    return None


def _claude_takes_turns(body: dict[str, Any], route: Route) -> bool:
    """Claude (the native /v1/messages route) answers 400 "first message must use the "user" role" to a
    conversation opening with an assistant turn; other kinds take one, translated to chat."""
    messages = body.get("messages")
    first = messages[0] if isinstance(messages, list) and messages else None
    return route.provider.kind != "anthropic" or not isinstance(first, dict) or first.get("role") == "user"


def check_route(body: dict[str, Any], route: Route, endpoint: str = "chat") -> None:
    """What the primary model allows: `n`, `max_tokens`, on Claude's native route a first user turn."""
    if endpoint == "messages" and not _claude_takes_turns(body, route):
        raise InvalidRequest(f"messages: the first message must use the \"user\" role (model '{route.model_id}', "
                             "provider kind 'anthropic').", param="messages[0].role", code="invalid_value")
    if (field := unpriced_tier(body, route)) is not None:
        offered = ", ".join(repr(name) for name, _ in route.price.tiers)
        raise InvalidRequest(f"{field} {str(body[field])[:40]!r} is not offered for model '{route.model_id}' on this "
                             "gateway, which bills only the processing tiers it prices (the standard tier: leave the "
                             f"field out{'; also ' + offered if offered else ''}).", param=field,
                             code="unsupported_value")
    if not serves(body, route, endpoint):
        raise InvalidRequest(f"Model '{route.model_id}' gives one choice per request (provider kind "
                             f"'{route.provider.kind}'): 'n' must be 1.", param="n", code="unsupported_value")
    ceiling = route.model.max_output_tokens
    if ceiling and (name := output_ask_over(body, ceiling)):
        raise InvalidRequest(f"'{name}' is too large: {body[name]}. Model '{route.model_id}' gives at most "
                             f"{ceiling} output tokens.", param=name, code="invalid_value")
