"""The key cache: a burst of requests with a cold cache costs one store lookup, not one each."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway import auth, keys
from gateway.auth import KeyCache
from gateway.errors import Forbidden
from gateway.store import KeyRecord, StoreError
from gateway.store.memory import MemoryStore


class CountingStore(MemoryStore):
    """The real memory store, counting lookups and answering them a moment later (as a network store)."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0
        self.fail = False

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        self.lookups += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise StoreError("down")
        return await super().get_key_by_hash(key_hash)


async def test_concurrent_lookups_of_one_key_share_one_store_call() -> None:
    store, cache = CountingStore(), KeyCache()
    plain, record = keys.new_record("burst", 1_000)
    await store.create_key(record)
    other_plain, other = keys.new_record("other", 1_000)
    await store.create_key(other)
    found = await asyncio.gather(*(cache.lookup(store, keys.hash_key(plain), 0.0) for _ in range(50)),
                                 *(cache.lookup(store, keys.hash_key(other_plain), 0.0) for _ in range(5)))
    assert [r.id for r in found if r] == [record.id] * 50 + [other.id] * 5
    assert store.lookups == 2
    await cache.lookup(store, keys.hash_key(plain), 0.0)  # finished lookups are not reused: the cache's TTL rules
    assert store.lookups == 3


async def test_a_failed_lookup_fails_its_waiters_and_the_next_one_asks_again() -> None:
    store, cache = CountingStore(), KeyCache()
    plain, record = keys.new_record("down", 1_000)
    await store.create_key(record)
    store.fail = True
    results = await asyncio.gather(*(cache.lookup(store, keys.hash_key(plain), 0.0) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results) and store.lookups == 1
    store.fail = False
    assert (await cache.lookup(store, keys.hash_key(plain), 0.0)).id == record.id  # type: ignore[union-attr]


async def test_a_waiter_that_gives_up_does_not_cancel_the_lookup_for_the_others() -> None:
    store, cache = CountingStore(), KeyCache()
    plain, record = keys.new_record("cancel", 1_000)
    await store.create_key(record)
    first = asyncio.ensure_future(cache.lookup(store, keys.hash_key(plain), 0.0))
    second = asyncio.ensure_future(cache.lookup(store, keys.hash_key(plain), 0.0))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).id == record.id  # type: ignore[union-attr]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.lookups == 1


class SlowLookupStore(MemoryStore):
    """Reads the key when asked (as Redis runs the GET), answers only once `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        found = await super().get_key_by_hash(key_hash)
        self.started.set()
        await self.release.wait()
        return found


async def test_a_key_disabled_during_a_shared_lookup_is_not_served_past_key_cache_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A request that joins a lookup already in flight gets the lookup's (older) answer: it is cached from
    when the lookup started, not from the later request's start, so a key disabled between the lookup's
    read and that request is refused once key_cache_s has passed since the disable."""
    ttl = 2.0
    clock = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    store, cache = SlowLookupStore(), auth.KeyCache()
    plain, record = keys.new_record("stale", 1_000)
    await store.create_key(record)

    def request() -> Any:
        return make_mocked_request("GET", "/v1/models", headers={"Authorization": f"Bearer {plain}"})

    first = asyncio.ensure_future(auth.authenticate(request(), store, cache, ttl))  # t=100: the lookup reads
    await store.started.wait()
    clock[0] = 101.0
    await store.set_disabled(record.id, True)  # t=101: the operator disables the key
    clock[0] = 101.5
    joiner = asyncio.ensure_future(auth.authenticate(request(), store, cache, ttl))  # t=101.5: joins the lookup
    await asyncio.sleep(0)
    store.release.set()
    await first, await joiner
    clock[0] = 101.0 + ttl + 0.25  # key_cache_s after the disable has passed
    with pytest.raises(Forbidden):
        await auth.authenticate(request(), store, cache, ttl)
