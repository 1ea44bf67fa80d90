"""Trying a request's candidate models: retries under one deadline, a retry budget, a concurrency cap.

`serve_first` walks the candidates (`routing.candidates`) and calls `serve(route)` for each attempt:

- **Deadline.** `retries.deadline_s` covers every retry and fallback: no back-off sleeps past it, no new
  attempt starts after it, and a retry or fallback waits for the upstream's headers only until it
  (`attempt_time_left`, read by `relay.open_upstream`). The first attempt keeps its provider's own
  timeouts, so a long non-streamed generation is not cut by a retry setting.
- **Back-off.** Full jitter (`routing.retry_delay`), honouring `Retry-After`.
- **Retry budget** (Envoy's idea). Per provider and per process, retries in flight (back-off included)
  may be at most `retries.budget_ratio` of the requests working on that provider, but always
  `retries.budget_min`: a provider that fails everything sees a trickle of retries, not a multiple of its
  normal load. Past the budget a request moves on to its next candidate or fails with its last error.
- **Concurrency cap.** `providers.*.max_concurrency` attempts in flight per process (streams count until
  they end); one more gets a fast 503 `provider_overloaded` with `Retry-After` instead of a queue, and a
  request with fallbacks moves on to the next candidate at once.

What is retryable is decided where the error is raised (`GatewayError.retryable`): only failures before
the request body left (connect refused, proxy failure, no way out) and upstream answers with a status
(429, 5xx, 529). Once the body was sent, or a byte reached the client, nothing is resent.
A fallback that refuses the key at admission (402 balance, 429 its limits) is skipped: the client's answer
stays the failure of the model it asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from gateway import metrics, routing
from gateway.catalog import Route
from gateway.config import RetriesConfig
from gateway.errors import GatewayError, InsufficientQuota, RateLimited, Unavailable
from gateway.logging import get_logger

log = get_logger("gateway.resilience")
T = TypeVar("T")
OVERLOAD_RETRY_AFTER_S = 1
REFUSALS = (InsufficientQuota, RateLimited)  # the admission's refusals of the key (its upstream's 429 is another)

# loop time by which the current attempt must have its answer's headers; None: the provider's timeouts only
_ATTEMPT_DEADLINE: ContextVar[float | None] = ContextVar("attempt_deadline", default=None)


def attempt_time_left() -> float | None:
    """Seconds the current attempt may still wait for the upstream's headers (None: no request deadline)."""
    deadline = _ATTEMPT_DEADLINE.get()
    return None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0.0)


def provider_overloaded(provider: str, cap: int) -> Unavailable:
    return Unavailable(f"Provider {provider} already has {cap} requests in flight through this gateway "
                       "(providers.*.max_concurrency); retry shortly.", code="provider_overloaded",
                       retryable=True, headers={"Retry-After": str(OVERLOAD_RETRY_AFTER_S)})


class Guard:
    """Per-process counters behind the retry budget and the concurrency cap, keyed by provider name."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()  # requests working on a provider, back-off included
        self.retrying: Counter[str] = Counter()  # of which retries (from the decision to the attempt's end)
        self.in_flight: Counter[str] = Counter()  # attempts between admission and their last byte

    def _count(self, counter: Counter[str], provider: str) -> _Counted:
        return _Counted(counter, provider)

    def working_on(self, provider: str) -> contextlib.AbstractContextManager[None]:
        return self._count(self.active, provider)

    def retry(self, provider: str, cfg: RetriesConfig) -> contextlib.AbstractContextManager[None] | None:
        """A slot in the provider's retry budget, or None when the budget is spent."""
        allowed = max(cfg.budget_min, int(cfg.budget_ratio * self.active[provider]))
        if self.retrying[provider] >= allowed:
            return None
        return self._count(self.retrying, provider)

    def slot(self, provider: str, cap: int | None) -> contextlib.AbstractContextManager[None]:
        """Hold one of the provider's concurrency slots, or raise 503 provider_overloaded at once."""
        if cap is not None and self.in_flight[provider] >= cap:
            metrics.OVERLOADED.labels(provider).inc()
            raise provider_overloaded(provider, cap)
        return self._count(self.in_flight, provider)


class _Counted:
    """Counts `provider` in `counter` while the block runs (a class: two of these run per request)."""

    __slots__ = ("_counter", "_provider")

    def __init__(self, counter: Counter[str], provider: str) -> None:
        self._counter, self._provider = counter, provider

    def __enter__(self) -> None:
        self._counter[self._provider] += 1

    def __exit__(self, *_exc: object) -> None:
        counter, provider = self._counter, self._provider
        counter[provider] -= 1
        if counter[provider] <= 0:
            del counter[provider]


async def serve_first(guard: Guard, cfg: RetriesConfig, routes: list[Route],
                      serve: Callable[[Route], Awaitable[T]]) -> T:
    """The first answer of the candidates, in order; the last retryable error when none answered."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.deadline_s
    last: GatewayError | None = None
    for route in routes:
        if last is not None:
            if loop.time() >= deadline:
                break
            log.info("falling back", model=route.model_id, error=last.code)
        try:
            return await _serve_route(guard, cfg, route, serve, deadline, first=last is None)
        except GatewayError as exc:
            if last is not None and isinstance(exc, REFUSALS):
                # the key may not use this fallback (its balance, its limits there): a reason to skip it,
                # not the answer; the client asked for another model, whose failure is the answer
                log.info("fallback refused the key", model=route.model_id, error=exc.code)
                continue
            if not exc.retryable:
                raise
            # a candidate that cannot express the request says nothing about the ones that could: their
            # failure (a 429 with its Retry-After, a 503...) is the answer, the 400 only when none could
            if last is None or exc.code != "untranslatable" or last.code == "untranslatable":
                last = exc
    assert last is not None
    raise last


async def _serve_route(guard: Guard, cfg: RetriesConfig, route: Route, serve: Callable[[Route], Awaitable[T]],
                       deadline: float, first: bool) -> T:
    """Attempts on one model: the first, then retries while the error, deadline and budget allow."""
    provider = route.provider_name
    with guard.working_on(provider):
        try:
            return await _attempt(guard, route, serve, None if first else deadline)
        except GatewayError as exc:
            if not exc.retryable:
                raise
            error = exc
        for attempt in range(cfg.max_retries):
            delay = routing.retry_delay(attempt, error, cfg)
            if delay is None or asyncio.get_running_loop().time() + delay > deadline:
                break
            budget = guard.retry(provider, cfg)
            if budget is None:
                metrics.RETRIES.labels(provider, "budget_exhausted").inc()
                log.warning("retry budget exhausted", model=route.model_id, error=error.code)
                break
            with budget:
                metrics.RETRIES.labels(provider, "retried").inc()
                log.info("retrying", model=route.model_id, attempt=attempt + 1, delay_s=round(delay, 3),
                         error=error.code)
                await asyncio.sleep(delay)
                try:
                    return await _attempt(guard, route, serve, deadline)
                except GatewayError as exc:
                    if not exc.retryable:
                        raise
                    error = exc
        raise error


async def _attempt(guard: Guard, route: Route, serve: Callable[[Route], Awaitable[T]],
                   deadline: float | None) -> T:
    token = _ATTEMPT_DEADLINE.set(deadline)
    try:
        with guard.slot(route.provider_name, route.provider.max_concurrency):
            return await serve(route)
    finally:
        _ATTEMPT_DEADLINE.reset(token)
