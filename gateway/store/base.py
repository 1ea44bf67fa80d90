"""The store contract: everything that must survive a request lives behind this interface.

Two backends implement it with the same semantics: `store.redis.RedisStore` (several gateway processes
behind one Redis act as one gateway) and `store.memory.MemoryStore` (one process, for development).
Every check-and-change operation is one atomic step in both.

Exception tree::

    StoreError            the store cannot be reached or answered nonsense (maps to HTTP 503)
    └── StoreRefused      it answered `Store.ping`, refusing: the write it asks about, the gateway's login,
                          or anything until its dataset is loaded (/readyz: "refusing writes", "refusing
                          login", "loading")
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from providers.types import record


class StoreError(Exception):
    """The store is unreachable or failed; callers answer 503 and retry later.

    `maybe_applied`: the command reached the store before the failure (its reply was lost), so it may
    have taken effect — an admit's hold may be in place and must be given back.
    """

    def __init__(self, message: str, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class StoreRefused(StoreError):
    """The store answered the readiness check with an error: reachable, but no admission can pass. `refusing`
    is what an operator fixes: "writes" (a replica's READONLY, OOM at `maxmemory`, BUSY behind another
    client's script: a failover or memory), "login" (a rotated password: the gateway's URL) or "loading"
    (a restart still reading its dataset: a wait). `reply` is the store's own words, which name no address
    and no secret, for an operator to read on /readyz."""

    def __init__(self, message: str, reply: str, refusing: str = "writes") -> None:
        super().__init__(message)
        self.reply = reply
        self.refusing = refusing


class KeyMissing(ValueError):
    """A settlement for a key the store does not have (deleted, or a Redis that lost its data)."""


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
    credits: int = 0  # nano-dollars ever granted (create + top-ups)
    usage: int = 0  # nano-dollars ever captured by settled charges
    # per-key caps (None: only the gateway's own limits apply)
    max_streams: int | None = None  # concurrent streamed requests
    max_tokens: int | None = None  # output tokens one request may ask for (and is given when it asks none)
    max_body_bytes: int | None = None  # request body size, below server.max_body_bytes


@record
class Admission:
    """One request asking to start: the limits to check and count, and the money to hold.

    Limits are the effective (tightest) ones the gateway computed; None means unlimited. The store checks
    and counts them, and places the hold, in ONE atomic step using the store's own clock.
    """

    key_id: str
    model_id: str
    generation_id: str
    hold: int  # nano-dollars to reserve (0 for BYOK without fee)
    hold_ttl_s: int  # an unsettled hold older than this returns to the balance
    rpm: int | None = None
    rpd: int | None = None
    tpm: int | None = None
    # a stream of a key with a cap on open streams: refused ("streams") while that many are open, else
    # counted open until its settlement, or until hold_ttl_s when its process died before settling
    streams: int | None = None


@record
class WindowState:
    """One rate-limit window after the check, for the x-ratelimit-* headers."""

    limit: int
    remaining: int
    reset_s: float  # seconds until the window resets


@record
class AdmitResult:
    outcome: str  # "ok" | "insufficient" | "rate_limited" | "streams" | "disabled" | "missing"
    balance: int  # available balance after the step (nano-dollars)
    retry_after_s: float = 0.0  # when rate_limited: seconds until the first blocking window resets
    limited_by: str = ""  # when rate_limited: "rpm" | "rpd" | "tpm"
    requests: WindowState | None = None  # the rpm window (None if unlimited)
    tokens: WindowState | None = None  # the tpm window (None if unlimited)
    day: WindowState | None = None  # the rpd window (None if unlimited)


@record
class Settlement:
    charged: int  # nano-dollars actually captured (may be below the cost when the balance ran out)
    balance: int  # available balance after settling
    already_settled: bool  # True when this generation had been settled before (idempotent replay)


class Store(Protocol):
    async def ping(self) -> None:
        """Raise StoreError when the store does not answer, StoreRefused when it answers but would refuse an
        admission (a write, the gateway's login, a dataset still loading)."""

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

    # --- the ledger and the limits (one atomic step each) -----------------------------------------

    async def admit(self, admission: Admission) -> AdmitResult:
        """Check disabled/limits/open streams/balance; when all pass, count the request (and the stream)
        and place the hold."""

    async def settle(self, key_id: str, generation_id: str, cost: int, tokens: int,
                     record: dict[str, str], record_ttl_s: int) -> Settlement:
        """Capture `cost` against the generation's hold, return the rest, close its stream slot if it had
        one, record and audit it (with the cost the money could not cover as `shortfall`); idempotent."""

    async def renew(self, key_id: str, generation_id: str, hold_ttl_s: int) -> bool:
        """Keep a request in flight's hold and stream slot for `hold_ttl_s` more from now (store clock), so
        that only a dead process's hold returns by itself; only later, never earlier, and nothing past its
        expiry (that money is the balance's again). False when the request held neither any more."""

    async def get_generation(self, key_id: str, generation_id: str) -> dict[str, str] | None:
        """The generation record stored at settle, only under the key that made it."""

    def iter_usage(self, since_ms: int = 0) -> AsyncIterator[dict[str, str]]:
        """Every audited charge of every key since `since_ms` (store clock, ms), per key in time order."""
