"""The lines egress writes: one per change of a proxy's or a pool's state, never one per request.

Without them an operator reading the journal after an incident saw 503s and no reason: only counters moved.
A proxy failing for an hour writes its ejection once (the failed probes of an ejected proxy write nothing),
and a pool that has no way out says so once, however many requests it refuses meanwhile.

Logged through structlog's own `get_logger` (egress never imports `gateway`): the gateway configures structlog's
processors once per process, each `serve --workers N` worker included, so these lines come out as its JSON
lines through its redactor. A line taken on a request's task (live failures) carries that request's id.
They name a proxy by its config name only: its URL holds credentials, and its address is /admin/egress's.
"""

from __future__ import annotations

import structlog

log = structlog.get_logger("egress")


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def proxy_ejected(pool: str, proxy: str, why: str, outcome: str, failures: int, ejections: int,
                  probes_to_restore: int, next_probe_in_s: float) -> None:
    """`why`: `probes` or `live_failures`; `outcome`: the last failure's (connect_error, auth_error, timeout, reset)."""
    log.warning("egress proxy ejected", pool=pool, proxy=proxy, why=why, outcome=outcome,
                consecutive_failures=failures, ejections=ejections, probes_to_restore=probes_to_restore,
                next_probe_in_s=_seconds(next_probe_in_s))


def proxy_restored(pool: str, proxy: str, good_probes: int, ejected_s: float) -> None:
    log.info("egress proxy restored", pool=pool, proxy=proxy, good_probes=good_probes, ejected_s=_seconds(ejected_s))


def pool_out(pool: str, why: str, proxies: int, fallback_direct: bool, back_in_s: int | None) -> None:
    """Every proxy of the pool is out: its requests get 503 `egress_unavailable`, or go direct (`fallback_direct`).
    `back_in_s`: the earliest a probe could restore one (None: no probe will)."""
    log.warning("egress pool has no proxy in service", pool=pool, why=why, proxies=proxies,
                fallback_direct=fallback_direct, back_in_s=back_in_s)


def pool_back(pool: str, why: str, proxy: str, out_s: float | None) -> None:
    """`why`: `probes` (`proxy` was restored) or `reload` (`proxy` is one the new config put in service)."""
    log.info("egress pool back in service", pool=pool, why=why, proxy=proxy, out_s=_seconds(out_s))
