"""The store contract: everything that must survive a request lives behind this interface.

Two backends implement it with the same semantics: `store.redis.RedisStore` (several gateway processes
behind one Redis act as one gateway) and `store.memory.MemoryStore` (one process, for development).
Every check-and-change operation is one atomic step in both.

Exception tree::

    StoreError            the store cannot be reached or answered nonsense (maps to HTTP 503)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class StoreError(Exception):
    """The store is unreachable or failed; callers answer 503 and retry later."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A gateway key as stored: never the key itself, only its SHA-256 hex digest and a visible prefix."""

    id: str  # public id, e.g. "key_3f9a0c1d2e4b"
    name: str
    key_hash: str  # sha256 hex of the full key
    prefix: str  # first characters of the key, for listing ("gw-AbC1x")
    created: int  # unix seconds
    disabled: bool = False
    balance: int = 0  # nano-dollars
    rpm: int | None = None
    rpd: int | None = None
    models: tuple[str, ...] = field(default=())  # glob patterns of allowed model ids; empty = all


class Store(Protocol):
    async def ping(self) -> None:
        """Raise StoreError when the store does not answer."""

    async def close(self) -> None: ...

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key; raise ValueError if its id or hash already exists."""

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None: ...

    async def get_key(self, key_id: str) -> KeyRecord | None: ...

    async def list_keys(self) -> list[KeyRecord]:
        """All keys, oldest first."""

    async def set_disabled(self, key_id: str, disabled: bool) -> bool:
        """Return False when the key does not exist."""

    async def topup(self, key_id: str, amount: int) -> int | None:
        """Atomically add `amount` nano-dollars (may be negative); the new balance, None if no such key."""
