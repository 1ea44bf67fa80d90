"""The key cache: a burst of requests with a cold cache costs one store lookup, not one each."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from gateway.auth import KeyCache
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
    found = await asyncio.gather(*(cache.lookup(store, keys.hash_key(plain)) for _ in range(50)),
                                 *(cache.lookup(store, keys.hash_key(other_plain)) for _ in range(5)))
    assert [r.id for r in found if r] == [record.id] * 50 + [other.id] * 5
    assert store.lookups == 2
    await cache.lookup(store, keys.hash_key(plain))  # finished lookups are not reused: the cache's TTL rules
    assert store.lookups == 3


async def test_a_failed_lookup_fails_its_waiters_and_the_next_one_asks_again() -> None:
    store, cache = CountingStore(), KeyCache()
    plain, record = keys.new_record("down", 1_000)
    await store.create_key(record)
    store.fail = True
    results = await asyncio.gather(*(cache.lookup(store, keys.hash_key(plain)) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results) and store.lookups == 1
    store.fail = False
    assert (await cache.lookup(store, keys.hash_key(plain))).id == record.id  # type: ignore[union-attr]


async def test_a_waiter_that_gives_up_does_not_cancel_the_lookup_for_the_others() -> None:
    store, cache = CountingStore(), KeyCache()
    plain, record = keys.new_record("cancel", 1_000)
    await store.create_key(record)
    first = asyncio.ensure_future(cache.lookup(store, keys.hash_key(plain)))
    second = asyncio.ensure_future(cache.lookup(store, keys.hash_key(plain)))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).id == record.id  # type: ignore[union-attr]
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.lookups == 1
