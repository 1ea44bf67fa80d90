"""The gateway's Prometheus metrics, defined in one place.

Labels are bounded sets from the config — route templates, provider names, catalog model ids, status
classes — never raw client input: a request for an unknown model is counted under model="unknown".
With several workers, prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the
supervisor) makes /metrics report the sum over workers.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter("gateway_requests_total", "Client requests by route, provider, model and status class",
                   ["route", "provider", "model", "status_class"])
DURATION = Histogram("gateway_request_duration_seconds", "Whole request time as the client saw it",
                     ["route", "provider", "model"], buckets=LATENCY_BUCKETS)
TTFT = Histogram("gateway_time_to_first_token_seconds", "Time until the first streamed token left the gateway",
                 ["provider", "model"], buckets=LATENCY_BUCKETS)
UPSTREAM = Histogram("gateway_upstream_duration_seconds", "Time until the upstream's response headers",
                     ["provider", "model"], buckets=LATENCY_BUCKETS)
TOKENS = Counter("gateway_tokens_total", "Tokens by direction", ["provider", "model", "direction"])
COST = Counter("gateway_cost_dollars_total", "Dollars charged to balances", ["provider", "model"])
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests refused by a rate limit", ["model"])
INSUFFICIENT = Counter("gateway_insufficient_balance_total", "Requests refused for balance", ["model"])
STORE_ERRORS = Counter("gateway_store_errors_total", "Store operations that failed", ["operation"])
# the most recent answer of any live worker: each scrape pings the store and writes the truth, so with
# --workers N no worker's stale "down" (or a dead worker's file) can outvote the worker that just asked
STORE_UP = Gauge("gateway_store_up", "1 when the store answered the last check",
                 multiprocess_mode="livemostrecent")
ACTIVE_STREAMS = Gauge("gateway_active_streams", "Streams being relayed now", multiprocess_mode="livesum")
RETRIES = Counter("gateway_upstream_retries_total", "Retry decisions by provider: retried or budget_exhausted",
                  ["provider", "outcome"])
OVERLOADED = Counter("gateway_provider_overloaded_total", "Attempts refused by providers.*.max_concurrency",
                     ["provider"])
RELOADS = Counter("gateway_config_reloads_total", "Config reloads by result", ["result"])
for _result in ("success", "failure"):  # exposed at 0 from the start: increase() misses a series born at 1
    RELOADS.labels(_result)
# live*: a dead worker's file is deleted by the supervisor (mark_process_dead); "max" would keep its
# last age for ever, so the gauge could never drop back after a reload
CONFIG_AGE = Gauge("gateway_config_age_seconds", "Seconds since the config in force was loaded",
                   multiprocess_mode="livemax")

UNKNOWN = "unknown"


@functools.lru_cache(maxsize=8192)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered: prometheus-client validates the labels and takes a lock on every
    call, a measurable share of a request's CPU. Only for metrics whose children are never removed."""
    return metric.labels(*labels)


_store_up: bool | None = None


def store_up(up: bool, force: bool = False) -> None:
    """STORE_UP, written only when it changes: every request reports, and a gauge's set takes a lock.

    `force` writes anyway (a scrape's own check): with workers the newest write of any worker wins, so
    the check that answers a scrape must be the newest even when this process saw the same before.
    """
    global _store_up
    if force or up is not _store_up:
        _store_up = up
        STORE_UP.set(1 if up else 0)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def render() -> bytes:
    """The text exposition: this process's registry, or the sum over workers in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()
