"""Egress metrics, labelled by pool and proxy *name* (a bounded set from the config), never by URL."""

from __future__ import annotations

import contextlib
import os

from prometheus_client import Counter, Gauge, Histogram

UP = Gauge("gateway_egress_proxy_up", "1 when the proxy is in service, 0 when ejected", ["pool", "proxy"],
           multiprocess_mode="livemin")  # a dead worker's 0 must not outlive it
REQUESTS = Counter("gateway_egress_requests_total", "Upstream connection attempts through a proxy by outcome",
                   ["pool", "proxy", "outcome"])
CONNECT_SECONDS = Histogram("gateway_egress_connect_seconds",
                            "New connection time of requests (not probes): TCP, proxy handshake, TLS",
                            ["pool", "proxy"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
DIRECT = Counter("gateway_egress_direct_total",
                 "Requests of a proxy pool that left without a proxy (fallback_direct)", ["pool"])
EJECTIONS = Counter("gateway_egress_ejections_total", "Times a proxy was taken out of service", ["pool", "proxy"])
PROBES = Counter("gateway_egress_probes_total", "Active health probes by result", ["pool", "proxy", "result"])

_OUTCOMES = ("ok", "connect_error", "auth_error", "timeout", "reset")


def forget(pool: str, proxy: str) -> None:
    """Drop the series of a proxy a reload removed, so dashboards don't show ghosts."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus-client cannot remove a series from the workers' files (remove() only warns): the
        # series stays until a restart, but at least not as "down" (an alert no reload would clear)
        UP.labels(pool, proxy).set(1)
        return
    with contextlib.suppress(KeyError):
        UP.remove(pool, proxy)
        CONNECT_SECONDS.remove(pool, proxy)
        EJECTIONS.remove(pool, proxy)
    for outcome in _OUTCOMES:
        with contextlib.suppress(KeyError):
            REQUESTS.remove(pool, proxy, outcome)
    for result in ("ok", "fail"):
        with contextlib.suppress(KeyError):
            PROBES.remove(pool, proxy, result)
