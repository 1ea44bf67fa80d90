"""In-process store: plain dicts, for development and for a single gateway process.

Atomicity comes from asyncio itself: the event loop is single-threaded and no method below awaits
between reading and writing, so each method body runs as one uninterrupted step — the same guarantee
the Lua scripts give in `store.redis`. Nothing survives a restart, and two processes do not share it.
"""

from __future__ import annotations

import dataclasses

from gateway.store.base import KeyRecord


class MemoryStore:
    """The `Store` contract over dicts; records are frozen, so changes replace them whole."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyRecord] = {}  # id -> record
        self._by_hash: dict[str, str] = {}  # key_hash -> id

    async def ping(self) -> None:
        """Always reachable: it lives in this process."""

    async def close(self) -> None:
        """Nothing to release; kept so callers treat both backends alike."""

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key; ValueError if its id or hash exists (a key must map to exactly one record)."""
        validate_models(record.models)
        if record.id in self._keys:
            raise ValueError(f"key id {record.id} already exists")
        if record.key_hash in self._by_hash:
            raise ValueError("a key with this hash already exists")
        self._keys[record.id] = record
        self._by_hash[record.key_hash] = record.id

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        key_id = self._by_hash.get(key_hash)
        return None if key_id is None else self._keys.get(key_id)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return self._keys.get(key_id)

    async def list_keys(self) -> list[KeyRecord]:
        """All keys, oldest first; equal `created` ties go by id, as Redis orders equal scores."""
        return sorted(self._keys.values(), key=lambda r: (r.created, r.id))

    async def set_disabled(self, key_id: str, disabled: bool) -> bool:
        record = self._keys.get(key_id)
        if record is None:
            return False
        self._keys[key_id] = dataclasses.replace(record, disabled=disabled)
        return True

    async def topup(self, key_id: str, amount: int) -> int | None:
        """Add `amount` nano-dollars (negative allowed); the new balance, None when the key is missing."""
        validate_amount(amount)
        record = self._keys.get(key_id)
        if record is None:
            return None
        balance = record.balance + amount
        self._keys[key_id] = dataclasses.replace(record, balance=balance)
        return balance


def validate_amount(amount: int) -> None:
    """Refuse floats and bools as a TypeError (a bug), not a store failure: money is integer nano-dollars.

    Shared with `store.redis` so both backends refuse the same inputs (base.py would be its natural home).
    """
    if type(amount) is not int:
        raise TypeError(f"amount must be int nano-dollars, not {type(amount).__name__}")


def validate_models(models: tuple[str, ...]) -> None:
    """Refuse a model glob with ',': Redis stores the list comma-joined, and both backends must agree."""
    if any("," in m for m in models):
        raise ValueError("model patterns must not contain ','")
