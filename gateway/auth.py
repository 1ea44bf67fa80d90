"""Bearer key -> key record.

A malformed key (wrong prefix, length or checksum) is refused before any store lookup, so scanners and
typos cost nothing. Keys are looked up by their SHA-256 and compared in constant time; the key itself is
never stored, logged or echoed.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from fnmatch import fnmatchcase

from aiohttp import web

from gateway import keys, metrics
from gateway.errors import Forbidden, Unauthorized, Unavailable
from gateway.store import KeyRecord, Store, StoreError

_INVALID = ("Incorrect API key provided. Use a gateway key (gw-...) issued by this gateway's operator.")


def bearer(request: web.Request) -> str:
    """The token of `Authorization: Bearer <token>`, or ""."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def bearer_matches(request: web.Request, secret: str) -> bool:
    """Whether the request carries `secret` as its bearer token, compared in constant time (header bytes
    that are not UTF-8 come as lone surrogates: encoded back as they came, they just do not match)."""
    return hmac.compare_digest(bearer(request).encode("utf-8", "surrogateescape"), secret.encode())


def presented_key(request: web.Request) -> str:
    """The key a client sent: `Authorization: Bearer`, or `x-api-key` as the Anthropic SDK sends it."""
    return bearer(request) or request.headers.get("x-api-key", "").strip()


class KeyCache:
    """Key records by hash for a few seconds, so the hot path spends no store round trip on auth.

    Money and the disabled flag are re-checked atomically by `Store.admit` on every metered request, so
    a stale entry can never spend what the key does not have; it only delays what `/v1/models` shows.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, KeyRecord]] = {}
        self._lookups: dict[str, asyncio.Future[KeyRecord | None]] = {}

    async def lookup(self, store: Store, digest: str, now: float) -> KeyRecord | None:
        """One store lookup per key at a time: a burst with a cold cache (after a restart, or a client's
        first thousand streams at once) waits for the first lookup instead of sending a thousand.

        The lookup caches what it found itself, stamped with when it started (`now` of its first caller):
        a request that joined it later must not keep that older answer longer, nor put it over a newer one."""
        pending = self._lookups.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(store.get_key_by_hash(digest))
            self._lookups[digest] = pending
            pending.add_done_callback(lambda done: self._finished(digest, done, now))
        return await asyncio.shield(pending)

    def _finished(self, digest: str, done: asyncio.Future[KeyRecord | None], started: float) -> None:
        self._lookups.pop(digest, None)
        if done.cancelled() or done.exception() is not None:  # retrieved: a lookup every waiter left is quiet
            return
        if (record := done.result()) is not None:
            self.put(digest, record, started)

    def get(self, digest: str, now: float, ttl_s: float) -> KeyRecord | None:
        """The record cached less than `ttl_s` ago: the TTL in force now, so a reload shortening
        `billing.key_cache_s` applies to entries cached before it too."""
        entry = self._entries.get(digest)
        if entry is None or entry[0] + ttl_s <= now:
            return None
        return entry[1]

    def put(self, digest: str, record: KeyRecord, at: float) -> None:
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (at, record)


async def authenticate(request: web.Request, store: Store, cache: KeyCache | None = None,
                       ttl_s: float = 0.0) -> KeyRecord:
    token = presented_key(request)
    if not token:
        raise Unauthorized("You didn't provide an API key. Send 'Authorization: Bearer <gateway key>'.")
    digest = keys.hash_key(token)
    now = time.monotonic()
    record = cache.get(digest, now, ttl_s) if cache is not None else None
    if record is None:
        if not keys.is_well_formed(token):  # a cached digest was a stored key's: checked when first seen
            raise Unauthorized(_INVALID)
        try:
            record = await (cache.lookup(store, digest, now) if cache is not None else store.get_key_by_hash(digest))
        except StoreError as exc:
            metrics.STORE_ERRORS.labels("auth").inc()
            raise Unavailable("The gateway's key store is unavailable; retry shortly.",
                              code="store_unavailable") from exc
    if record is None or not keys.hashes_match(record.key_hash, digest):
        raise Unauthorized(_INVALID)
    if record.disabled:
        raise Forbidden("This API key has been disabled by the gateway's operator.", code="key_disabled")
    return record


def model_allowed(record: KeyRecord, model_id: str) -> bool:
    return not record.models or any(fnmatchcase(model_id, pattern) for pattern in record.models)
