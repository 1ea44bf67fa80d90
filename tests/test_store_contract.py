"""The store contract: every test runs on both backends (the `store` fixture), so they cannot drift."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from redis_server import RedisServer, free_port

from gateway import keys
from gateway.store import KeyRecord, RedisStore, Store, StoreError, open_store
from gateway.store.memory import MemoryStore
from gateway.store.redis import redact, redacted_address, url_secrets


def make_record(key_id: str = "key_000000000001", created: int = 1_700_000_000, **kw: Any) -> KeyRecord:
    """A record with a real key hash; `kw` overrides any field."""
    _, record = keys.new_record("alice", 5_000_000_000, rpm=60, rpd=1000, models=("openai/*", "x/y"))
    return dataclasses.replace(record, id=key_id, created=created, **kw)


# --- create and read ---------------------------------------------------------------------------------


async def test_create_then_get_by_id_and_by_hash(store: Store) -> None:
    record = make_record()
    await store.create_key(record)
    assert await store.get_key(record.id) == record
    assert await store.get_key_by_hash(record.key_hash) == record


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"rpm": None, "rpd": None, "models": ()}, id="no-limits-all-models"),
        pytest.param({"disabled": True, "balance": -42}, id="disabled-negative-balance"),
        pytest.param({"name": "büro, ünïcode ☃", "balance": 2**62}, id="unicode-name-large-balance"),
        pytest.param({"rpm": 0, "rpd": 0, "models": ("a",)}, id="zero-limits-one-model"),
    ],
)
async def test_record_round_trips_exactly(store: Store, overrides: dict[str, Any]) -> None:
    record = make_record(**overrides)
    await store.create_key(record)
    assert await store.get_key(record.id) == record


async def test_duplicate_id_refused(store: Store) -> None:
    first = make_record()
    await store.create_key(first)
    with pytest.raises(ValueError):
        await store.create_key(make_record(key_id=first.id))
    assert await store.get_key(first.id) == first


async def test_duplicate_hash_refused_and_nothing_written(store: Store) -> None:
    first = make_record()
    await store.create_key(first)
    clash = make_record(key_id="key_000000000002", key_hash=first.key_hash)
    with pytest.raises(ValueError):
        await store.create_key(clash)
    assert await store.get_key(clash.id) is None
    assert await store.get_key_by_hash(first.key_hash) == first
    assert [r.id for r in await store.list_keys()] == [first.id]


async def test_model_pattern_with_comma_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.create_key(make_record(models=("a,b",)))
    assert await store.list_keys() == []


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
    assert await store.get_key(record.id) == record


@pytest.mark.parametrize(
    ("amounts", "expected"),
    [
        pytest.param([1_000_000_000], 6_000_000_000, id="add"),
        pytest.param([-6_000_000_000], -1_000_000_000, id="negative-below-zero"),
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
    assert after == dataclasses.replace(record, balance=expected)


@pytest.mark.parametrize("amount", [pytest.param(1.5, id="float"), pytest.param(True, id="bool")])
async def test_topup_refuses_non_int(store: Store, amount: object) -> None:
    record = make_record()
    await store.create_key(record)
    with pytest.raises(TypeError):
        await store.topup(record.id, amount)  # type: ignore[arg-type]
    assert await store.get_key(record.id) == record


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
    record = make_record(balance=0)
    await store.create_key(record)
    amounts = [(-1) ** i * (i * 1_000_003) for i in range(200)]
    await asyncio.gather(*(store.topup(record.id, a) for a in amounts))
    after = await store.get_key(record.id)
    assert after is not None and after.balance == sum(amounts)


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


@pytest.mark.parametrize("call", ["ping", "get_key", "get_key_by_hash", "list_keys", "topup", "create_key"])
async def test_unreachable_redis_raises_store_error_without_password(call: str) -> None:
    backend = RedisStore(f"redis://:s3cretpw@127.0.0.1:{free_port()}/0", prefix="t-down:")
    operations = {
        "ping": lambda: backend.ping(),
        "get_key": lambda: backend.get_key("key_x"),
        "get_key_by_hash": lambda: backend.get_key_by_hash("0" * 64),
        "list_keys": lambda: backend.list_keys(),
        "topup": lambda: backend.topup("key_x", 1),
        "create_key": lambda: backend.create_key(make_record()),
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
