"""The pool's decisions, without traffic: selection, affinity, ejection and its cap, regions, fallback."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from egress import pool as pool_module
from egress.pool import DIRECT, Egress, EgressUnavailable, PoolSpec
from egress.proxy import ProxySpec

PROXIES = tuple(ProxySpec(f"p{i}", f"socks5h://user:pw{i}secret@127.0.0.{i + 10}:1080", region=r)
                for i, r in enumerate(["de", "nl", "ru", "us"]))


@pytest.fixture
async def egress() -> AsyncIterator[Egress]:
    e = Egress()
    yield e
    await e.close()


async def configure(egress: Egress, **options: Any) -> PoolSpec:
    spec = PoolSpec(name="eu", proxies=options.pop("proxies", PROXIES), **options)
    await egress.configure({"eu": spec})
    return spec


def names(egress: Egress, key: str | None = None, blocked: frozenset[str] = frozenset()) -> list[str]:
    return [e.name for e in egress.plan("eu", key, blocked)]


async def test_round_robin_spreads_and_fails_over_to_the_rest(egress: Egress) -> None:
    await configure(egress, affinity=False, max_attempts=4)
    firsts = [names(egress)[0] for _ in range(8)]
    assert Counter(firsts) == {"p0": 2, "p1": 2, "p2": 2, "p3": 2}
    plan = names(egress)
    assert sorted(plan) == ["p0", "p1", "p2", "p3"]  # the others follow as failover


async def test_max_attempts_bounds_the_plan(egress: Egress) -> None:
    await configure(egress, affinity=False, max_attempts=2)
    assert len(names(egress)) == 2


async def test_least_latency_prefers_the_fastest(egress: Egress) -> None:
    await configure(egress, affinity=False, strategy="least_latency")
    for state, seconds in zip(egress.pools["eu"].states, [0.3, 0.05, 0.2, 0.4], strict=True):
        state.record_connect(seconds)
    assert {names(egress)[0] for _ in range(5)} == {"p1"}


async def test_random_uses_every_proxy(egress: Egress) -> None:
    await configure(egress, affinity=False, strategy="random")
    assert {names(egress)[0] for _ in range(200)} == {"p0", "p1", "p2", "p3"}


async def test_affinity_keeps_a_key_on_one_proxy_until_it_is_ejected(egress: Egress) -> None:
    spec = await configure(egress)
    homes = {f"key{i}": names(egress, f"key{i}")[0] for i in range(40)}
    assert len(set(homes.values())) > 1  # keys spread over the pool
    assert all(names(egress, k)[0] == home for k, home in homes.items() for _ in range(3))
    pool = egress.pools["eu"]
    victim = pool.states[0]
    egress.eject(victim, spec.interval_s, why="probes", outcome="connect_error")
    moved = {k: names(egress, k)[0] for k in homes}
    assert all(moved[k] == home for k, home in homes.items() if home != "p0")  # only p0's keys move
    assert all(moved[k] != "p0" for k, home in homes.items() if home == "p0")
    egress.restore(victim)
    assert {k: names(egress, k)[0] for k in homes} == moved  # restoring p0 moves nobody back


async def moved_by_an_ejection(egress: Egress) -> dict[str, str]:
    """Forty keys' proxies after p0 was ejected and restored: p0's keys moved, and stay moved."""
    spec = await configure(egress)
    homes = {f"key{i}": names(egress, f"key{i}")[0] for i in range(40)}
    victim = egress.pools["eu"].states[0]
    egress.eject(victim, spec.interval_s, why="probes", outcome="connect_error")
    moved = {k: names(egress, k)[0] for k in homes}
    egress.restore(victim)
    return moved


async def test_a_reload_moves_no_key_back(egress: Egress) -> None:
    """A key moves only when its proxy is ejected: a reload that keeps the proxies (a price changed) must not
    send the keys an ejection moved back to their first proxy, a second address for the provider to see."""
    moved = await moved_by_an_ejection(egress)
    homes = moved.keys()
    await configure(egress)  # the same pool again, as a reload of an unrelated change makes it
    assert {k: names(egress, k)[0] for k in homes} == moved
    await configure(egress, proxies=PROXIES[1:])  # p0 removed: its keys had moved already, nobody else moves
    assert {k: names(egress, k)[0] for k in homes} == moved


async def test_a_full_affinity_map_forgets_its_oldest_key_not_all(egress: Egress,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """At AFFINITY_MAX the whole map was cleared: every key an ejection had moved went back to its first
    proxy at once (a second address for the provider to see), because of one new key. Now the oldest
    assignment alone is forgotten."""
    monkeypatch.setattr(pool_module, "AFFINITY_MAX", 41)
    moved = await moved_by_an_ejection(egress)
    names(egress, "one-more-key")  # the map is full ...
    names(egress, "and-another")  # ... and takes one more
    kept = {k: names(egress, k)[0] for k in list(moved)[1:]}  # key0, the oldest, may have gone home
    assert kept == {k: moved[k] for k in kept}


async def test_passive_failures_eject_after_the_threshold(egress: Egress) -> None:
    await configure(egress, affinity=False, eject_after_failures=3)
    exit_ = next(e for e in egress.plan("eu") if e.name == "p2")
    egress.failed(exit_, "connect_error")
    egress.failed(exit_, "connect_error")
    egress.succeeded(exit_)  # a success resets the count
    egress.failed(exit_, "connect_error")
    egress.failed(exit_, "connect_error")
    assert exit_.proxy is not None and exit_.proxy.up
    egress.failed(exit_, "timeout")
    assert not exit_.proxy.up
    assert "p2" not in {n for _ in range(8) for n in names(egress)}


async def test_passive_ejection_is_capped_at_a_share_of_the_pool(egress: Egress) -> None:
    await configure(egress, affinity=False, eject_after_failures=1, max_ejected_share=0.5, max_attempts=4)
    for exit_ in egress.plan("eu"):
        egress.failed(exit_, "connect_error")
    assert sum(s.up for s in egress.pools["eu"].states) == 2


async def test_blocked_regions_are_never_used(egress: Egress) -> None:
    await configure(egress, affinity=False, max_attempts=4)
    seen = {n for _ in range(12) for n in names(egress, blocked=frozenset({"ru", "us"}))}
    assert seen == {"p0", "p1"}
    with pytest.raises(EgressUnavailable, match="blocked regions"):
        egress.plan("eu", None, frozenset({"de", "nl", "ru", "us"}))


async def test_no_healthy_proxy_left(egress: Egress) -> None:
    spec = await configure(egress)
    for state in egress.pools["eu"].states:
        egress.eject(state, spec.interval_s, why="probes", outcome="connect_error")
    with pytest.raises(EgressUnavailable, match="'eu'"):
        egress.plan("eu", "k")
    await configure(egress, fallback_direct=True)
    for state in egress.pools["eu"].states:
        egress.eject(state, spec.interval_s, why="probes", outcome="connect_error")
    assert names(egress, "k") == [DIRECT]


async def test_reload_keeps_surviving_proxies_and_closes_removed_ones(egress: Egress) -> None:
    await configure(egress)
    states = {s.spec.name: s for s in egress.pools["eu"].states}
    egress.eject(states["p1"], 10, why="probes", outcome="connect_error")
    await configure(egress, proxies=PROXIES[:2])
    kept = {s.spec.name: s for s in egress.pools["eu"].states}
    assert kept["p0"] is states["p0"] and kept["p1"] is states["p1"]
    assert not kept["p1"].up  # health survives a reload
    for gone in ("p2", "p3"):
        assert states[gone].session is not None and states[gone].session.closed


async def test_a_pool_a_reload_removed_is_unavailable_to_a_request_that_planned_on_it(egress: Egress) -> None:
    """A request that started on the old config plans again for a retry or fallback: a 503 it can take,
    not a KeyError (500)."""
    await configure(egress)
    await egress.configure({"eu2": PoolSpec(name="eu2", proxies=PROXIES)})
    with pytest.raises(EgressUnavailable):
        egress.plan("eu", "k")


async def test_a_proxy_whose_password_rotates_keeps_its_up_series(egress: Egress) -> None:
    await configure(egress)
    labels = {"pool": "eu", "proxy": "p0"}
    assert REGISTRY.get_sample_value("gateway_egress_proxy_up", labels) == 1
    rotated = (dataclasses.replace(PROXIES[0], url=PROXIES[0].url.replace("pw0secret", "pw0rotated")), *PROXIES[1:])
    await configure(egress, proxies=rotated)
    assert REGISTRY.get_sample_value("gateway_egress_proxy_up", labels) == 1
    await configure(egress, proxies=PROXIES[1:])  # removed: its series goes
    assert REGISTRY.get_sample_value("gateway_egress_proxy_up", labels) is None


def test_an_ipv6_proxy_host_is_written_in_brackets() -> None:
    assert ProxySpec("v6", "socks5h://u:secret-pw@[::1]:1080").host == "[::1]:1080"
    assert ProxySpec("v4", "socks5h://127.0.0.1:1080").host == "127.0.0.1:1080"


def test_a_proxy_url_without_a_port_shows_the_port_it_is_reached_on() -> None:
    """/admin/egress shows each proxy's host: the port the gateway connects to, never 'None'."""
    assert ProxySpec("s", "socks5h://u:secret-pw@10.0.0.1").host == "10.0.0.1:1080"
    assert ProxySpec("h", "http://10.0.0.2").host == "10.0.0.2:8080"
    assert ProxySpec("t", "https://[::1]").host == "[::1]:443"


async def test_snapshot_names_hosts_never_credentials(egress: Egress) -> None:
    await configure(egress)
    text = json.dumps(egress.snapshot())
    assert "127.0.0.12:1080" in text and '"region": "ru"' in text
    assert "secret" not in text and "user" not in text


def eject_all(egress: Egress, spec: PoolSpec) -> None:
    for state in egress.pools["eu"].states:
        egress.eject(state, spec.interval_s, why="probes", outcome="connect_error")


def refused(egress: Egress, blocked: frozenset[str] = frozenset()) -> EgressUnavailable:
    with pytest.raises(EgressUnavailable) as info:
        egress.plan("eu", "k", blocked)
    return info.value


async def test_no_way_out_says_when_the_pool_may_have_one_again(egress: Egress) -> None:
    """The 503's Retry-After: whole seconds until the earliest probe that could restore an ejected proxy."""
    spec = await configure(egress, interval_s=10, probe="tcp://upstream.example:443")
    eject_all(egress, spec)
    assert refused(egress).retry_after_s == 10  # an ejected proxy is probed again one interval later
    states = egress.pools["eu"].states
    states[2].next_probe_at = time.monotonic() + 3.2
    assert refused(egress).retry_after_s == 4  # the earliest of the pool's, rounded up
    assert refused(egress, frozenset({"ru"})).retry_after_s == 10  # a proxy the request may not use is no way out
    states[2].next_probe_at = time.monotonic() - 1
    assert refused(egress).retry_after_s == 1  # a probe overdue (running now): at least 1 s
    assert refused(egress, frozenset({"de", "nl", "ru", "us"})).retry_after_s is None  # no probe can help


async def test_a_pool_a_reload_removed_asks_for_a_short_retry(egress: Egress) -> None:
    """A request that plans again (a retry, a fallback) after a reload removed its pool: its client's retry
    resolves the model on the config now in force, so it may pass at once."""
    await configure(egress)
    with pytest.raises(EgressUnavailable) as info:
        egress.plan("gone", "k")
    assert info.value.retry_after_s == 1 and "no longer configured" in str(info.value)


async def test_a_restoration_needing_more_good_probes_is_further_off(egress: Egress) -> None:
    spec = await configure(egress, interval_s=10, probe="tcp://upstream.example:443", restore_after_successes=2)
    eject_all(egress, spec)
    assert refused(egress).retry_after_s == 20  # two good probes, an interval apart
    for state in egress.pools["eu"].states:
        state.successes = 1
    assert refused(egress).retry_after_s == 10


async def test_a_pool_without_probes_cannot_tell_when(egress: Egress) -> None:
    spec = await configure(egress)  # no probe: nothing restores an ejected proxy but a reload
    eject_all(egress, spec)
    assert refused(egress).retry_after_s is None


async def test_a_reload_that_gives_a_pool_a_way_out_again_says_so(egress: Egress, log_lines: Any) -> None:
    spec = await configure(egress, proxies=PROXIES[:2])
    eject_all(egress, spec)
    await configure(egress, proxies=PROXIES[:2])  # the same proxies, still ejected: nothing changes
    await configure(egress, proxies=PROXIES[:3])  # a new proxy, in service
    await configure(egress, proxies=PROXIES[:2])  # removed again: the pool is out once more
    lines = [(e["event"], e.get("why")) for e in log_lines() if e["event"].startswith("egress pool")]
    assert lines == [("egress pool has no proxy in service", "probes"), ("egress pool back in service", "reload"),
                     ("egress pool has no proxy in service", "reload")]
