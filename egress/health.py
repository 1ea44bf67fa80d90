"""Active health checks: each pool probes its proxies every `interval_s` (with jitter), ejected ones on
an exponential back-off, and restores a proxy after `restore_after_successes` good probes in a row (more
for a flapping one: `ProxyState.successes_needed`).

A probe is `tcp://host:port` (a tunnel opened through the proxy and closed) or an `http(s)://` URL (any
HTTP answer through the proxy counts, on a new tunnel: a pooled one would pass while new ones fail). Probe
failures count toward ejection like live failures, but are not capped: a proxy every probe fails is out,
whatever the share.
"""

from __future__ import annotations

import asyncio
import random
import time
from urllib.parse import urlsplit

from egress import metrics
from egress.pool import Egress, Pool, ProxyState
from egress.proxy import failure_outcome, probe_http, probe_tcp

JITTER = 0.2  # +-20% of the interval, so pools and processes don't probe in lockstep
MAX_BACKOFF = 6  # an ejected proxy is re-probed at least every interval * 64


async def probe_once(egress: Egress, pool: Pool, state: ProxyState) -> bool:
    spec = pool.spec
    try:
        if spec.probe.startswith("tcp://"):
            target = urlsplit(spec.probe)
            seconds = await probe_tcp(state.spec, target.hostname or "", target.port or 443, spec.timeout_s)
        else:
            seconds = await probe_http(state.spec, spec.probe, spec.timeout_s)
    except Exception as exc:  # any failure of the way out is a failed probe; its kind goes into an ejection's line
        metrics.PROBES.labels(pool.spec.name, state.spec.name, "fail").inc()
        _probe_failed(egress, pool, state, failure_outcome(exc))
        return False
    metrics.PROBES.labels(pool.spec.name, state.spec.name, "ok").inc()
    state.record_latency(seconds)
    _probe_succeeded(egress, pool, state)
    return True


def _probe_failed(egress: Egress, pool: Pool, state: ProxyState, outcome: str) -> None:
    state.successes = 0
    if state.up:
        state.failures += 1
        if state.failures >= pool.spec.eject_after_failures:
            egress.eject(state, pool.spec.interval_s, why="probes", outcome=outcome)
    else:
        state.backoff = min(state.backoff + 1, MAX_BACKOFF)
        state.next_probe_at = time.monotonic() + pool.spec.interval_s * 2 ** state.backoff


def _probe_succeeded(egress: Egress, pool: Pool, state: ProxyState) -> None:
    if state.up:
        state.failures = 0
        return
    state.successes += 1
    if state.successes >= state.successes_needed(pool.spec.restore_after_successes):
        egress.restore(state)
    else:  # the next good probe an interval later, not at once
        state.next_probe_at = time.monotonic() + pool.spec.interval_s


async def check_pool(egress: Egress, pool: Pool, up_too: bool = True) -> None:
    """One round: every up proxy (unless `up_too` is false), and every ejected one whose back-off has passed."""
    now = time.monotonic()
    due = [s for s in pool.states if (s.up and up_too) or (not s.up and s.next_probe_at <= now)]
    await asyncio.gather(*(probe_once(egress, pool, s) for s in due))


async def check_all_once(egress: Egress) -> None:
    """One round over every pool: what a process does before it tells systemd it is ready."""
    await asyncio.gather(*(check_pool(egress, p) for p in egress.pools.values() if p.spec.probe and p.states))


async def run(egress: Egress) -> None:
    """Probe every pool with a probe target, forever (cancel to stop); follows reloads of `egress.pools`.

    Each pool's up proxies are probed every `interval_s` of that pool (not of the pool probed most often),
    its ejected ones when their back-off has passed."""
    rounds: dict[str, float] = {}  # pool name -> when its next round starts
    while True:
        pools = [p for p in egress.pools.values() if p.spec.probe and p.states]
        rounds = {name: at for name, at in rounds.items() if name in {p.spec.name for p in pools}}
        now = time.monotonic()
        full = [p for p in pools if rounds.get(p.spec.name, now) <= now]
        ejected = [p for p in pools if p not in full and any(not s.up and s.next_probe_at <= now for s in p.states)]
        await asyncio.gather(*(check_pool(egress, p) for p in full),
                             *(check_pool(egress, p, up_too=False) for p in ejected))
        done = time.monotonic()
        for pool in full:
            rounds[pool.spec.name] = done + pool.spec.interval_s * random.uniform(1 - JITTER, 1 + JITTER)
        wake = min([*rounds.values(), *(s.next_probe_at for p in pools for s in p.states if not s.up)],
                   default=done + 1.0)
        await asyncio.sleep(min(max(wake - done, 0.01), 1.0))  # a reload may add a pool: look again within 1 s
