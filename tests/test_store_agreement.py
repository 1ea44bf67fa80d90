"""The two stores agree: random sequences of ledger operations run against `MemoryStore` and `RedisStore`
(a real redis-server) side by side, and after every step their observable state must be the same.

Both stores run on one fake clock. The memory store takes it as `clock`; the Redis store's ledger scripts
read the server's `TIME`, so the test gives it a copy of the scripts whose `now_ms()` reads the fake time
from a Redis key instead (everything else in the scripts is the shipped text). The fake clock runs ahead
of the real one, so the keys Redis expires by itself (window counters, the open-streams set) expire no
earlier than the fake clock says; generation records are kept long enough never to expire in a run.

Besides agreement, each step checks both against `Model` (the README's ledger written plainly: holds
return at their TTL unless renewed before it, a settle captures min(cost, live hold + balance) and never an
expired hold twice, a replay changes nothing, fixed windows, stream slots) and the money invariants:
balance + open holds + usage == credits (nothing created from nothing), no balance below zero,
`holds_expire` never later than the earliest open hold, and Redis's set of open streams never expiring
before its latest slot.

More examples to hunt with: GW_STORE_EXAMPLES=3000.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer
from test_store_contract import make_record

from gateway.store import Admission, AdmitResult, MemoryStore, RedisStore, Settlement, WindowState
from gateway.store.base import KeyMissing
from gateway.store.memory import MAX_AMOUNT
from gateway.store.redis import _ledger_script, _Script

EXAMPLES = settings(max_examples=int(os.environ.get("GW_STORE_EXAMPLES", "60")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
RECORD_TTL_S = 10**6  # longer than any run: Redis expires records by its real clock, not the fake one
MODELS = ("m/a", "m/b")
KEYS = 2  # created at the start; key index KEYS is never created (missing)
GENS = 4

_REAL_NOW = """local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end"""


class FakeTimeRedisStore(RedisStore):
    """The Redis store with its ledger scripts' clock read from `<prefix>now` (ms) instead of TIME."""

    def __init__(self, url: str, prefix: str) -> None:
        super().__init__(url, prefix)
        self.clock_key = f"{prefix}now"

        def faked(name: str) -> str:
            source = _ledger_script(name)
            assert _REAL_NOW in source, "ledger.lua's now_ms() changed: update this test's substitute"
            fake = f"local function now_ms()\n  return tonumber(redis.call('GET', '{self.clock_key}'))\nend"
            return source.replace(_REAL_NOW, fake)

        self._admit = _Script(faked("admit"))
        self._settle = _Script(faked("settle"))
        self._topup = self._redis.register_script(faked("topup"))
        self._renew = self._redis.register_script(faked("renew"))

    async def set_now(self, seconds: float) -> None:
        await self._redis.set(self.clock_key, str(int(seconds * 1000)), ex=3600)

    async def raw_holds(self, key_id: str) -> dict[str, tuple[int, int]]:
        fields = await self._redis.hgetall(self._holds(key_id))
        return {gen: tuple(int(part) for part in value.split(":")) for gen, value in fields.items()}  # type: ignore[misc]

    async def holds_expire(self, key_id: str) -> int | None:
        value = await self._redis.hget(self._key(key_id), "holds_expire")
        return None if value is None else int(value)

    async def streams_expire(self, key_id: str) -> tuple[int, int] | None:
        """(when Redis drops the key's set of open streams, its latest slot's expiry) in ms, None if no set."""
        name = self._streams(key_id)
        latest = await self._redis.zrange(name, -1, -1, withscores=True)
        if not latest:
            return None
        return int(await self._redis.pexpiretime(name)), int(latest[0][1])

    async def open_streams(self, key_id: str, now_ms: int) -> set[str]:
        return set(await self._redis.zrangebyscore(self._streams(key_id), f"({now_ms}", "+inf"))


def start_time() -> float:
    """5 s into a minute, 6415 s before a UTC midnight (as fakes.clock.T0), two days ahead of real time."""
    midnight = (int(time.time()) // 86_400 + 2) * 86_400
    return float(midnight - 6415)


# --- operations -----------------------------------------------------------------------------------------

keys_ = st.sampled_from([0, 1, 0, 1, KEYS])  # mostly created keys, sometimes one never created
gens = st.integers(0, GENS - 1)
money = st.sampled_from([0, 1, 7, 1000, 5000, 10_000, 50_000]) | st.integers(0, 60_000)
limits = st.sampled_from([None, None, None, 0, 1, 2, 3])  # mostly unlimited: limit 0 refuses all
big = st.sampled_from([MAX_AMOUNT, MAX_AMOUNT - 1, MAX_AMOUNT - 20_000, 2**52])

streams = st.sampled_from([None, 1, 2])  # None: not a capped stream
admits = st.tuples(st.just("admit"), keys_, gens, money, st.sampled_from([1, 2, 5, 30, 90]),
                   st.sampled_from(MODELS), limits, limits, st.none() | st.integers(0, 60), streams)
settles = st.tuples(st.just("settle"), keys_, gens, money | st.integers(60_000, 200_000), st.integers(0, 40) | big,
                    st.sampled_from(MODELS))
renews = st.tuples(st.just("renew"), keys_, gens, st.sampled_from([1, 2, 5, 30, 90]))
ops = st.one_of(
    admits, settles, admits, settles, renews,
    st.tuples(st.just("create"), keys_, money | big),
    st.tuples(st.just("topup"), keys_, money | st.integers(-60_000, -1) | big | big.map(lambda v: -v)),
    st.tuples(st.just("disable"), keys_, st.booleans()),
    st.tuples(st.just("advance"), st.sampled_from([0.001, 0.5, 1, 2, 5, 29, 55, 61, 3600, 6500])),
)


WINDOWS_MS = {"rpm": 60_000, "rpd": 86_400_000, "tpm": 60_000}


@dataclasses.dataclass
class ModelKey:
    balance: int
    credits: int
    usage: int = 0
    disabled: bool = False
    holds: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # gen -> (amount, expires ms)
    streams: dict[str, int] = dataclasses.field(default_factory=dict)  # gen -> expires ms


class Model:
    """The README's ledger written plainly (no laziness): what both stores must answer."""

    def __init__(self) -> None:
        self.keys: dict[str, ModelKey] = {}
        self.counts: dict[tuple[str, str, str, int], int] = {}  # (key, model, kind, window index) -> used
        self.settled: dict[tuple[str, str], Settlement] = {}

    def expire(self, key: ModelKey, now: int) -> None:
        """Holds past their TTL are the balance's again (a store may do it lazily: not observably later)."""
        for gen, (amount, expires) in list(key.holds.items()):
            if expires <= now:
                del key.holds[gen]
                key.balance += amount

    def used(self, key_id: str, model: str, kind: str, now: int) -> int:
        return self.counts.get((key_id, model, kind, now // WINDOWS_MS[kind]), 0)

    def admit(self, a: Admission, now: int) -> AdmitResult:
        key = self.keys.get(a.key_id)
        if key is None:
            return AdmitResult("missing", 0)
        self.expire(key, now)
        if key.disabled:
            return AdmitResult("disabled", key.balance)
        limits = {"rpm": a.rpm, "rpd": a.rpd, "tpm": a.tpm}
        used = {kind: self.used(a.key_id, a.model_id, kind, now) for kind, limit in limits.items() if limit is not None}
        resets = {kind: (now // WINDOWS_MS[kind] + 1) * WINDOWS_MS[kind] - now for kind in used}
        blocked = [kind for kind in used if used[kind] >= (limits[kind] or 0)]
        open_ = [gen for gen, expires in key.streams.items() if expires > now]
        outcome = "ok"
        if blocked:
            outcome = "rate_limited"
        elif a.streams is not None and len(open_) >= a.streams:
            outcome = "streams"
        elif a.hold > key.balance:
            outcome = "insufficient"
        retry, limited_by = 0, ""
        if outcome == "rate_limited":
            longest = max(resets[kind] for kind in blocked)
            limited_by = next(kind for kind in ("rpm", "rpd", "tpm") if kind in blocked and resets[kind] == longest)
            retry = longest
        if outcome == "ok":
            for kind in ("rpm", "rpd"):
                if kind in used:
                    used[kind] += 1
                    self.counts[(a.key_id, a.model_id, kind, now // WINDOWS_MS[kind])] = used[kind]
            if a.hold:
                held = key.holds.get(a.generation_id, (0, 0))[0]
                key.holds[a.generation_id] = (held + a.hold, now + a.hold_ttl_s * 1000)
                key.balance -= a.hold
            if a.streams is not None:
                key.streams[a.generation_id] = now + a.hold_ttl_s * 1000

        def window(kind: str) -> WindowState | None:
            limit = limits[kind]
            return None if limit is None else WindowState(limit, max(0, limit - used[kind]), resets[kind] / 1000)

        return AdmitResult(outcome, key.balance, retry / 1000, limited_by, window("rpm"), window("tpm"),
                           window("rpd"))

    def settle(self, key_id: str, gen: str, cost: int, tokens: int, model: str, now: int) -> Settlement | str:
        key = self.keys.get(key_id)
        if key is None:
            return "KeyMissing"
        key.streams.pop(gen, None)
        if (key_id, gen) in self.settled:
            return dataclasses.replace(self.settled[(key_id, gen)], already_settled=True)
        self.expire(key, now)
        hold = key.holds.pop(gen, (0, 0))[0]  # an expired hold went back above: never counted twice
        charged = min(cost, hold + key.balance)
        key.balance += hold - charged
        key.usage += charged
        if tokens:  # a window's count stops at MAX_AMOUNT, above any limit a key or model may have
            index = (key_id, model, "tpm", now // WINDOWS_MS["tpm"])
            self.counts[index] = min(self.counts.get(index, 0) + tokens, MAX_AMOUNT)
        self.settled[(key_id, gen)] = Settlement(charged, key.balance, False)
        return self.settled[(key_id, gen)]

    def renew(self, key_id: str, gen: str, ttl_s: int, now: int) -> bool:
        """A live request's hold and stream slot last `ttl_s` more from now (never less); what expired stays
        expired (it is the balance's already). True when it held either."""
        key = self.keys.get(key_id)
        if key is None:
            return False
        expires, alive = now + ttl_s * 1000, False
        amount, ends = key.holds.get(gen, (0, 0))
        if ends > now:
            alive, key.holds[gen] = True, (amount, max(ends, expires))
        if key.streams.get(gen, 0) > now:
            alive, key.streams[gen] = True, max(key.streams[gen], expires)
        return alive

    def topup(self, key_id: str, amount: int, now: int) -> int | str | None:
        key = self.keys.get(key_id)
        if key is None:
            return None
        self.expire(key, now)
        if key.balance + amount < 0 or (amount > 0 and max(key.balance, key.credits) + amount > MAX_AMOUNT):
            return "ValueError"
        key.balance += amount
        key.credits += amount
        return key.balance


@dataclasses.dataclass
class Run:
    memory: MemoryStore
    redis: FakeTimeRedisStore
    now: float
    ids: list[str]
    model: Model = dataclasses.field(default_factory=Model)

    @property
    def now_ms(self) -> int:
        return int(self.now * 1000)


async def both(run: Run, name: str, *args: Any) -> tuple[Any, Any]:
    """Call `name` on both stores; the answer or the exception's type (never a message: they may differ)."""
    answers = []
    for backend in (run.memory, run.redis):
        try:
            answers.append(await getattr(backend, name)(*args))
        except (ValueError, TypeError, KeyMissing) as exc:
            answers.append(type(exc).__name__)
    return answers[0], answers[1]


async def check_state(run: Run, step: Any) -> None:
    now_ms = run.now_ms
    for key_id in run.ids:
        mem, red = await run.memory.get_key(key_id), await run.redis.get_key(key_id)
        assert mem == red, (step, key_id)
        expected = run.model.keys.get(key_id)
        assert (mem is None) == (expected is None), (step, key_id)
        if mem is None or expected is None:
            continue
        mem_holds = dict(run.memory._holds.get(key_id, {}))
        red_holds = await run.redis.raw_holds(key_id)
        assert mem_holds == red_holds, (step, key_id)
        bound = run.memory._holds_expire.get(key_id)
        assert bound == await run.redis.holds_expire(key_id), (step, key_id)
        if mem_holds:  # holds are read only once the earliest may have expired: never later than that
            assert bound is not None and bound <= min(expires for _, expires in mem_holds.values()), (step, key_id)
        mem_streams = {g for g, exp in run.memory._streams.get(key_id, {}).items() if exp > now_ms}
        assert mem_streams == await run.redis.open_streams(key_id, now_ms), (step, key_id)
        latest = await run.redis.streams_expire(key_id)
        if latest is not None:  # the set of open streams outlives every slot in it
            assert latest[0] >= latest[1], (step, key_id)
        assert mem_streams == {g for g, exp in expected.streams.items() if exp > now_ms}, (step, key_id)
        # the stores return expired holds lazily: what they hold past its TTL is the model's balance
        live = {g: h for g, h in mem_holds.items() if h[1] > now_ms}
        stale = sum(amount for amount, expires in mem_holds.values() if expires <= now_ms)
        assert live == {g: h for g, h in expected.holds.items() if h[1] > now_ms}, (step, key_id)
        assert mem.balance + stale == expected.balance + sum(a for a, e in expected.holds.values() if e <= now_ms)
        assert (mem.credits, mem.usage, mem.disabled) == (expected.credits, expected.usage, expected.disabled)
        held = sum(amount for amount, _ in mem_holds.values())
        assert mem.balance >= 0 and held >= 0, (step, key_id)
        assert mem.balance + held + mem.usage == mem.credits, (step, key_id)  # nothing from nothing


async def play(redis_url: str, steps: list[tuple[Any, ...]]) -> None:
    prefix = f"t{uuid.uuid4().hex}:"
    now = start_time()
    memory = MemoryStore(clock=lambda: run.now)
    redis = FakeTimeRedisStore(redis_url, prefix)
    run = Run(memory, redis, now, [f"key_{uuid.uuid4().hex[:12]}" for _ in range(KEYS + 1)])
    await redis.set_now(now)
    try:
        for step in steps:
            await apply(run, step)
            await check_state(run, step)
        for key_id in run.ids:  # the records and the audit agree too (but for Redis's own ms stamps)
            for g in range(GENS):
                found = [await backend.get_generation(key_id, f"gen-{g}") for backend in (memory, redis)]
                assert found[0] == found[1], (key_id, g)
        audits = [[{k: v for k, v in e.items() if k != "ts_ms"} async for e in backend.iter_usage()]
                  for backend in (memory, redis)]
        assert audits[0] == audits[1]
    finally:
        await redis.close()


async def apply(run: Run, step: tuple[Any, ...]) -> None:
    kind, model, now = step[0], run.model, run.now_ms
    if kind == "advance":
        run.now += step[1]
        await run.redis.set_now(run.now)
        return
    key_id = run.ids[step[1]]
    expected: Any
    if kind == "create":
        record = make_record(key_id=key_id, balance=step[2], rpm=None, rpd=None)
        mem, red = await both(run, "create_key", record)
        expected = "ValueError" if key_id in model.keys else None
        model.keys.setdefault(key_id, ModelKey(balance=step[2], credits=step[2]))
    elif kind == "topup":
        mem, red = await both(run, "topup", key_id, step[2])
        expected = model.topup(key_id, step[2], now)
    elif kind == "disable":
        mem, red = await both(run, "set_disabled", key_id, step[2])
        expected = key_id in model.keys
        if expected:
            model.keys[key_id].disabled = step[2]
    elif kind == "renew":
        mem, red = await both(run, "renew", key_id, f"gen-{step[2]}", step[3])
        expected = model.renew(key_id, f"gen-{step[2]}", step[3], now)
    elif kind == "admit":
        _, _, g, hold, ttl, model_id, rpm, rpd, tpm, streams = step
        admission = Admission(key_id, model_id, f"gen-{g}", hold, ttl, rpm=rpm, rpd=rpd, tpm=tpm, streams=streams)
        mem, red = await both(run, "admit", admission)
        expected = model.admit(admission, now)
    else:
        _, _, g, cost, tokens, model_id = step
        record = {"model": model_id, "id": f"gen-{g}"}
        mem, red = await both(run, "settle", key_id, f"gen-{g}", cost, tokens, record, RECORD_TTL_S)
        expected = model.settle(key_id, f"gen-{g}", cost, tokens, model_id, now)
    assert mem == red, step
    assert mem == expected, step


@EXAMPLES
@given(balances=st.lists(money | big, min_size=KEYS, max_size=KEYS), steps=st.lists(ops, min_size=5, max_size=40))
def test_memory_and_redis_stores_agree(redis_server: RedisServer, balances: list[int],
                                       steps: list[tuple[Any, ...]]) -> None:
    """Both keys exist from the start (a later "create" of one is a refused duplicate), so most steps
    reach the ledger; a key id nobody created is asked about too (missing on both)."""
    opening = [("create", k, balance) for k, balance in enumerate(balances)]
    asyncio.run(play(redis_server.url, opening + steps))


async def test_the_tpm_window_saturates_alike_in_both_stores(redis_url: str) -> None:
    """A settlement counts up to MAX_AMOUNT tokens (the gateway bounds an upstream's absurd usage to about
    that much); 1,025 of them in one minute took Redis's INCRBY past 2**63 - 1, an error that failed the
    settlement. The window's count saturates instead, at MAX_AMOUNT in both stores (above any tpm limit the
    stores take), so every settlement goes through and the window still refuses until it ends."""
    settles = 2**63 // MAX_AMOUNT + 1  # the first count INCRBY cannot hold
    prefix, now = f"t{uuid.uuid4().hex}:", start_time()
    key_ids = [f"key_{uuid.uuid4().hex[:12]}"]
    run = Run(MemoryStore(clock=lambda: run.now), FakeTimeRedisStore(redis_url, prefix), now, key_ids)
    await run.redis.set_now(now)
    try:
        await apply(run, ("create", 0, 0))
        for g in range(settles):  # each step checks both stores answer alike, and as the model says
            await apply(run, ("settle", 0, g, 0, MAX_AMOUNT, "m/a"))
        await apply(run, ("admit", 0, settles, 0, 1, "m/a", None, None, MAX_AMOUNT, None))  # rate_limited
        await check_state(run, "saturated")
        key_id, index = run.ids[0], run.now_ms // WINDOWS_MS["tpm"]
        counted = await run.redis._redis.get(f"{run.redis._windows(key_id, 'm/a')}tpm:{index}")
        assert int(counted) == MAX_AMOUNT
        assert run.memory._windows[(key_id, "m/a", "tpm")] == (index, MAX_AMOUNT)
    finally:
        await run.redis.close()
