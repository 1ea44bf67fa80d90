"""In-process store: plain dicts, for development and for a single gateway process.

Atomicity comes from asyncio itself: the event loop is single-threaded and no method below awaits
between reading and writing, so each method body runs as one uninterrupted step — the same guarantee
the Lua scripts give in `store.redis`. Nothing survives a restart, and two processes do not share it.

The ledger (same semantics as the Lua scripts, see `store.redis`): a key's `balance` is the money
available; `admit` moves a hold out of it, `settle` captures ``min(cost, hold + balance)`` into `usage`
and returns the rest, so ``balance + open holds + usage == credits`` at every step. Expired holds go back
to the balance lazily, when that key is next admitted, settled or topped up. Time comes from `clock`
(unix seconds), injectable so tests can expire holds and windows without sleeping.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping

from gateway.store.base import Admission, AdmitResult, KeyMissing, KeyRecord, Settlement, WindowState

MAX_AMOUNT = 2**53 - 1  # money and token arguments stay exact in Lua's doubles below this
MAX_TTL_S = 10**9  # about 31 years; keeps now + ttl in milliseconds exact in Lua too
AUDIT_MAXLEN = 1_000_000  # per key, as the Redis stream's approximate MAXLEN
WINDOWS_MS = {"rpm": 60_000, "rpd": 86_400_000, "tpm": 60_000}  # fixed windows, aligned to the epoch (UTC)


@dataclasses.dataclass(slots=True)
class _Generation:
    record: dict[str, str]
    settlement: Settlement
    expires_ms: int


class MemoryStore:
    """The `Store` contract over dicts; records are frozen, so changes replace them whole."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}  # id -> record
        self._by_hash: dict[str, str] = {}  # key_hash -> id
        self._holds: dict[str, dict[str, tuple[int, int]]] = {}  # id -> generation id -> (amount, expires_ms)
        self._holds_expire: dict[str, int] = {}  # id -> at or before its holds' earliest expiry (as in Redis)
        self._windows: dict[tuple[str, str, str], tuple[int, int]] = {}  # (id, model, kind) -> (index, used)
        self._generations: dict[tuple[str, str], _Generation] = {}  # (id, generation id) -> settled record
        self._expiries: list[tuple[int, str, str]] = []  # heap of (expires_ms, id, generation id)
        self._audit: dict[str, deque[dict[str, str]]] = {}  # id -> entries, oldest first
        self._streams: dict[str, dict[str, int]] = {}  # id -> open stream id -> expires_ms

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def ping(self) -> None:
        """Always reachable: it lives in this process."""

    async def close(self) -> None:
        """Nothing to release; kept so callers treat both backends alike."""

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key; ValueError if its id or hash exists (a key must map to exactly one record).

        The ledger starts here: `credits` is set to the initial balance and `usage` to 0, whatever the
        record says, so the invariant holds from the first step.
        """
        validate_new_record(record)
        if record.id in self._keys:
            raise ValueError(f"key id {record.id} already exists")
        if record.key_hash in self._by_hash:
            raise ValueError("a key with this hash already exists")
        self._keys[record.id] = dataclasses.replace(record, credits=record.balance, usage=0)
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
        """Add `amount` to balance and credits; None when the key is missing, ValueError below zero or
        above MAX_AMOUNT (credits, the sum of every grant, bound the balance)."""
        validate_amount(amount)
        if key_id not in self._keys:
            return None
        record = self._sweep(key_id, self._now_ms())
        balance = record.balance + amount
        if balance < 0:
            raise ValueError(topup_negative(key_id, amount))
        if amount > 0 and max(balance, record.credits + amount) > MAX_AMOUNT:
            raise ValueError(topup_too_large(key_id, amount))
        self._keys[key_id] = dataclasses.replace(record, balance=balance, credits=record.credits + amount)
        return balance

    # --- the ledger and the limits ----------------------------------------------------------------

    async def admit(self, admission: Admission) -> AdmitResult:
        """Missing, disabled, rate limits, open streams, money — in that order; only a full pass counts,
        holds, and (for a capped stream) takes a stream slot."""
        validate_admission(admission)
        a = admission
        if a.key_id not in self._keys:
            return AdmitResult(outcome="missing", balance=0)
        now = self._now_ms()
        record = self._sweep(a.key_id, now)
        if record.disabled:
            return AdmitResult(outcome="disabled", balance=record.balance)
        limits = {"rpm": a.rpm, "rpd": a.rpd, "tpm": a.tpm}
        used = {kind: self._used(a.key_id, a.model_id, kind, now) for kind in limits if limits[kind] is not None}
        open_streams = self._open_streams(a.key_id, now) if a.streams is not None else {}
        outcome = "ok"
        if blocking(limits, used, now):
            outcome = "rate_limited"
        elif a.streams is not None and len(open_streams) >= a.streams:
            outcome = "streams"
        elif a.hold > record.balance:
            outcome = "insufficient"
        if outcome == "ok":
            for kind in ("rpm", "rpd"):
                if kind in used:
                    used[kind] += 1
                    self._windows[(a.key_id, a.model_id, kind)] = (now // WINDOWS_MS[kind], used[kind])
            record = self._place_hold(record, a.generation_id, a.hold, now + a.hold_ttl_s * 1000)
            if a.streams is not None:
                open_streams[a.generation_id] = now + a.hold_ttl_s * 1000
        return admit_result(outcome, record.balance, limits, used, now)

    def _open_streams(self, key_id: str, now: int) -> dict[str, int]:
        """The key's open streams (generation id -> expiry ms), those of dead processes dropped."""
        open_ = {gid: exp for gid, exp in self._streams.get(key_id, {}).items() if exp > now}
        self._streams[key_id] = open_
        return open_

    async def settle(self, key_id: str, generation_id: str, cost: int, tokens: int,
                     record: dict[str, str], record_ttl_s: int) -> Settlement:
        """Capture min(cost, hold + balance), return the rest, record and audit it; a replay changes nothing."""
        model = validate_settle(cost, tokens, record, record_ttl_s)
        if key_id not in self._keys:
            raise KeyMissing(f"no key {key_id} to settle against")
        now = self._now_ms()
        self._forget_expired(now)
        self._streams.get(key_id, {}).pop(generation_id, None)
        prior = self._generations.get((key_id, generation_id))
        if prior is not None:
            return dataclasses.replace(prior.settlement, already_settled=True)
        key = self._sweep(key_id, now)
        hold, _ = self._holds.get(key_id, {}).pop(generation_id, (0, 0))
        charged = max(0, min(cost, hold + key.balance))
        key = dataclasses.replace(key, balance=hold + key.balance - charged, usage=key.usage + charged)
        self._keys[key_id] = key
        settlement = Settlement(charged=charged, balance=key.balance, already_settled=False)
        stored = {**record, "charged": str(charged), "balance_after": str(key.balance)}
        _put_shortfall(stored, cost, charged)
        expires = now + record_ttl_s * 1000
        self._generations[(key_id, generation_id)] = _Generation(stored, settlement, expires)
        heapq.heappush(self._expiries, (expires, key_id, generation_id))
        if tokens:
            index, used = self._windows.get((key_id, model, "tpm"), (0, 0))
            current = now // WINDOWS_MS["tpm"]
            # stops at MAX_AMOUNT (above any limit admit takes), as settle.lua's must: INCRBY fails past 2^63 - 1
            self._windows[(key_id, model, "tpm")] = (current, min((used if index == current else 0) + tokens,
                                                                  MAX_AMOUNT))
        entry = audit_entry(key_id, generation_id, model, charged, tokens, record, cost)
        self._audit.setdefault(key_id, deque(maxlen=AUDIT_MAXLEN)).append({**entry, "ts_ms": str(now)})
        return settlement

    async def renew(self, key_id: str, generation_id: str, hold_ttl_s: int) -> bool:
        """Move a live hold's and stream slot's expiry to now + `hold_ttl_s`, never earlier (see renew.lua);
        `holds_expire` stays a bound at or before the earliest expiry as it is."""
        validate_count("hold_ttl_s", hold_ttl_s, minimum=1, maximum=MAX_TTL_S)
        now = self._now_ms()
        expires = now + hold_ttl_s * 1000
        open_ = False
        holds = self._holds.get(key_id, {})
        amount, until = holds.get(generation_id, (0, 0))
        if until > now:
            open_, holds[generation_id] = True, (amount, max(until, expires))
        slots = self._streams.get(key_id, {})
        if slots.get(generation_id, 0) > now:
            open_, slots[generation_id] = True, max(slots[generation_id], expires)
        return open_

    async def get_generation(self, key_id: str, generation_id: str) -> dict[str, str] | None:
        found = self._generations.get((key_id, generation_id))
        if found is None or found.expires_ms <= self._now_ms():
            return None
        return dict(found.record)

    async def iter_usage(self, since_ms: int = 0) -> AsyncIterator[dict[str, str]]:
        """Audit entries of every key (oldest key first), each key's in time order, from `since_ms` on."""
        for record in await self.list_keys():
            for entry in list(self._audit.get(record.id, ())):
                if int(entry["ts_ms"]) >= since_ms:
                    yield dict(entry)

    # --- helpers: each runs inside one method body, so inside its atomic step ------------------------

    def _sweep(self, key_id: str, now: int) -> KeyRecord:
        """Return the key's expired holds to its balance, once one may have expired (see ledger.lua's
        sweep); the record as it is afterwards."""
        record = self._keys[key_id]
        bound = self._holds_expire.get(key_id)
        if bound is not None and now < bound:
            return record
        holds = self._holds.get(key_id, {})
        expired = [gen for gen, (_, expires) in holds.items() if expires <= now]
        if expired:
            returned = sum(holds.pop(gen)[0] for gen in expired)
            record = dataclasses.replace(record, balance=record.balance + returned)
            self._keys[key_id] = record
        if holds:
            self._holds_expire[key_id] = min(expires for _, expires in holds.values())
        else:
            self._holds_expire.pop(key_id, None)
        return record

    def _place_hold(self, record: KeyRecord, generation_id: str, amount: int, expires: int) -> KeyRecord:
        """Move `amount` from the balance into the generation's hold (adding to one it already has)."""
        if amount == 0:
            return record
        holds = self._holds.setdefault(record.id, {})
        held, _ = holds.get(generation_id, (0, 0))
        holds[generation_id] = (held + amount, expires)
        if expires < self._holds_expire.get(record.id, expires + 1):
            self._holds_expire[record.id] = expires
        record = dataclasses.replace(record, balance=record.balance - amount)
        self._keys[record.id] = record
        return record

    def _used(self, key_id: str, model_id: str, kind: str, now: int) -> int:
        index, used = self._windows.get((key_id, model_id, kind), (-1, 0))
        return used if index == now // WINDOWS_MS[kind] else 0

    def _forget_expired(self, now: int) -> None:
        """Drop generation records past their TTL (Redis expires them by itself)."""
        while self._expiries and self._expiries[0][0] <= now:
            _, key_id, generation_id = heapq.heappop(self._expiries)
            found = self._generations.get((key_id, generation_id))
            if found is not None and found.expires_ms <= now:
                del self._generations[(key_id, generation_id)]


# --- shared with store.redis, so both backends refuse the same inputs and answer alike ----------------


def reset_ms(kind: str, now_ms: int) -> int:
    """Milliseconds until the current `kind` window ends (always > 0)."""
    size = WINDOWS_MS[kind]
    return (now_ms // size + 1) * size - now_ms


def blocking(limits: Mapping[str, int | None], used: Mapping[str, int], now_ms: int) -> dict[str, int]:
    """The windows whose limit is reached (`used` counts before this request), each with its reset in ms."""
    return {kind: reset_ms(kind, now_ms) for kind, count in used.items() if count >= (limits[kind] or 0)}


def admit_result(outcome: str, balance: int, limits: Mapping[str, int | None], used: Mapping[str, int],
                 now_ms: int) -> AdmitResult:
    """Build the answer from the window counts (after counting, when admitted). A rate-limited request
    may retry once every blocking window has reset: after the longest (ties go in rpm, rpd, tpm order)."""
    limited_by, retry = "", 0
    if outcome == "rate_limited":
        for kind, reset in blocking(limits, used, now_ms).items():
            if reset > retry:
                limited_by, retry = kind, reset

    def window(kind: str) -> WindowState | None:
        limit = limits[kind]
        if limit is None:
            return None
        return WindowState(limit, max(0, limit - used[kind]), reset_ms(kind, now_ms) / 1000)

    return AdmitResult(outcome, balance, retry / 1000, limited_by, window("rpm"), window("tpm"), window("rpd"))


def audit_entry(key_id: str, generation_id: str, model: str, charged: int, tokens: int,
                record: Mapping[str, str], cost: int) -> dict[str, str]:
    """One audit entry: the record's fields, then the ledger's own (which win a name clash; `shortfall`, the
    cost the money could not cover, is only the ledger's, present when there is one)."""
    entry = {**record, "generation_id": generation_id, "key_id": key_id, "model": model,
             "charged": str(charged), "tokens": str(tokens)}
    _put_shortfall(entry, cost, charged)
    return entry


def _put_shortfall(fields: dict[str, str], cost: int, charged: int) -> None:
    """`shortfall`: the cost the money could not cover (a hold that expired and was spent meanwhile, a cost
    above hold + balance), present only when there is one; a request is never free in silence."""
    if cost > charged:
        fields["shortfall"] = str(cost - charged)
    else:
        fields.pop("shortfall", None)


def validate_amount(amount: int) -> None:
    """Refuse floats and bools as a TypeError (a bug), not a store failure: money is integer nano-dollars.

    Shared with `store.redis` so both backends refuse the same inputs (base.py would be its natural home).
    """
    if type(amount) is not int:
        raise TypeError(f"amount must be int nano-dollars, not {type(amount).__name__}")
    if abs(amount) > MAX_AMOUNT:
        raise ValueError(f"amount {amount} is out of range (|amount| <= 2**53 - 1)")


def topup_negative(key_id: str, amount: int) -> str:
    return f"topup of {amount} would leave key {key_id} with a negative balance"


def topup_too_large(key_id: str, amount: int) -> str:
    return f"topup of {amount} would take key {key_id} above {MAX_AMOUNT} nano-dollars"


def validate_count(name: str, value: int, minimum: int = 0, maximum: int = MAX_AMOUNT) -> None:
    """An int argument (money, tokens, limit, TTL) within [minimum, maximum], so exact in Lua."""
    if type(value) is not int:
        raise TypeError(f"{name} must be int, not {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} {value} is out of range ({minimum} .. {maximum})")


def validate_admission(a: Admission) -> None:
    validate_count("hold", a.hold)
    validate_count("hold_ttl_s", a.hold_ttl_s, minimum=1, maximum=MAX_TTL_S)
    for name, limit in (("rpm", a.rpm), ("rpd", a.rpd), ("tpm", a.tpm)):
        if limit is not None:
            validate_count(name, limit)
    if a.streams is not None:
        validate_count("streams", a.streams, minimum=1)


def validate_settle(cost: int, tokens: int, record: Mapping[str, str], record_ttl_s: int) -> str:
    """Check settle's arguments; the model id (record["model"]) whose tpm window the tokens count in."""
    validate_count("cost", cost)
    validate_count("tokens", tokens)
    validate_count("record_ttl_s", record_ttl_s, minimum=1, maximum=MAX_TTL_S)
    try:  # str.join refuses anything but str, in C: a generator over the items cost more than the script call
        "".join(record)
        "".join(record.values())
    except TypeError:
        raise TypeError("generation record fields and values must be str") from None
    if "model" not in record:
        raise ValueError('generation record needs a "model" field (the model id its tokens count against)')
    return record["model"]


def validate_new_record(record: KeyRecord) -> None:
    """A new key: no ',' in model globs (Redis stores them comma-joined), a non-negative int balance."""
    validate_models(record.models)
    if type(record.balance) is not int:
        raise TypeError(f"balance must be int nano-dollars, not {type(record.balance).__name__}")
    if record.balance < 0:
        raise ValueError("a new key's balance must not be negative")
    if record.balance > MAX_AMOUNT:
        raise ValueError(f"a new key's balance must not exceed {MAX_AMOUNT} nano-dollars")
    # admit hands limits and caps to the scripts, which count exactly only up to MAX_AMOUNT (validate_admission)
    for name, lowest in (("rpm", 0), ("rpd", 0), ("max_streams", 1), ("max_tokens", 1), ("max_body_bytes", 1)):
        value = getattr(record, name)
        if value is not None and (type(value) is not int or not lowest <= value <= MAX_AMOUNT):
            raise ValueError(f"{name} must be a whole number from {lowest} to {MAX_AMOUNT}")


def validate_models(models: tuple[str, ...]) -> None:
    """Refuse a model glob with ',' or an empty one: Redis stores the list comma-joined (and drops empty
    parts when reading it back), and both backends must agree."""
    if any("," in m for m in models):
        raise ValueError("model patterns must not contain ','")
    if any(not m for m in models):
        raise ValueError("model patterns must not be empty")
