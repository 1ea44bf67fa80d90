"""Which models a request may be served by, in order, and how long to wait before trying again.

A request's candidates are its model, then the models it lists itself (OpenRouter's `models` field),
then the model's configured `fallbacks`. A candidate is tried again on retryable failures (429, 5xx,
529, timeouts, egress failures) with exponential back-off and full jitter, honouring the upstream's
`Retry-After`, and all of it inside one deadline; then the next candidate (`gateway.resilience` runs
the loop, under a retry budget). A request that a candidate's provider kind cannot express moves on to
the next candidate at once. Nothing is resent once the request body left, nor retried once a byte
reached the client: such failures are never retryable.
"""

from __future__ import annotations

import datetime
import email.utils
import random
from typing import Any

from gateway.catalog import Catalog, Route
from gateway.config import RetriesConfig
from gateway.errors import GatewayError, InvalidRequest


def candidates(catalog: Catalog, body: dict[str, Any]) -> list[Route]:
    """The primary route and its fallbacks, deduplicated; an unknown model anywhere is the client's 404."""
    primary = catalog.resolve(body["model"])
    listed = body.get("models") or []
    if not isinstance(listed, list) or not all(isinstance(m, str) for m in listed):
        raise InvalidRequest("'models' must be an array of model ids.", param="models", code="invalid_type")
    routes = [primary, *(catalog.resolve(m) for m in listed),
              *(catalog.routes[m] for m in primary.model.fallbacks)]
    seen: set[str] = set()
    return [r for r in routes if not (r.model_id in seen or seen.add(r.model_id))]  # type: ignore[func-returns-value]


MOVE_ON_AT_ONCE = frozenset({"egress_unavailable", "provider_overloaded", "untranslatable", "upstream_redirect",
                             "upstream_model_not_found"})


def retry_after_s(value: str) -> float | None:
    """Seconds a `Retry-After` asks for: delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when unreadable."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 850 / asctime forms carry no zone: HTTP dates are GMT
        when = when.replace(tzinfo=datetime.UTC)
    return (when - datetime.datetime.now(datetime.UTC)).total_seconds()


def retry_delay(attempt: int, error: GatewayError, cfg: RetriesConfig) -> float | None:
    """Seconds to wait before retrying the same model, or None to move on to the next candidate.

    A pool with no healthy proxy stays that way until its probes say otherwise, a provider at its
    concurrency cap is busy now, a request the model's provider kind cannot express (`untranslatable`:
    `logprobs` for Claude) stays so, and so does a provider that answers with a redirect or does not know
    the configured model: retrying the same model would only make the client wait (or add to the crowd), so
    such errors move on at once, to a candidate that may take the request; with none left, the client gets
    the error. Otherwise full jitter: uniform between 0 and the exponential cap, which spreads a crowd of
    failing requests best
    (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    if error.code in MOVE_ON_AT_ONCE:
        return None
    delay = random.uniform(0.0, min(cfg.max_delay_s, cfg.base_delay_s * 2**attempt))
    retry_after = error.headers.get("Retry-After")
    if retry_after:
        wanted = retry_after_s(retry_after)
        if wanted is None:
            return delay
        if wanted > cfg.honor_retry_after_up_to_s:
            return None
        delay = max(delay, wanted)
    return delay
