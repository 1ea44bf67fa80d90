"""Store backends behind one contract; `open_store` picks one from the configured URL.

An empty URL means the in-process `MemoryStore` (one process only, nothing survives a restart);
``redis://``, ``rediss://`` and ``unix://`` mean `RedisStore`.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.store.base import (
    Admission,
    AdmitResult,
    KeyRecord,
    Settlement,
    Store,
    StoreError,
    StoreRefused,
    WindowState,
)
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore

__all__ = [
    "Admission",
    "AdmitResult",
    "KeyRecord",
    "MemoryStore",
    "RedisStore",
    "Settlement",
    "Store",
    "StoreError",
    "StoreRefused",
    "WindowState",
    "open_store",
]

_REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})


def open_store(url: str, prefix: str = "gw:") -> Store:
    """Return the backend for `url`; ValueError names only the scheme, since the URL may hold a password."""
    if not url:
        return MemoryStore()
    scheme = urlsplit(url).scheme.lower()
    if scheme in _REDIS_SCHEMES:
        return RedisStore(url, prefix=prefix)
    raise ValueError(f"unsupported store url scheme {scheme!r}; use redis://, rediss:// or unix://")
