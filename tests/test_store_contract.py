"""The store contract: every test runs on both backends (the `store` fixture), so they cannot drift."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fakes.clock import FakeClock
from redis_server import RedisServer, free_port

from gateway import keys
from gateway.store import (
    Admission,
    AdmitResult,
    KeyRecord,
    RedisStore,
    Settlement,
    Store,
    StoreError,
    open_store,
)
from gateway.store.base import KeyMissing
from gateway.store.boundary import redact, redacted_address, url_secrets
from gateway.store.memory import MAX_AMOUNT, MemoryStore


def make_record(key_id: str = "key_000000000001", created: int = 1_700_000_000, **kw: Any) -> KeyRecord:
    """A record with a real key hash; `kw` overrides any field."""
    _, record = keys.new_record("alice", 5_000_000_000, rpm=60, rpd=1000, models=("openai/*", "x/y"))
    return dataclasses.replace(record, id=key_id, created=created, **kw)


def stored(record: KeyRecord) -> KeyRecord:
    """The record as the store keeps it: the ledger starts with credits = balance and no usage."""
    return dataclasses.replace(record, credits=record.balance, usage=0)


# --- create and read ---------------------------------------------------------------------------------


async def test_create_then_get_by_id_and_by_hash(store: Store) -> None:
    record = make_record()
    await store.create_key(record)
    assert await store.get_key(record.id) == stored(record)
    assert await store.get_key_by_hash(record.key_hash) == stored(record)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"rpm": None, "rpd": None, "models": ()}, id="no-limits-all-models"),
        pytest.param({"disabled": True, "balance": 0, "credits": 7, "usage": 3}, id="disabled-ledger-reset"),
        pytest.param({"name": "büro, ünïcode ☃", "balance": MAX_AMOUNT}, id="unicode-name-largest-balance"),
        pytest.param({"rpm": 0, "rpd": 0, "models": ("a",)}, id="zero-limits-one-model"),
    ],
)
async def test_record_round_trips_exactly(store: Store, overrides: dict[str, Any]) -> None:
    record = make_record(**overrides)
    await store.create_key(record)
    assert await store.get_key(record.id) == stored(record)


@pytest.mark.parametrize(
    ("balance", "error"),
    [pytest.param(-1, ValueError, id="negative"), pytest.param(1.5, TypeError, id="float")],
)
async def test_bad_initial_balance_refused(store: Store, balance: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        await store.create_key(make_record(balance=balance))
    assert await store.list_keys() == []


async def test_duplicate_id_refused(store: Store) -> None:
    first = make_record()
    await store.create_key(first)
    with pytest.raises(ValueError):
        await store.create_key(make_record(key_id=first.id))
    assert await store.get_key(first.id) == stored(first)


async def test_duplicate_hash_refused_and_nothing_written(store: Store) -> None:
    first = make_record()
    await store.create_key(first)
    clash = make_record(key_id="key_000000000002", key_hash=first.key_hash)
    with pytest.raises(ValueError):
        await store.create_key(clash)
    assert await store.get_key(clash.id) is None
    assert await store.get_key_by_hash(first.key_hash) == stored(first)
    assert [r.id for r in await store.list_keys()] == [first.id]


async def test_model_pattern_with_comma_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.create_key(make_record(models=("a,b",)))
    assert await store.list_keys() == []


@pytest.mark.parametrize("models", [("",), ("x/y", "")], ids=["only-empty", "with-empty"])
async def test_an_empty_model_pattern_is_refused(store: Store, models: tuple[str, ...]) -> None:
    """Kept, "" matched no model (memory: every request a 403); dropped on Redis's comma-joined read, it left
    no pattern, which allows every model: one key, two meanings."""
    with pytest.raises(ValueError, match="empty"):
        await store.create_key(make_record(models=models))
    assert await store.list_keys() == []


@pytest.mark.parametrize("field", ["rpm", "rpd", "max_streams", "max_tokens", "max_body_bytes"])
async def test_a_limit_or_cap_the_scripts_cannot_count_is_refused_at_create(store: Store, field: str) -> None:
    """Accepted, every admission of the key failed validation (a 500 on every request)."""
    with pytest.raises(ValueError, match=field):
        await store.create_key(make_record(**{field: MAX_AMOUNT + 1}))
    await store.create_key(make_record(**{field: MAX_AMOUNT}))


async def test_list_is_oldest_first_ties_by_id(store: Store) -> None:
    for key_id, created in [("key_c", 300), ("key_b", 100), ("key_z", 200), ("key_a", 200)]:
        await store.create_key(make_record(key_id=key_id, created=created))
    assert [r.id for r in await store.list_keys()] == ["key_b", "key_a", "key_z", "key_c"]


async def test_empty_store_lists_nothing(store: Store) -> None:
    assert await store.list_keys() == []


# --- changes -----------------------------------------------------------------------------------------


async def test_disable_then_enable(store: Store) -> None:
    record = make_record()
    await store.create_key(record)
    assert await store.set_disabled(record.id, True) is True
    disabled = await store.get_key(record.id)
    assert disabled is not None and disabled.disabled
    assert (await store.get_key_by_hash(record.key_hash)) == disabled
    assert await store.set_disabled(record.id, False) is True
    assert await store.get_key(record.id) == stored(record)


@pytest.mark.parametrize(
    ("amounts", "expected"),
    [
        pytest.param([1_000_000_000], 6_000_000_000, id="add"),
        pytest.param([-5_000_000_000], 0, id="negative-to-zero"),
        pytest.param([0], 5_000_000_000, id="zero"),
        pytest.param([3, -2, 10], 5_000_000_011, id="several"),
    ],
)
async def test_topup(store: Store, amounts: list[int], expected: int) -> None:
    record = make_record(balance=5_000_000_000)
    await store.create_key(record)
    for amount in amounts:
        balance = await store.topup(record.id, amount)
    assert balance == expected
    after = await store.get_key(record.id)
    assert after == dataclasses.replace(record, balance=expected, credits=expected)


async def test_topup_below_zero_refused_and_nothing_changes(store: Store) -> None:
    record = make_record(balance=5)
    await store.create_key(record)
    with pytest.raises(ValueError):
        await store.topup(record.id, -6)
    assert await store.get_key(record.id) == stored(record)


async def test_grants_stop_where_the_ledger_stops_being_exact(store: Store) -> None:
    """Balance and credits stay at or below 2^53 - 1, which Lua's doubles hold exactly: a top-up that
    would pass it is refused whole; deductions always go through."""
    record = make_record(balance=MAX_AMOUNT - 10)
    await store.create_key(record)
    with pytest.raises(ValueError, match="above"):
        await store.topup(record.id, 11)
    assert await store.get_key(record.id) == stored(record)
    assert await store.topup(record.id, 10) == MAX_AMOUNT
    with pytest.raises(ValueError, match="above"):
        await store.topup(record.id, 1)
    assert await store.topup(record.id, -5) == MAX_AMOUNT - 5
    assert await store.topup(record.id, 5) == MAX_AMOUNT
    assert await store.get_key(record.id) == dataclasses.replace(record, balance=MAX_AMOUNT, credits=MAX_AMOUNT)
    with pytest.raises(ValueError, match="must not exceed"):
        await store.create_key(make_record(key_id="key_000000000002", balance=MAX_AMOUNT + 1))


@pytest.mark.parametrize("amount", [pytest.param(2**53, id="above"), pytest.param(-(2**53), id="below")])
async def test_topup_refuses_amounts_lua_cannot_hold_exactly(store: Store, amount: int) -> None:
    record = make_record()
    await store.create_key(record)
    with pytest.raises(ValueError):
        await store.topup(record.id, amount)
    assert await store.get_key(record.id) == stored(record)


@pytest.mark.parametrize("amount", [pytest.param(1.5, id="float"), pytest.param(True, id="bool")])
async def test_topup_refuses_non_int(store: Store, amount: object) -> None:
    record = make_record()
    await store.create_key(record)
    with pytest.raises(TypeError):
        await store.topup(record.id, amount)  # type: ignore[arg-type]
    assert await store.get_key(record.id) == stored(record)


async def test_concurrent_topups_sum_exactly(store: Store) -> None:
    record = make_record(balance=0)
    await store.create_key(record)
    amount = 1_000_000_007
    results = await asyncio.gather(*(store.topup(record.id, amount) for _ in range(200)))
    # each topup saw its own running total: no step was lost or applied twice
    assert sorted(r or 0 for r in results) == [amount * n for n in range(1, 201)]
    after = await store.get_key(record.id)
    assert after is not None and after.balance == 200 * amount


async def test_concurrent_mixed_sign_topups_sum_exactly(store: Store) -> None:
    amounts = [(-1) ** i * (i * 1_000_003) for i in range(200)]
    start = -sum(a for a in amounts if a < 0)  # enough that no order of the steps goes below zero
    record = make_record(balance=start)
    await store.create_key(record)
    await asyncio.gather(*(store.topup(record.id, a) for a in amounts))
    after = await store.get_key(record.id)
    assert after is not None
    assert (after.balance, after.credits, after.usage) == (start + sum(amounts), start + sum(amounts), 0)


# --- missing keys ------------------------------------------------------------------------------------


async def test_missing_key_is_none_everywhere(store: Store) -> None:
    await store.create_key(make_record())  # an unrelated key must not leak into the answers
    assert await store.get_key("key_missing") is None
    assert await store.get_key_by_hash(keys.hash_key(keys.generate())) is None
    assert await store.topup("key_missing", 100) is None
    assert await store.set_disabled("key_missing", True) is False
    assert await store.get_key("key_missing") is None  # and neither call created it
    assert [r.id for r in await store.list_keys()] == ["key_000000000001"]


async def test_ping(store: Store) -> None:
    await store.ping()


# --- open_store --------------------------------------------------------------------------------------


async def test_open_store_picks_backend(redis_url: str) -> None:
    assert isinstance(open_store(""), MemoryStore)
    backend = open_store(redis_url, prefix="t-open:")
    assert isinstance(backend, RedisStore)
    await backend.close()


def test_open_store_refuses_other_schemes_without_leaking_url() -> None:
    with pytest.raises(ValueError) as info:
        open_store("postgres://admin:s3cretpw@db.example/gw")
    assert "postgres" in str(info.value)
    assert "s3cretpw" not in str(info.value) and "db.example" not in str(info.value)


# --- redis failures ----------------------------------------------------------------------------------


async def _drain(backend: Store) -> list[dict[str, str]]:
    return [entry async for entry in backend.iter_usage(0)]


@pytest.mark.parametrize(
    "call",
    ["ping", "get_key", "get_key_by_hash", "list_keys", "topup", "create_key", "admit", "settle",
     "get_generation", "iter_usage"],
)
async def test_unreachable_redis_raises_store_error_without_password(call: str) -> None:
    backend = RedisStore(f"redis://:s3cretpw@127.0.0.1:{free_port()}/0", prefix="t-down:")
    operations = {
        "ping": lambda: backend.ping(),
        "get_key": lambda: backend.get_key("key_x"),
        "get_key_by_hash": lambda: backend.get_key_by_hash("0" * 64),
        "list_keys": lambda: backend.list_keys(),
        "topup": lambda: backend.topup("key_x", 1),
        "create_key": lambda: backend.create_key(make_record()),
        "admit": lambda: backend.admit(Admission("key_x", "m", "gen-1", hold=1, hold_ttl_s=60)),
        "settle": lambda: backend.settle("key_x", "gen-1", 1, 1, {"model": "m"}, 60),
        "get_generation": lambda: backend.get_generation("key_x", "gen-1"),
        "iter_usage": lambda: _drain(backend),
    }
    with pytest.raises(StoreError) as info:
        await operations[call]()
    assert "s3cretpw" not in str(info.value)
    assert "127.0.0.1" in str(info.value)  # the operator can still tell which server failed
    await backend.close()


async def test_wrong_password_raises_store_error_without_password() -> None:
    with RedisServer(password="right-pw") as server:
        backend = RedisStore(server.url.replace("right-pw", "wr0ng-pw"), prefix="t-auth:")
        with pytest.raises(StoreError) as info:
            await backend.ping()
        assert "wr0ng-pw" not in str(info.value) and "right-pw" not in str(info.value)
        await backend.close()


async def test_redis_store_recovers_after_restart() -> None:
    """No client-side retries (a lost reply must not run a topup twice), yet a restart costs no request."""
    with RedisServer() as server:
        backend = RedisStore(server.url, prefix="t-restart:")
        await backend.ping()  # leaves a pooled connection that the restart makes stale
        server.restart()
        await asyncio.sleep(0.1)  # a serving gateway's loop runs meanwhile and sees the socket close
        await backend.ping()  # so the stale connection is replaced on checkout, not reported
        server.stop()
        with pytest.raises(StoreError):
            await backend.ping()
        server.start()
        record = make_record()
        await backend.create_key(record)
        assert await backend.topup(record.id, 5) == record.balance + 5
        await backend.close()


@pytest.mark.parametrize(
    ("url", "address", "secrets"),
    [
        pytest.param("redis://:s3cret@h:6380/1", "redis://h:6380/1", ("s3cret",), id="password-only"),
        pytest.param("rediss://u:p%40ss@h/0", "rediss://h/0", ("p%40ss", "p@ss"), id="user-and-quoted"),
        pytest.param(
            "unix:///run/r.sock?db=2&password=pw%2F1",
            "unix:///run/r.sock",
            ("pw%2F1", "pw/1"),
            id="unix-query-password",
        ),
        pytest.param("redis://h:6379", "redis://h:6379", (), id="no-password"),
    ],
)
def test_url_redaction(url: str, address: str, secrets: tuple[str, ...]) -> None:
    assert redacted_address(url) == address
    assert url_secrets(url) == secrets
    scrubbed = redact(f"failed {url} with {' '.join(secrets)}", url_secrets(url))
    assert not any(secret in scrubbed for secret in secrets)


# --- the ledger and the limits -------------------------------------------------------------------------
# Both backends again, but the memory store runs on a fake clock (5 s into a minute, 6415 s before a UTC
# midnight) so expiry and windows need no sleeping; the redis one runs on the server's real clock.

MODEL = "openai/gpt-x"
H = 1_000_000  # a typical hold, nano-dollars
B = 10 * H  # a typical balance


@dataclasses.dataclass
class Ledger:
    """A store with a funded key and a way to let time pass (fake clock on memory, sleeping on redis)."""

    store: Store
    clock: FakeClock | None
    key: KeyRecord

    async def advance(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds
        else:
            await asyncio.sleep(seconds)

    async def avoid_window_edge(self) -> None:
        """On real time, start a window test at least 3 s before a minute ends, so the test stays in one."""
        left = 60 - time.time() % 60
        if self.clock is None and left < 3:
            await asyncio.sleep(left + 0.05)

    async def admit(self, gen: str = "gen-1", hold: int = H, ttl: int = 60, key_id: str = "",
                    **limits: int) -> AdmitResult:
        return await self.store.admit(Admission(key_id or self.key.id, MODEL, gen, hold, ttl, **limits))

    async def settle(self, gen: str = "gen-1", cost: int = 0, tokens: int = 0, key_id: str = "",
                     record_ttl_s: int = 3600, **fields: str) -> Settlement:
        record = {"model": MODEL, "id": gen, **fields}
        return await self.store.settle(key_id or self.key.id, gen, cost, tokens, record, record_ttl_s)

    async def state(self, key_id: str = "") -> tuple[int, int, int]:
        """(balance, credits, usage) of the key."""
        found = await self.store.get_key(key_id or self.key.id)
        assert found is not None
        return found.balance, found.credits, found.usage


@pytest.fixture
async def ledger(clocked_store: tuple[Store, FakeClock | None]) -> AsyncIterator[Ledger]:
    backend, clock = clocked_store
    key = make_record(balance=B, rpm=None, rpd=None)
    await backend.create_key(key)
    yield Ledger(backend, clock, await backend.get_key(key.id) or key)


@pytest.mark.parametrize(
    ("setup", "ask", "outcome", "limited_by"),
    [
        pytest.param({}, {"key_id": "key_missing"}, "missing", "", id="missing"),
        pytest.param({"disabled": True}, {}, "disabled", "", id="disabled"),
        pytest.param({"disabled": True}, {"rpm": 0, "hold": 2 * B}, "disabled", "", id="disabled-before-limits"),
        pytest.param({}, {"rpm": 0}, "rate_limited", "rpm", id="rpm"),
        pytest.param({}, {"rpd": 0}, "rate_limited", "rpd", id="rpd"),
        pytest.param({}, {"tpm": 0}, "rate_limited", "tpm", id="tpm"),
        pytest.param({}, {"rpm": 0, "hold": 2 * B}, "rate_limited", "rpm", id="limits-before-money"),
        pytest.param({}, {"hold": B + 1}, "insufficient", "", id="insufficient"),
        pytest.param({}, {"hold": B}, "ok", "", id="exactly-the-balance"),
        pytest.param({"drain": True}, {"hold": 0}, "ok", "", id="zero-hold-on-empty-balance"),
        pytest.param({}, {"rpm": 5, "rpd": 5, "tpm": 5}, "ok", "", id="under-all-limits"),
    ],
)
async def test_admit_outcomes(ledger: Ledger, setup: dict[str, bool], ask: dict[str, Any], outcome: str,
                              limited_by: str) -> None:
    if setup.get("disabled"):
        await ledger.store.set_disabled(ledger.key.id, True)
    if setup.get("drain"):
        await ledger.store.topup(ledger.key.id, -B)
    before = await ledger.store.get_key(ledger.key.id)
    result = await ledger.admit(**ask)
    assert (result.outcome, result.limited_by) == (outcome, limited_by)
    assert (result.retry_after_s > 0) == (outcome == "rate_limited")
    after = await ledger.store.get_key(ledger.key.id)
    assert after is not None and before is not None
    hold = ask.get("hold", H) if outcome == "ok" else 0
    assert result.balance == (after.balance if outcome != "missing" else 0)
    assert after == dataclasses.replace(before, balance=before.balance - hold)
    if outcome not in ("ok", "missing", "disabled"):  # a refusal counted nothing: one more request fits
        follow = await ledger.admit(gen="gen-2", hold=0, rpm=1, rpd=1)
        assert follow.outcome == "ok" and follow.requests is not None
        assert (follow.requests.limit, follow.requests.remaining) == (1, 0)


async def test_window_states_are_reported_on_ok_and_refusal(ledger: Ledger) -> None:
    ok = await ledger.admit(rpm=3, tpm=1000)
    assert ok.requests is not None and ok.tokens is not None
    assert (ok.requests.limit, ok.requests.remaining) == (3, 2)
    assert (ok.tokens.limit, ok.tokens.remaining) == (1000, 1000)
    assert 0 < ok.requests.reset_s <= 60 and 0 < ok.tokens.reset_s <= 60
    refused = await ledger.admit(gen="gen-2", hold=2 * B, rpm=3, tpm=1000)
    assert refused.outcome == "insufficient"
    assert refused.requests is not None and refused.requests.remaining == 2  # refused: not counted
    assert (await ledger.admit(gen="gen-3", rpd=9)).requests is None  # no rpm, no requests window
    if ledger.clock is not None:
        assert ok.requests.reset_s == 55.0


async def test_rpm_2_refuses_the_third_request_until_the_minute_ends(ledger: Ledger) -> None:
    await ledger.avoid_window_edge()
    results = [await ledger.admit(gen=f"gen-{i}", rpm=2) for i in range(3)]
    assert [r.outcome for r in results] == ["ok", "ok", "rate_limited"]
    assert [r.requests.remaining for r in results if r.requests] == [1, 0, 0]
    third = results[2]
    assert third.limited_by == "rpm" and 0 < third.retry_after_s <= 60
    assert third.balance == B - 2 * H  # the refusal held nothing
    assert await ledger.state() == (B - 2 * H, B, 0)
    if ledger.clock is not None:  # the next minute starts a new window
        assert third.retry_after_s == 55.0
        await ledger.advance(55)
        assert (await ledger.admit(gen="gen-4", rpm=2)).outcome == "ok"


async def test_retry_after_names_the_longest_blocking_window(ledger: Ledger) -> None:
    await ledger.avoid_window_edge()
    assert (await ledger.admit(rpm=1, rpd=1)).outcome == "ok"
    refused = await ledger.admit(gen="gen-2", rpm=1, rpd=1)
    assert refused.outcome == "rate_limited"
    assert 0 < refused.retry_after_s <= 86_400
    if ledger.clock is not None:
        assert (refused.limited_by, refused.retry_after_s) == ("rpd", 6415.0)


async def test_windows_are_per_model(ledger: Ledger) -> None:
    await ledger.avoid_window_edge()
    assert (await ledger.admit(rpm=1)).outcome == "ok"
    other = await ledger.store.admit(Admission(ledger.key.id, "other/model", "gen-2", H, 60, rpm=1))
    assert other.outcome == "ok"


async def test_tpm_counts_the_tokens_settle_reports(ledger: Ledger) -> None:
    await ledger.avoid_window_edge()
    first = await ledger.admit(tpm=100)
    assert first.tokens is not None and first.tokens.remaining == 100
    await ledger.settle("gen-1", cost=H, tokens=60)
    second = await ledger.admit(gen="gen-2", tpm=100)
    assert second.outcome == "ok" and second.tokens is not None and second.tokens.remaining == 40
    await ledger.settle("gen-2", cost=H, tokens=40)
    third = await ledger.admit(gen="gen-3", tpm=100)
    assert (third.outcome, third.limited_by) == ("rate_limited", "tpm")
    assert third.tokens is not None and third.tokens.remaining == 0 and 0 < third.retry_after_s <= 60


# settle: (hold placed or None, cost) -> charged, on a key with balance B
@pytest.mark.parametrize(
    ("hold", "cost", "charged"),
    [
        pytest.param(H, H // 2, H // 2, id="below-hold-returns-the-rest"),
        pytest.param(H, H, H, id="exactly-the-hold"),
        pytest.param(H, 3 * H, 3 * H, id="above-hold-from-balance"),
        pytest.param(H, 20 * B, B, id="above-everything-takes-all"),
        pytest.param(H, 0, 0, id="release"),
        pytest.param(None, 2 * H, 2 * H, id="no-hold-from-balance"),
        pytest.param(None, 20 * B, B, id="no-hold-above-balance"),
        pytest.param(None, 0, 0, id="no-hold-record-only"),
    ],
)
async def test_settle_captures(ledger: Ledger, hold: int | None, cost: int, charged: int) -> None:
    if hold is not None:
        assert (await ledger.admit(hold=hold)).outcome == "ok"
    result = await ledger.settle(cost=cost, tokens=7)
    assert result == Settlement(charged=charged, balance=B - charged, already_settled=False)
    assert await ledger.state() == (B - charged, B, charged)


async def test_settle_is_idempotent(ledger: Ledger) -> None:
    await ledger.avoid_window_edge()
    await ledger.admit(tpm=1000)
    first = await ledger.settle(cost=H // 3, tokens=10)
    before = (await ledger.state(), await ledger.store.get_generation(ledger.key.id, "gen-1"))
    again = [await ledger.settle(cost=c, tokens=500) for c in (0, H, 5 * B)]
    assert again == [dataclasses.replace(first, already_settled=True)] * 3
    assert (await ledger.state(), await ledger.store.get_generation(ledger.key.id, "gen-1")) == before
    assert len([e async for e in ledger.store.iter_usage()]) == 1
    tokens = (await ledger.admit(gen="gen-2", tpm=1000)).tokens
    assert tokens is not None and tokens.remaining == 990


async def test_concurrent_settles_of_one_generation_capture_once(ledger: Ledger) -> None:
    await ledger.admit(hold=H)
    results = await asyncio.gather(*(ledger.settle(cost=H // 2) for _ in range(20)))
    assert sorted(r.already_settled for r in results) == [False] + [True] * 19
    assert {(r.charged, r.balance) for r in results} == {(H // 2, B - H // 2)}
    assert await ledger.state() == (B - H // 2, B, H // 2)


async def test_expired_holds_return_to_the_balance_lazily(ledger: Ledger) -> None:
    """Three keys with two 1 s holds each; after one wait, an admit, a negative topup and a settle each
    see the money back, because each op sweeps its key's expired holds first. Until then nothing moves.
    (The same wait expires a generation record kept for 1 s.)"""
    ids = [ledger.key.id, "key_000000000002", "key_000000000003"]
    for key_id in ids[1:]:
        await ledger.store.create_key(make_record(key_id=key_id, balance=B))
    for key_id in ids:
        assert (await ledger.admit("gen-a", hold=H, ttl=1, key_id=key_id)).outcome == "ok"
        assert (await ledger.admit("gen-b", hold=H, ttl=1, key_id=key_id)).outcome == "ok"
        assert (await ledger.admit("gen-c", hold=9 * H, key_id=key_id)).outcome == "insufficient"
    await ledger.settle("gen-r", record_ttl_s=1)
    assert await ledger.store.get_generation(ids[0], "gen-r") is not None
    await ledger.advance(1.1)
    assert await ledger.store.get_generation(ids[0], "gen-r") is None
    assert [await ledger.state(key_id) for key_id in ids] == [(B - 2 * H, B, 0)] * 3  # lazily: not yet

    admitted = await ledger.admit("gen-c", hold=9 * H, key_id=ids[0])  # fits only with both holds back
    assert (admitted.outcome, admitted.balance) == ("ok", H)
    assert await ledger.store.topup(ids[1], -(B - H)) == H  # likewise
    late = await ledger.settle("gen-a", cost=3 * H, key_id=ids[2])  # its hold expired: from the balance
    assert late == Settlement(charged=3 * H, balance=B - 3 * H, already_settled=False)
    assert [await ledger.state(key_id) for key_id in ids] == [(H, B, 0), (H, H, 0), (B - 3 * H, B, 3 * H)]


async def test_a_renewed_hold_and_stream_slot_outlive_their_first_ttl_and_an_expired_one_stays_expired(
        ledger: Ledger) -> None:
    """A request in flight renews its hold and its stream slot (its process is alive): both last a TTL from
    the renewal, so neither the money nor the slot is free for another request meanwhile. A hold already past
    its expiry is the balance's again (it may have been spent): a renewal does not bring it back."""
    assert (await ledger.admit("gen-long", hold=B - H, ttl=1, streams=1)).outcome == "ok"
    await ledger.advance(0.6)
    assert await ledger.store.renew(ledger.key.id, "gen-long", 1) is True
    await ledger.advance(0.6)  # past the admission's TTL, within the renewal's
    assert (await ledger.admit("gen-probe", hold=2 * H)).outcome == "insufficient"
    assert (await ledger.admit("gen-stream", hold=0, streams=1)).outcome == "streams"
    await ledger.advance(1.1)  # the process stopped renewing: it died
    assert await ledger.store.renew(ledger.key.id, "gen-long", 1) is False
    assert (await ledger.admit("gen-stream", hold=B, streams=1)).outcome == "ok"  # money and slot are back
    assert await ledger.store.renew(ledger.key.id, "gen-missing", 1) is False
    assert await ledger.state() == (0, B, 0)


async def test_what_the_money_cannot_cover_is_recorded_as_the_shortfall(ledger: Ledger) -> None:
    """A settlement charges min(cost, hold + balance); the rest (a cost above the hold that the balance,
    spent meanwhile, cannot cover) used to leave no trace but a record whose `charged` was below the bill.
    It is the record's and the audit entry's `shortfall`, present only when there is one."""
    assert (await ledger.admit("gen-a", hold=H)).outcome == "ok"
    assert (await ledger.admit("gen-b", hold=B - H)).outcome == "ok"  # another request takes the rest
    short = await ledger.settle("gen-a", cost=3 * H, shortfall="0")  # a record field cannot set it
    assert short == Settlement(charged=H, balance=0, already_settled=False)
    assert await ledger.settle("gen-b", cost=B - H, shortfall="5") == Settlement(B - H, 0, False)  # none
    records = [await ledger.store.get_generation(ledger.key.id, gen) for gen in ("gen-a", "gen-b")]
    assert [r and r.get("shortfall") for r in records] == [str(2 * H), None]
    audit = {e["generation_id"]: e async for e in ledger.store.iter_usage()}
    assert (audit["gen-a"]["shortfall"], audit["gen-a"]["charged"]) == (str(2 * H), str(H))
    assert "shortfall" not in audit["gen-b"]
    assert await ledger.state() == (0, B, B)


async def test_admit_sweeps_expired_holds_before_the_money_check(ledger: Ledger) -> None:
    if ledger.clock is None:
        pytest.skip("covered on redis by test_expired_holds_return_to_the_balance_lazily (one sleep)")
    assert (await ledger.admit("gen-a", hold=B, ttl=30)).outcome == "ok"
    assert (await ledger.admit("gen-b", hold=H)).outcome == "insufficient"
    await ledger.advance(29.9)
    assert (await ledger.admit("gen-b", hold=H)).outcome == "insufficient"
    await ledger.advance(0.1)
    result = await ledger.admit("gen-b", hold=H)
    assert (result.outcome, result.balance) == ("ok", B - H)


async def test_a_shorter_hold_after_longer_ones_still_expires_on_time(ledger: Ledger) -> None:
    """Redis reads a key's holds only once the earliest expiry it keeps for them has come; a hold shorter
    than those before it (hold_ttl_s lowered by a reload) must move that time earlier."""
    assert (await ledger.admit("gen-long", hold=H, ttl=60)).outcome == "ok"
    assert (await ledger.admit("gen-short", hold=2 * H, ttl=1)).outcome == "ok"
    assert (await ledger.admit("gen-probe", hold=B - H)).outcome == "insufficient"
    await ledger.advance(1.1)
    probe = await ledger.admit("gen-probe", hold=B - H)  # fits only with the short hold back
    assert (probe.outcome, probe.balance) == ("ok", 0)
    long = await ledger.settle("gen-long", cost=H)  # the long one is still held, and captured
    assert long == Settlement(charged=H, balance=0, already_settled=False)
    assert await ledger.state() == (0, B, H)


async def test_topup_adds_to_credits(ledger: Ledger) -> None:
    await ledger.admit(hold=H)
    await ledger.settle(cost=H // 4)
    assert await ledger.store.topup(ledger.key.id, 2 * H) == B - H // 4 + 2 * H
    assert await ledger.store.topup(ledger.key.id, -H) == B - H // 4 + H
    assert await ledger.state() == (B - H // 4 + H, B + H, H // 4)


async def test_topup_cannot_take_held_money(ledger: Ledger) -> None:
    await ledger.admit(hold=4 * H)
    with pytest.raises(ValueError):
        await ledger.store.topup(ledger.key.id, -(B - 3 * H))
    assert await ledger.state() == (B - 4 * H, B, 0)


async def test_generation_record_readable_only_by_its_key(ledger: Ledger) -> None:
    other = make_record(key_id="key_000000000002", balance=B)
    await ledger.store.create_key(other)
    await ledger.admit(hold=H)
    await ledger.settle(cost=123, tokens=9, provider_name="openai", streamed="1", charged="forged")
    expected = {"model": MODEL, "id": "gen-1", "provider_name": "openai", "streamed": "1",
                "charged": "123", "balance_after": str(B - 123)}
    assert await ledger.store.get_generation(ledger.key.id, "gen-1") == expected
    assert await ledger.store.get_generation(other.id, "gen-1") is None
    assert await ledger.store.get_generation(ledger.key.id, "gen-unknown") is None


async def test_settle_refuses_bad_arguments_and_missing_keys(ledger: Ledger) -> None:
    with pytest.raises(ValueError):
        await ledger.store.settle(ledger.key.id, "gen-1", 1, 1, {"id": "gen-1"}, 60)  # no model
    with pytest.raises(ValueError):
        await ledger.store.settle(ledger.key.id, "gen-1", -1, 1, {"model": MODEL}, 60)
    with pytest.raises(TypeError):
        await ledger.store.settle(ledger.key.id, "gen-1", 1.5, 1, {"model": MODEL}, 60)  # type: ignore[arg-type]
    with pytest.raises(KeyMissing):  # a ValueError of its own kind: the caller tells it from a bad argument
        await ledger.store.settle("key_missing", "gen-1", 1, 1, {"model": MODEL}, 60)
    with pytest.raises(ValueError):
        await ledger.admit(hold=-1)
    assert await ledger.state() == (B, B, 0)
    assert [e async for e in ledger.store.iter_usage()] == []


async def test_iter_usage_walks_every_key_oldest_first(ledger: Ledger) -> None:
    other = make_record(key_id="key_000000000002", created=ledger.key.created + 1, balance=B)
    await ledger.store.create_key(other)
    await ledger.settle("gen-1", cost=5, tokens=50, finish_reason="stop")
    await ledger.advance(0.01)
    await ledger.settle("gen-2", cost=7, tokens=70, key_id=other.id)
    await ledger.advance(0.01)
    await ledger.settle("gen-3", cost=0, tokens=0)
    entries = [e async for e in ledger.store.iter_usage()]
    assert [(e["key_id"], e["generation_id"]) for e in entries] == [
        (ledger.key.id, "gen-1"), (ledger.key.id, "gen-3"), (other.id, "gen-2")]
    first = entries[0]
    assert {k: v for k, v in first.items() if k != "ts_ms"} == {
        "generation_id": "gen-1", "key_id": ledger.key.id, "model": MODEL, "charged": "5", "tokens": "50",
        "id": "gen-1", "finish_reason": "stop"}
    stamps = [int(e["ts_ms"]) for e in entries]
    assert stamps[0] < stamps[2] < stamps[1]  # settled in the order gen-1, gen-2, gen-3
    now_ms = (ledger.clock() if ledger.clock else time.time()) * 1000
    assert all(0 <= now_ms - stamp < 60_000 for stamp in stamps)
    since = [e["generation_id"] async for e in ledger.store.iter_usage(stamps[2])]
    assert since == ["gen-3", "gen-2"]
    assert [e async for e in ledger.store.iter_usage(stamps[1] + 1)] == []
