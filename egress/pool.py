"""Named pools of ways out: which proxy a request leaves through, and which proxies are healthy.

A request asks `Egress.plan()` for its exits: the first is the one it should use, the rest are where it
may fail over when the first fails *before the request reached the upstream*. Health is a small state
machine per proxy fed by live traffic (passive) and probes (active, `egress.health`)::

    up --(eject_after_failures consecutive failures)--> ejected
    ejected --(restore_after_successes consecutive probe successes)--> up

A proxy ejected again within FLAP_WINDOW probe intervals of its restoration is flapping (it passes probes,
fails requests): each such ejection doubles the good probes it needs to come back, up to 2**MAX_FLAPS
times `restore_after_successes`; an ejection after a longer stay in service starts over.

Only the proxy's own failures count (connect refused/timeout, handshake failure, reset before the
response); upstream HTTP errors never do, so no client can eject proxies with bad requests. Passive
checks never eject more than `max_ejected_share` of a pool at once.

Key affinity: each upstream API key sticks to one healthy proxy (rendezvous hashing over the healthy set
picks it, the first time), so a provider never sees one key from many addresses; it moves only when that
proxy is ejected.

Each ejection, restoration and pool outage writes one line (`egress.events`), never one per request.

Exception tree::

    EgressUnavailable     no healthy way out of a pool (maps to 503 egress_unavailable, with `retry_after_s`)
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import random
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from egress import events, metrics
from egress.proxy import ProxySpec, make_session

DIRECT = "direct"
AFFINITY_MAX = 100_000  # remembered key -> proxy assignments per pool
EWMA_ALPHA = 0.3
RETIRE_POLL_S = 1.0  # a session a reload removed is closed once no request uses it any more ...
RETIRE_MAX_S = 3600.0  # ... or after this long, whatever is still streaming through it
FLAP_WINDOW = 10  # probe intervals: an ejection sooner than this after a restoration is a flap ...
MAX_FLAPS = 5  # ... and doubles the probes the next restoration needs, up to 32 times as many
RETRY_SOON_S = 1  # Retry-After when a moment may cure it: proxies in service failed, or a reload removed the pool


class EgressUnavailable(Exception):
    """No healthy proxy is left in a pool (and it may not fall back to direct)."""

    def __init__(self, pool: str, reason: str, retry_after_s: int | None = None) -> None:
        super().__init__(f"egress pool '{pool}': {reason}")
        self.pool = pool
        self.retry_after_s = retry_after_s  # seconds a client should wait (`Egress.unavailable`); None: no telling


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    proxies: tuple[ProxySpec, ...]
    strategy: str = "round_robin"  # round_robin | least_latency | random
    affinity: bool = True
    fallback_direct: bool = False
    max_attempts: int = 3
    eject_after_failures: int = 3
    restore_after_successes: int = 1
    max_ejected_share: float = 0.5
    interval_s: float = 10.0
    timeout_s: float = 5.0
    probe: str = ""  # tcp://host:port or https://...; empty: passive checks only


@dataclass(eq=False, slots=True)
class ProxyState:
    spec: ProxySpec
    pool: str
    session: aiohttp.ClientSession | None = None
    up: bool = True
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive, while ejected
    latency_s: float | None = None  # moving average of connect time
    ejections: int = 0
    backoff: int = 0  # probes of an ejected proxy wait interval * 2**backoff
    next_probe_at: float = 0.0
    restored_at: float = float("-inf")
    ejected_at: float = float("-inf")
    flaps: int = 0  # ejections in a row, each soon after the restoration before it
    outcomes: dict[str, int] = field(default_factory=dict)

    def record_connect(self, seconds: float) -> None:
        """A request's new connection: the latency average and the connect histogram."""
        self.record_latency(seconds)
        metrics.CONNECT_SECONDS.labels(self.pool, self.spec.name).observe(seconds)

    def record_latency(self, seconds: float) -> None:
        """A probe's time feeds `least_latency` only: the histogram is what requests wait for."""
        self.latency_s = seconds if self.latency_s is None else (
            EWMA_ALPHA * seconds + (1 - EWMA_ALPHA) * self.latency_s)

    def successes_needed(self, restore_after: int) -> int:
        """Good probes in a row that put this proxy back: more for one that keeps failing soon after."""
        return restore_after * 2 ** min(self.flaps, MAX_FLAPS)

    def public(self) -> dict[str, Any]:
        """What /admin/egress shows: name, host, state — never the URL or its credentials."""
        return {"name": self.spec.name, "scheme": self.spec.scheme, "host": self.spec.host,
                "region": self.spec.region, "state": "up" if self.up else "ejected",
                "consecutive_failures": self.failures, "ejections": self.ejections,
                "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 2),
                "requests": dict(self.outcomes)}


@dataclass(frozen=True, slots=True)
class Exit:
    """One way out for one attempt: a proxy (or None for direct) and its session."""

    proxy: ProxyState | None
    session: aiohttp.ClientSession

    @property
    def name(self) -> str:
        return self.proxy.spec.name if self.proxy else DIRECT

    @property
    def resolves_locally(self) -> bool:
        """Whether the gateway resolves the names this exit connects to (direct, socks5://, socks4://),
        so a caller can check the addresses and connect to the one it checked."""
        return self.proxy is None or self.proxy.spec.resolves_locally


def _in_use(session: aiohttp.ClientSession) -> bool:
    """Whether a request holds (or is opening) a connection of the session: aiohttp has no public word for it."""
    return bool(getattr(session.connector, "_acquired", None))


def _score(key: str, name: str) -> bytes:
    return hashlib.sha256(f"{key}\0{name}".encode()).digest()


class Pool:
    def __init__(self, spec: PoolSpec, states: list[ProxyState], affinity: OrderedDict[str, str] | None = None) -> None:
        self.spec = spec
        self.states = states
        self._turn = itertools.count()
        self._affinity: OrderedDict[str, str] = OrderedDict() if affinity is None else affinity

    def healthy(self, blocked: frozenset[str]) -> list[ProxyState]:
        return [s for s in self.states if s.up and (s.spec.region or "") not in blocked]

    def order(self, affinity_key: str | None, blocked: frozenset[str]) -> list[ProxyState]:
        """Healthy proxies, the one to use first, then the failover order."""
        healthy = self.healthy(blocked)
        if not healthy:
            return []
        if self.spec.affinity and affinity_key is not None:
            first = self._sticky(affinity_key, healthy)
        elif self.spec.strategy == "least_latency":
            first = min(healthy, key=lambda s: s.latency_s or 0.0)
        elif self.spec.strategy == "random":
            first = random.choice(healthy)
        else:
            first = healthy[next(self._turn) % len(healthy)]
        i = healthy.index(first)
        return healthy[i:] + healthy[:i]

    def _sticky(self, key: str, healthy: list[ProxyState]) -> ProxyState:
        by_name = {s.spec.name: s for s in healthy}
        current = by_name.get(self._affinity.get(key, ""))
        if current is None:
            current = max(healthy, key=lambda s: _score(key, s.spec.name))
            affinity = self._affinity
            if len(affinity) >= AFFINITY_MAX and key not in affinity:
                # the oldest assignment goes, not all of them: a clear sent every key an ejection had moved
                # back to its first proxy at once; OrderedDict pops its oldest in O(1), a dict would rescan
                affinity.popitem(last=False)
            affinity[key] = current.spec.name
        return current

    def ejected_share_after_one_more(self) -> float:
        return (sum(not s.up for s in self.states) + 1) / len(self.states)

    def in_service(self) -> bool:
        """Whether any proxy of the pool is up, whatever the regions a request may not use."""
        return bool(self.healthy(frozenset()))

    def out_since(self) -> float:
        """When the pool lost its last proxy in service (the latest ejection), while it has none."""
        return max(s.ejected_at for s in self.states)

    def back_in_s(self, blocked: frozenset[str], now: float) -> int | None:
        """Whole seconds (at least 1) until the earliest probe that could restore an ejected proxy outside
        `blocked`: the next probe, plus an interval for each further good probe its restoration needs (the
        ones before it cannot restore it). None when no probe can: the pool has none, or no such proxy."""
        if not self.spec.probe:
            return None
        interval, needed = self.spec.interval_s, self.spec.restore_after_successes
        times = [s.next_probe_at + max(s.successes_needed(needed) - s.successes - 1, 0) * interval
                 for s in self.states if not s.up and (s.spec.region or "") not in blocked]
        return max(1, math.ceil(min(times) - now)) if times else None


class Egress:
    """All pools and the sessions behind them; built from plain specs, rebuilt on reload."""

    def __init__(self) -> None:
        self.pools: dict[str, Pool] = {}
        self._direct: Exit | None = None  # made once: the direct route's exit is the same for every request
        self._states: dict[tuple[str, str, str], ProxyState] = {}  # (pool, name, url)
        self._retiring: set[aiohttp.ClientSession] = set()  # removed by a reload, still carrying requests
        self._reapers: set[asyncio.Task[None]] = set()

    async def configure(self, pools: Mapping[str, PoolSpec]) -> None:
        """Adopt new pools; a proxy kept with the same URL keeps its session and health."""
        if self._direct is None:
            self._direct = Exit(None, make_session())
        old, self._states = self._states, {}
        new_pools = {}
        for spec in pools.values():
            states = []
            for proxy in spec.proxies:
                ident = (spec.name, proxy.name, proxy.url)
                state = old.pop(ident, None) or self._new_state(spec.name, proxy)
                state.spec = proxy
                self._states[ident] = state
                states.append(state)
            before = self.pools.get(spec.name)  # a key moves only when its proxy is ejected, not at a reload
            new_pools[spec.name] = Pool(spec, states, before._affinity if before is not None else None)
        previous, self.pools = self.pools, new_pools
        self._report_reload(previous)
        kept = {(pool, name) for pool, name, _url in self._states}
        for state in old.values():  # a proxy whose URL changed (a new password) keeps its series
            if (state.pool, state.spec.name) not in kept:
                metrics.forget(state.pool, state.spec.name)
        idle = []
        for state in old.values():  # a request in flight finishes on the config it started with
            if state.session is None:
                continue
            if _in_use(state.session):
                self._retire(state.session)
            else:
                idle.append(state.session)
        await asyncio.gather(*(s.close() for s in idle))

    def _report_reload(self, before: dict[str, Pool]) -> None:
        """A reload that leaves a pool only ejected proxies, or puts one in service again, says so."""
        for name, pool in self.pools.items():
            old = before.get(name)
            was = old is None or old.in_service()  # a new pool's proxies start in service
            if not pool.states or was == pool.in_service():
                continue
            if was:
                events.pool_out(name, "reload", len(pool.states), pool.spec.fallback_direct,
                                pool.back_in_s(frozenset(), time.monotonic()))
            else:
                assert old is not None
                first = next(s for s in pool.states if s.up)
                events.pool_back(name, "reload", first.spec.name, time.monotonic() - old.out_since())

    def _retire(self, session: aiohttp.ClientSession) -> None:
        self._retiring.add(session)
        task = asyncio.create_task(self._close_when_idle(session))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _close_when_idle(self, session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + RETIRE_MAX_S
        while _in_use(session) and time.monotonic() < deadline:
            await asyncio.sleep(RETIRE_POLL_S)
        self._retiring.discard(session)
        await session.close()

    def _new_state(self, pool: str, proxy: ProxySpec) -> ProxyState:
        state = ProxyState(spec=proxy, pool=pool)
        state.session = make_session(proxy, on_connect=state.record_connect)
        metrics.UP.labels(pool, proxy.name).set(1)
        return state

    def plan(self, pool_name: str, affinity_key: str | None = None,
             blocked: frozenset[str] = frozenset()) -> list[Exit]:
        """The exits to try, in order: at most the pool's max_attempts proxies, then the direct route
        when the pool may fall back to it."""
        assert self._direct is not None, "configure() first"
        if pool_name == DIRECT:
            return [self._direct]
        pool = self.pools.get(pool_name)
        if pool is None:  # a request that started before a reload removed its pool
            raise self.unavailable(pool_name, "the pool is no longer configured")
        order = pool.order(affinity_key, blocked)
        exits = [Exit(s, s.session) for s in order if s.session is not None][: pool.spec.max_attempts]
        if pool.spec.fallback_direct:  # last: taken when no proxy is healthy, or every one tried failed to connect
            exits.append(self._direct)
        elif not exits:
            raise self.unavailable(pool_name, "no healthy proxy left" + (
                f" outside the blocked regions {sorted(blocked)}" if blocked else ""), blocked)
        return exits

    def unavailable(self, pool_name: str, reason: str, blocked: frozenset[str] = frozenset()) -> EgressUnavailable:
        """The refusal of a request with no way out of the pool, and when its client should try again, the one
        answer for every such refusal: RETRY_SOON_S while proxies it may use are in service (they failed this
        request, not often enough to be ejected: the next may pass) or when the pool is gone (the retry plans
        on the config now in force); else until a probe may restore one (None: no probe can, only a reload)."""
        pool = self.pools.get(pool_name)
        if pool is None or pool.healthy(blocked):
            return EgressUnavailable(pool_name, reason, RETRY_SOON_S)
        return EgressUnavailable(pool_name, reason, pool.back_in_s(blocked, time.monotonic()))

    def leaving_direct(self, pool_name: str) -> None:
        """A request of a proxy pool about to leave without a proxy (`fallback_direct`): counted, since an
        operator who set proxies up for a region a provider blocks needs to see how often traffic went without."""
        metrics.DIRECT.labels(pool_name).inc()

    def succeeded(self, exit_: Exit) -> None:
        if exit_.proxy is not None:
            self._count(exit_.proxy, "ok")
            exit_.proxy.failures = 0

    def failed(self, exit_: Exit, outcome: str) -> None:
        """A failure of the proxy itself seen on live traffic; may eject it (within the pool's cap)."""
        state = exit_.proxy
        if state is None:
            return
        self._count(state, outcome)
        state.failures += 1
        pool = self.pools.get(state.pool)
        if (pool is not None and state.up and state.failures >= pool.spec.eject_after_failures
                and pool.ejected_share_after_one_more() <= pool.spec.max_ejected_share):
            self.eject(state, pool.spec.interval_s, why="live_failures", outcome=outcome)

    def eject(self, state: ProxyState, interval_s: float, *, why: str, outcome: str) -> None:
        """Out of service until probes restore it; `why` (probes, live_failures) and the last failure's
        `outcome` go into the one line the ejection writes."""
        now = time.monotonic()
        state.up, state.successes, state.backoff = False, 0, 0
        state.ejections += 1
        state.flaps = state.flaps + 1 if now - state.restored_at < FLAP_WINDOW * interval_s else 0
        state.next_probe_at, state.ejected_at = now + interval_s, now
        metrics.UP.labels(state.pool, state.spec.name).set(0)
        metrics.EJECTIONS.labels(state.pool, state.spec.name).inc()
        pool = self.pools.get(state.pool)
        restore_after = pool.spec.restore_after_successes if pool is not None else 1
        events.proxy_ejected(state.pool, state.spec.name, why, outcome, state.failures, state.ejections,
                             state.successes_needed(restore_after), interval_s)
        if pool is not None and state in pool.states and not pool.in_service():
            events.pool_out(state.pool, why, len(pool.states), pool.spec.fallback_direct,
                            pool.back_in_s(frozenset(), now))

    def restore(self, state: ProxyState) -> None:
        pool = self.pools.get(state.pool)
        was_out = pool is not None and state in pool.states and not pool.in_service()
        out_s = time.monotonic() - pool.out_since() if pool is not None and was_out else None
        good_probes = state.successes
        state.up, state.failures, state.successes, state.backoff = True, 0, 0, 0
        state.restored_at = time.monotonic()
        metrics.UP.labels(state.pool, state.spec.name).set(1)
        events.proxy_restored(state.pool, state.spec.name, good_probes, state.restored_at - state.ejected_at)
        if was_out:
            events.pool_back(state.pool, "probes", state.spec.name, out_s)

    def _count(self, state: ProxyState, outcome: str) -> None:
        state.outcomes[outcome] = state.outcomes.get(outcome, 0) + 1
        metrics.REQUESTS.labels(state.pool, state.spec.name, outcome).inc()

    def snapshot(self) -> dict[str, Any]:
        return {name: {"strategy": pool.spec.strategy, "affinity": pool.spec.affinity,
                       "fallback_direct": pool.spec.fallback_direct,
                       "proxies": [s.public() for s in pool.states]}
                for name, pool in self.pools.items()}

    async def close(self) -> None:
        sessions = [s.session for s in self._states.values() if s.session]
        if self._direct is not None:
            sessions.append(self._direct.session)
        for task in list(self._reapers):
            task.cancel()
        sessions += self._retiring
        self._retiring = set()
        self._states, self.pools, self._direct = {}, {}, None
        await asyncio.gather(*(s.close() for s in sessions))
