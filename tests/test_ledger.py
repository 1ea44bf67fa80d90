"""The ledger as a state machine, on both backends: reserve, settle, release, settle again, top up, expire
and concurrent bursts in any order, checked after every step against a model and the invariants

    balance + open holds + usage == credits,   balance >= 0,   the store's numbers == the model's.

Open holds are read from each backend's own state (a test-only peek), so a lost or doubled hold shows.
Each machine instance drives its store from one private event loop (the machine itself is synchronous).
Redis runs on its real clock with long hold TTLs; expiry under concurrency on Redis has its own test with
a 1 s TTL and one short sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

import pytest
from fakes.clock import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway import keys
from gateway.store import Admission, AdmitResult, KeyRecord, MemoryStore, RedisStore, Settlement, Store

T = TypeVar("T")
MODEL = "openai/gpt-x"
UNIT = 1_000_000_007  # about a dollar, prime so sums do not line up by accident
REDIS_HOLD_TTL_S = 3600  # nothing expires during a Redis machine run
PICK = st.integers(0, 2**16)  # an index into whatever candidates a rule has at that moment


def choose(candidates: Iterable[str], pick: int) -> str:
    """The `pick`-th candidate in sorted order (wrapping around), "" when there is none."""
    ordered = sorted(candidates)
    return ordered[pick % len(ordered)] if ordered else ""


def new_key(balance: int) -> KeyRecord:
    _, record = keys.new_record("ledger", balance)
    return record


async def open_holds(store: Store, key_id: str) -> dict[str, int]:
    """Generation id -> held amount, straight from the backend's state (expired-but-unswept included)."""
    if isinstance(store, MemoryStore):
        return {gen: amount for gen, (amount, _) in store._holds.get(key_id, {}).items()}
    assert isinstance(store, RedisStore)
    raw = await store._redis.hgetall(store._holds(key_id))
    return {gen: int(value.split(":")[0]) for gen, value in raw.items()}


async def ledger_state(store: Store, key_id: str) -> tuple[int, int, int, dict[str, int]]:
    """(balance, credits, usage, open holds) of one key."""
    record = await store.get_key(key_id)
    assert record is not None
    return record.balance, record.credits, record.usage, await open_holds(store, key_id)


def check_invariants(balance: int, credits: int, usage: int, holds: dict[str, int]) -> None:
    assert balance >= 0
    assert all(amount > 0 for amount in holds.values())
    assert balance + sum(holds.values()) + usage == credits


# --- the state machine ---------------------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """One key; the model keeps balance, credits, usage, open holds (with expiry) and first settlements."""

    def __init__(self, redis_url: str | None) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock: FakeClock | None = None
        if redis_url is None:
            self.clock = FakeClock()
            self.store: Store = MemoryStore(clock=self.clock)
        else:
            self.store = RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex}:")
        self.ids = (f"gen-{n}" for n in itertools.count())
        self.key_id = ""
        self.balance = self.credits = self.usage = 0
        self.holds: dict[str, tuple[int, int]] = {}  # gen -> (amount, expires_ms)
        self.settled: dict[str, Settlement] = {}
        self.refused: list[str] = []  # admitted never: settling them charges the balance

    def run(self, step: Awaitable[T]) -> T:
        return self.loop.run_until_complete(step)

    def teardown(self) -> None:
        try:
            self.run(self.store.close())
        finally:
            self.loop.close()

    # the model's clock and its lazy sweep, mirroring the store's

    @property
    def now_ms(self) -> int:
        return int(self.clock() * 1000) if self.clock else 0

    def ttl_s(self, drawn: int) -> int:
        return drawn if self.clock else REDIS_HOLD_TTL_S

    def sweep(self) -> None:
        for gen, (amount, expires) in list(self.holds.items()):
            if expires <= self.now_ms:
                del self.holds[gen]
                self.balance += amount

    def admission(self, gen: str, hold: int, ttl_s: int) -> Admission:
        return Admission(self.key_id, MODEL, gen, hold, self.ttl_s(ttl_s))

    def settle_call(self, gen: str, cost: int, tokens: int = 1) -> Coroutine[Any, Any, Settlement]:
        return self.store.settle(self.key_id, gen, cost, tokens, {"model": MODEL, "id": gen}, 3600)

    def expect_settlement(self, gen: str, cost: int) -> Settlement:
        """The model's side of one sequential settle."""
        if gen in self.settled:
            return dataclasses.replace(self.settled[gen], already_settled=True)
        self.sweep()
        hold = self.holds.pop(gen, (0, 0))[0]
        charged = min(cost, hold + self.balance)
        self.balance += hold - charged
        self.usage += charged
        self.settled[gen] = Settlement(charged=charged, balance=self.balance, already_settled=False)
        return self.settled[gen]

    # rules

    @initialize(balance=st.integers(0, 40 * UNIT))
    def create(self, balance: int) -> None:
        record = new_key(balance)
        self.run(self.store.create_key(record))
        self.key_id, self.balance, self.credits = record.id, balance, balance

    @rule(hold=st.one_of(st.integers(0, UNIT), st.integers(0, 12 * UNIT)), ttl_s=st.integers(1, 120))
    def reserve(self, hold: int, ttl_s: int) -> None:
        gen = next(self.ids)
        result = self.run(self.store.admit(self.admission(gen, hold, ttl_s)))
        self.sweep()
        if hold > self.balance:
            assert result.outcome == "insufficient"
            self.refused.append(gen)
        else:
            assert result.outcome == "ok"
            self.balance -= hold
            if hold:
                self.holds[gen] = (hold, self.now_ms + self.ttl_s(ttl_s) * 1000)
        assert result.balance == self.balance

    # Which generation a rule picks is drawn as an index into the current candidates, never from them:
    # a burst's outcome on Redis depends on the server's ordering, and Hypothesis needs every replay of
    # an example to draw the same shape of data. A rule without candidates does nothing.

    @rule(pick=PICK, cost=st.integers(0, 8 * UNIT))
    def settle(self, pick: int, cost: int) -> None:
        """Settle an open hold, at any cost (above the hold too: the rest comes from the balance)."""
        if gen := choose(self.holds, pick):
            assert self.run(self.settle_call(gen, cost)) == self.expect_settlement(gen, cost)

    @rule(pick=PICK)
    def release(self, pick: int) -> None:
        if gen := choose(self.holds, pick):
            result = self.run(self.settle_call(gen, 0))
            assert result == self.expect_settlement(gen, 0) and result.charged == 0

    @rule(pick=PICK, cost=st.integers(0, UNIT))
    def settle_without_hold(self, pick: int, cost: int) -> None:
        """A refused admission's generation, or one never admitted: charged from the balance."""
        gen = choose([*self.refused, ""], pick) or next(self.ids)
        assert self.run(self.settle_call(gen, cost)) == self.expect_settlement(gen, cost)

    @rule(pick=PICK, cost=st.integers(0, 8 * UNIT))
    def settle_again(self, pick: int, cost: int) -> None:
        if gen := choose(self.settled, pick):
            result = self.run(self.settle_call(gen, cost))
            assert result.already_settled and result == self.expect_settlement(gen, cost)

    @rule(amount=st.integers(-12 * UNIT, 12 * UNIT))
    def topup(self, amount: int) -> None:
        self.sweep()
        if self.balance + amount < 0:
            with pytest.raises(ValueError):
                self.run(self.store.topup(self.key_id, amount))
            return
        assert self.run(self.store.topup(self.key_id, amount)) == self.balance + amount
        self.balance += amount
        self.credits += amount

    @precondition(lambda self: self.clock is not None)
    @rule(seconds=st.sampled_from([0.001, 1, 30, 59.999, 60, 121]))
    def expire(self, seconds: float) -> None:
        assert self.clock is not None
        self.clock.now += seconds

    @rule(holds=st.lists(st.integers(0, 5 * UNIT), max_size=8),
          settles=st.lists(st.tuples(PICK, st.integers(0, 4 * UNIT)), max_size=6))
    def concurrently(self, holds: list[int], settles: list[tuple[int, int]]) -> None:
        """Admits and settles of distinct generations at once: any serial order is allowed, so the model
        takes each outcome from the store and checks it is possible, then the invariants check the sum."""
        open_now = [g for g, (_, expires) in self.holds.items() if expires > self.now_ms]
        picked = {choose(open_now, pick): cost for pick, cost in settles} if open_now else {}
        to_settle, costs = list(picked), list(picked.values())
        if holds or to_settle:
            self.sweep()  # no time passes during the burst, so every op in it sweeps the same holds
        gens = [next(self.ids) for _ in holds]

        async def burst() -> tuple[list[AdmitResult], list[Settlement]]:
            admits = [self.store.admit(self.admission(g, h, 120)) for g, h in zip(gens, holds, strict=True)]
            settles = [self.settle_call(g, c) for g, c in zip(to_settle, costs, strict=True)]
            both = await asyncio.gather(asyncio.gather(*admits), asyncio.gather(*settles))
            return list(both[0]), list(both[1])

        admitted, settled = self.run(burst())
        for gen, hold, result in zip(gens, holds, admitted, strict=True):
            assert result.balance >= 0
            if result.outcome == "ok":
                self.balance -= hold
                if hold:
                    self.holds[gen] = (hold, self.now_ms + self.ttl_s(120) * 1000)
            else:
                assert result.outcome == "insufficient" and hold > 0
                self.refused.append(gen)
        for gen, cost, settlement in zip(to_settle, costs, settled, strict=True):
            hold = self.holds.pop(gen)[0]
            assert not settlement.already_settled and settlement.balance >= 0
            assert min(cost, hold) <= settlement.charged <= cost  # the hold alone covers min(cost, hold)
            self.balance += hold - settlement.charged
            self.usage += settlement.charged
            self.settled[gen] = settlement

    @invariant()
    def ledger_balances(self) -> None:
        balance, credits, usage, holds = self.run(ledger_state(self.store, self.key_id))
        check_invariants(balance, credits, usage, holds)
        assert (balance, credits, usage) == (self.balance, self.credits, self.usage)
        assert holds == {gen: amount for gen, (amount, _) in self.holds.items()}


def test_ledger_state_machine_memory() -> None:
    run_state_machine_as_test(
        lambda: LedgerMachine(None),  # type: ignore[arg-type,return-value]
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None),
    )


def test_ledger_state_machine_redis(redis_url: str) -> None:
    run_state_machine_as_test(
        lambda: LedgerMachine(redis_url),  # type: ignore[arg-type,return-value]
        settings=settings(max_examples=80, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )


# --- plain tests on both backends -----------------------------------------------------------------------


def record(gen: str) -> dict[str, Any]:
    return {"model": MODEL, "id": gen}


async def test_200_concurrent_admits_serve_exactly_what_the_money_allows(
        clocked_store: tuple[Store, FakeClock | None]) -> None:
    store, _ = clocked_store
    hold = 7_777_777
    key = new_key(20 * hold)
    await store.create_key(key)
    gens = [f"gen-{i}" for i in range(200)]
    results = await asyncio.gather(*(store.admit(Admission(key.id, MODEL, g, hold, 600)) for g in gens))
    served = [g for g, r in zip(gens, results, strict=True) if r.outcome == "ok"]
    assert len(served) == 20
    assert all(r.outcome in ("ok", "insufficient") and r.balance >= 0 for r in results)
    assert (await ledger_state(store, key.id))[:3] == (0, 20 * hold, 0)

    costs = {g: hold - 1 - 1000 * i for i, g in enumerate(served)}  # each below its hold, all different
    settles = [store.settle(key.id, g, costs.get(g, 0), 10, record(g), 600) for g in gens]  # refused: cost 0
    settled = dict(zip(gens, await asyncio.gather(*settles), strict=True))
    assert all(settled[g].charged == costs.get(g, 0) for g in gens)
    spent = sum(costs.values())
    assert sum(s.charged for s in settled.values()) == spent
    balance, credits, usage, holds = await ledger_state(store, key.id)
    assert (balance, credits, usage, holds) == (20 * hold - spent, 20 * hold, spent, {})
    assert len([e async for e in store.iter_usage()]) == 200


async def test_expiry_under_concurrency(clocked_store: tuple[Store, FakeClock | None]) -> None:
    """1 s holds expire while a burst of admits, settles and top-ups runs: the sum still holds exactly."""
    store, clock = clocked_store
    hold = 3_000_000_019
    key = new_key(10 * hold)
    await store.create_key(key)
    first = await asyncio.gather(*(store.admit(Admission(key.id, MODEL, f"old-{i}", hold, 1)) for i in range(12)))
    assert [r.outcome for r in first].count("ok") == 10
    if clock is not None:
        clock.now += 1.001
    else:
        await asyncio.sleep(1.1)
    ops: list[Awaitable[object]] = []
    for i in range(10):
        ops.append(store.admit(Admission(key.id, MODEL, f"new-{i}", hold, 600)))
        ops.append(store.settle(key.id, f"old-{i}", hold // 2, 1, record(f"old-{i}"), 600))
        ops.append(store.topup(key.id, hold // 7))
    await asyncio.gather(*ops)
    balance, credits, usage, holds = await ledger_state(store, key.id)
    check_invariants(balance, credits, usage, holds)
    assert credits == 10 * hold + 10 * (hold // 7)
    assert not any(gen.startswith("old-") for gen in holds)  # every expired hold went back
    assert len(holds) <= 10 and usage <= 10 * (hold // 2)


async def test_a_machine_run_leaves_no_stray_redis_keys(redis_url: str) -> None:
    """Everything of one key lives under its hash tag; nothing else is written besides index and list."""
    if (left := 60 - time.time() % 60) < 2:  # keep the test inside one minute's windows
        await asyncio.sleep(left + 0.05)
    prefix = f"t{uuid.uuid4().hex}:"
    store = RedisStore(redis_url, prefix=prefix)
    key = new_key(UNIT)
    await store.create_key(key)
    await store.admit(Admission(key.id, MODEL, "gen-1", 5, 60, rpm=5, rpd=5, tpm=5))
    await store.settle(key.id, "gen-1", 3, 4, record("gen-1"), 60)
    await store.admit(Admission(key.id, MODEL, "gen-2", 5, 60, rpm=5))
    names = sorted(await store._redis.keys(prefix + "*"))
    minute, day = int(time.time() // 60), int(time.time() // 86400)
    tag = "{" + key.id + "}"
    expected = {
        f"{prefix}key:{tag}", f"{prefix}holds:{tag}", f"{prefix}gen:{tag}:gen-1", f"{prefix}audit:{tag}",
        f"{prefix}rl:{tag}:{MODEL}:rpm:{minute}", f"{prefix}rl:{tag}:{MODEL}:rpd:{day}",
        f"{prefix}rl:{tag}:{MODEL}:tpm:{minute}", f"{prefix}keyhash:{key.key_hash}", f"{prefix}keys",
    }
    assert set(names) == expected
    ttl = await store._redis.pttl(f"{prefix}rl:{tag}:{MODEL}:rpm:{minute}")
    assert 0 < ttl <= 60_000
    await store.close()
