"""Redis store: several gateway processes behind one Redis act as one gateway.

Layout (every name starts with the configurable prefix `p`, default ``gw:``; ``{<id>}`` is a literal
hash tag, so everything of one key lives in one Cluster slot and each ledger script touches one slot)::

    {p}key:{<id>}                         hash   id name key_hash prefix created disabled balance credits
                                                 usage rpm rpd models max_streams max_tokens
                                                 max_body_bytes
    {p}holds:{<id>}                       hash   generation id -> "amount:expires_ms" (open holds)
    {p}rl:{<id>}:<model>:<rpm|rpd|tpm>:<n> string used count of window n (expires when the window ends)
    {p}gen:{<id>}:<generation id>         hash   the settled generation's record (+ charged, balance_after, shortfall)
    {p}audit:{<id>}                       stream one entry per settled charge (MAXLEN ~ 1,000,000)
    {p}streams:{<id>}                     zset   open stream id -> expiry ms (the key's max_streams cap)
    {p}keyhash:<hash>                     string -> id (the auth lookup)
    {p}keys                               zset   id scored by created (equal scores order by id)

The prefix must not contain "{". Integers are stored as decimal strings (Redis hashes hold strings;
HINCRBY works on them), None as "", booleans as "0"/"1", models comma-joined. Every check-and-change of
a key is one Lua script (`*.lua` beside this module; the ledger scripts share `ledger.lua`) using the
server's TIME, so it is atomic across processes and costs one round trip (EVALSHA). Creating a key spans
three slots (hash index, key list, key hash) and so takes three single-slot steps, ordered so that a
crash between them leaves at most an unreachable index entry, never a half-visible key.

Every failure below this boundary (redis-py errors, OSError, timeouts) leaves as `StoreError` with the
cause chained; messages name the server by a redacted address, never by the URL, which may hold a
password, and any spelling of that password is scrubbed from the cause's text (`store/boundary.py`).
The client does not retry commands by itself: a write whose reply was lost (e.g. a socket timeout after
HINCRBY ran) must not run twice. Stale pooled connections are still replaced on checkout, so a Redis
restart costs no failed request once the server is back. The pool blocks (up to `POOL_WAIT_S`) rather
than failing when a burst of requests wants more than `MAX_CONNECTIONS` connections at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from importlib import resources
from typing import cast  # casts: decode_responses=True makes every reply str

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, BusyLoadingError, RedisError, ResponseError

from gateway.store.base import Admission, AdmitResult, KeyMissing, KeyRecord, Settlement, StoreError, StoreRefused
from gateway.store.boundary import Boundary, RedisPyBoundary, redact, redacted_address, url_secrets
from gateway.store.memory import (
    MAX_AMOUNT,
    MAX_TTL_S,
    admit_result,
    topup_negative,
    topup_too_large,
    validate_admission,
    validate_amount,
    validate_count,
    validate_new_record,
    validate_settle,
)
from gateway.store.multiplex import Multiplexed, sha1

CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 15
MAX_CONNECTIONS = 64  # per process; a burst beyond it waits up to POOL_WAIT_S for a free connection
POOL_WAIT_S = 5.0
AUDIT_PAGE = 1000  # stream entries per XRANGE while exporting usage

# KEYS: key hash. ARGV: field/value pairs for HSET. 0 (nothing written) when the id exists.
_CREATE_KEY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: hash index entry. ARGV: id. Undo create_key's claim of the hash, only if it is still ours.
_RELEASE_HASH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: key hash. ARGV: "0" or "1". 0 when the key is missing.
_SET_DISABLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'disabled', ARGV[1])
return 1
"""


# A script with a shebang and no `no-writes` flag (Redis 7.0+): checked as a write before it runs, runs no command.
_WRITABLE = "#!lua\nreturn 1"


def _ledger_script(name: str) -> str:
    """A ledger script (admit, settle, topup, renew) with the shared head (MAX_AMOUNT, clock, sweep) prepended."""
    files = resources.files(__package__)
    return (f"local MAX_AMOUNT = {MAX_AMOUNT}  -- store.memory.MAX_AMOUNT\n" + files.joinpath("ledger.lua").read_text()
            + "\n" + files.joinpath(f"{name}.lua").read_text())


class _Script(tuple[str, str]):
    """A script's source and its SHA1, as `Multiplexed.script` takes them."""

    def __new__(cls, source: str) -> _Script:
        return super().__new__(cls, (source, sha1(source)))

    @property
    def source(self) -> str:
        return self[0]


class RedisStore:
    """The `Store` contract over `redis.asyncio`; one client (with its connection pool) per store."""

    def __init__(self, url: str, prefix: str = "gw:") -> None:
        self._address = redacted_address(url)
        self._secrets = url_secrets(url)
        self._boundaries: dict[str, Boundary] = {}
        self._prefix = prefix
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_WAIT_S,
                decode_responses=True,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=SOCKET_TIMEOUT_S,
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
                retry=Retry(NoBackoff(), 0),
                # RESP2: works with any Redis/Valkey, and under RESP3 redis-py 8 enables "maintenance
                # notifications", which skips its check for connections the server closed.
                protocol=2,
            )
        except ValueError:  # redis-py's message may quote the URL, password included: drop it
            raise ValueError(f"invalid redis url for {self._address}") from None
        self._redis: aioredis.Redis = aioredis.Redis.from_pool(pool)  # closing the client closes the pool
        self._create_key = self._redis.register_script(_CREATE_KEY)
        self._release_hash = self._redis.register_script(_RELEASE_HASH)
        self._set_disabled = self._redis.register_script(_SET_DISABLED)
        self._topup = self._redis.register_script(_ledger_script("topup"))
        self._renew = self._redis.register_script(_ledger_script("renew"))  # long requests only: off the hot path
        # the per-request scripts share one pipelined connection (see store/multiplex.py for why)
        self._admit = _Script(_ledger_script("admit"))
        self._settle = _Script(_ledger_script("settle"))
        self._mux = Multiplexed(url, CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S,
                                scripts=(self._admit.source, self._settle.source))

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}key:{{{key_id}}}"

    def _holds(self, key_id: str) -> str:
        return f"{self._prefix}holds:{{{key_id}}}"

    def _windows(self, key_id: str, model_id: str) -> str:
        """The prefix of the key × model rate-limit windows; scripts append "<kind>:<window index>"."""
        return f"{self._prefix}rl:{{{key_id}}}:{model_id}:"

    def _generation(self, key_id: str, generation_id: str) -> str:
        return f"{self._prefix}gen:{{{key_id}}}:{generation_id}"

    def _audit(self, key_id: str) -> str:
        return f"{self._prefix}audit:{{{key_id}}}"

    def _streams(self, key_id: str) -> str:
        return f"{self._prefix}streams:{{{key_id}}}"

    def _hash_index(self, key_hash: str) -> str:
        return f"{self._prefix}keyhash:{key_hash}"

    @property
    def _zset(self) -> str:
        return f"{self._prefix}keys"

    def _boundary(self, op: str) -> Boundary:
        """Turn any lower-layer failure of `op` into StoreError, its message scrubbed of the password. It
        keeps no state of a call, so every call of `op` shares one (admit and settle run per request)."""
        boundary = self._boundaries.get(op)
        if boundary is None:
            boundary = self._boundaries[op] = Boundary(op, self._address, self._secrets)
        return boundary

    def _redis_py(self, op: str) -> Boundary:
        """`_boundary` around a call through redis-py, which may swallow the caller's cancellation."""
        return RedisPyBoundary(op, self._address, self._secrets)

    async def ping(self) -> None:
        """Raise StoreError unless Redis would take an admission now. A PING is not enough: a replica left
        behind by a failover and a master at `maxmemory` under `noeviction` answer it, yet refuse every
        script that writes. `_WRITABLE` writes nothing but, declared a writing script, is refused just
        as an admission is (-READONLY, -OOM, -NOREPLICAS), and that refusal is StoreRefused, so /readyz can tell
        it from no answer. Redis before 7.0 knows no such declaration: PING."""
        with self._redis_py("ping"):
            try:
                await self._redis.eval(_WRITABLE, 0)
            except AuthenticationError as exc:  # WRONGPASS, NOAUTH: redis-py's own class, no parsing of words
                raise self._refused(exc, "login") from exc
            except BusyLoadingError as exc:  # LOADING
                raise self._refused(exc, "loading") from exc
            except ResponseError as exc:
                if "compil" not in str(exc):  # "Error compiling script": a server without shebang support
                    raise self._refused(exc) from exc
                await self._redis.ping()

    def _refused(self, exc: RedisError, refusing: str = "writes") -> StoreRefused:
        """Redis's error reply as it wrote it: redis-py strips the code (READONLY, OOM) of those it has a class for,
        and from 8.x names the code of the others too (BUSY) while leaving it in their text."""
        code, said = getattr(exc, "status_code", None), str(exc)
        reply = redact(f"{code} {said}" if code and not said.startswith(f"{code} ") else said, self._secrets)
        return StoreRefused(f"redis ping refused at {self._address}: {reply}", reply, refusing)

    async def close(self) -> None:
        with self._redis_py("close"):
            await self._mux.close()
            await self._redis.aclose()

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key (credits = balance, usage = 0); ValueError if its id or hash already exists.

        Three single-slot steps: claim the hash (SET NX), list the id (ZADD NX), then write the key hash,
        which is what makes the key exist. A crash in between leaves an index entry or a listed id with no
        key behind it, which every reader skips.
        """
        validate_new_record(record)
        fields = _encode(dataclasses.replace(record, credits=record.balance, usage=0))
        argv = [part for item in fields.items() for part in item]
        with self._redis_py("create_key"):
            if not await self._redis.set(self._hash_index(record.key_hash), record.id, nx=True):
                raise ValueError("a key with this hash already exists")
            await self._redis.zadd(self._zset, {record.id: record.created}, nx=True)
            if not await self._create_key(keys=[self._key(record.id)], args=argv):
                await self._release_hash(keys=[self._hash_index(record.key_hash)], args=[record.id])
                raise ValueError(f"key id {record.id} already exists")

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        with self._redis_py("get_key_by_hash"):
            key_id = cast("str | None", await self._redis.get(self._hash_index(key_hash)))
        return None if key_id is None else await self.get_key(key_id)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        with self._redis_py("get_key"):
            fields = cast("dict[str, str]", await self._redis.hgetall(self._key(key_id)))
        return _decode(fields, self._address) if fields else None

    async def list_keys(self) -> list[KeyRecord]:
        """All keys, oldest first: ids from the zset, then every hash in one pipelined round trip."""
        with self._redis_py("list_keys"):
            ids = cast("list[str]", await self._redis.zrange(self._zset, 0, -1))
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self._key(key_id))
                rows = await pipe.execute()
        return [_decode(fields, self._address) for fields in rows if fields]

    async def set_disabled(self, key_id: str, disabled: bool) -> bool:
        with self._redis_py("set_disabled"):
            result = await self._set_disabled(keys=[self._key(key_id)], args=["1" if disabled else "0"])
        return bool(result)

    async def topup(self, key_id: str, amount: int) -> int | None:
        """Add `amount` to balance and credits in one script; None if the key is missing, ValueError below 0
        or above MAX_AMOUNT."""
        validate_amount(amount)
        with self._redis_py("topup"):
            reply = await self._topup(keys=[self._key(key_id), self._holds(key_id)], args=[amount, MAX_AMOUNT])
        if reply[0] == "missing":
            return None
        if reply[0] == "negative":
            raise ValueError(topup_negative(key_id, amount))
        if reply[0] == "too_large":
            raise ValueError(topup_too_large(key_id, amount))
        return int(reply[1])

    # --- the ledger and the limits: one script, one round trip each -------------------------------

    async def admit(self, admission: Admission) -> AdmitResult:
        """Missing, disabled, rate limits, open streams, money — in that order; only a full pass counts,
        holds, and (for a capped stream) takes a stream slot."""
        validate_admission(admission)
        a = admission
        keys = [self._key(a.key_id), self._holds(a.key_id), self._windows(a.key_id, a.model_id),
                self._streams(a.key_id)]
        limits = {"rpm": a.rpm, "rpd": a.rpd, "tpm": a.tpm}
        args = [a.generation_id, a.hold, a.hold_ttl_s * 1000, *("" if v is None else v for v in limits.values()),
                "" if a.streams is None else a.streams]
        with self._boundary("admit"):
            reply = await self._mux.script(*self._admit, keys, args)
        outcome, balance, now = str(reply[0]), int(reply[1]), int(reply[2])
        if outcome in ("missing", "disabled"):
            return AdmitResult(outcome=outcome, balance=balance)
        used = {kind: int(count) for kind, count in zip(limits, reply[3:6], strict=True) if limits[kind] is not None}
        return admit_result(outcome, balance, limits, used, now)

    async def settle(self, key_id: str, generation_id: str, cost: int, tokens: int,
                     record: dict[str, str], record_ttl_s: int) -> Settlement:
        """Capture min(cost, hold + balance), return the rest, record and audit it; a replay changes nothing."""
        model = validate_settle(cost, tokens, record, record_ttl_s)
        args = [generation_id, cost, tokens, record_ttl_s, orjson.dumps(record), key_id]  # the script audits
        keys = [self._key(key_id), self._holds(key_id), self._generation(key_id, generation_id),
                self._audit(key_id), self._windows(key_id, model), self._streams(key_id)]
        with self._boundary("settle"):
            status, charged, balance = await self._mux.script(*self._settle, keys, args)
        if status == "missing":
            raise KeyMissing(f"no key {key_id} to settle against")
        return Settlement(int(charged), int(balance), status == "replay")

    async def renew(self, key_id: str, generation_id: str, hold_ttl_s: int) -> bool:
        """Keep a request in flight's hold and stream slot for `hold_ttl_s` more (renew.lua), by Redis's clock."""
        validate_count("hold_ttl_s", hold_ttl_s, minimum=1, maximum=MAX_TTL_S)
        with self._redis_py("renew"):
            reply = await self._renew(keys=[self._holds(key_id), self._streams(key_id)],
                                      args=[generation_id, hold_ttl_s * 1000])
        return bool(reply)

    async def get_generation(self, key_id: str, generation_id: str) -> dict[str, str] | None:
        with self._redis_py("get_generation"):
            fields = cast("dict[str, str]", await self._redis.hgetall(self._generation(key_id, generation_id)))
        return fields or None

    async def iter_usage(self, since_ms: int = 0) -> AsyncIterator[dict[str, str]]:
        """Audit entries of every key (oldest key first), each key's in time order, from `since_ms` on.

        Pages through each stream with XRANGE; the entry id's milliseconds become the `ts_ms` field.
        """
        with self._redis_py("iter_usage"):
            ids = cast("list[str]", await self._redis.zrange(self._zset, 0, -1))
        for key_id in ids:
            start = f"{max(0, since_ms)}-0"
            while True:
                with self._redis_py("iter_usage"):
                    page = cast("list[tuple[str, dict[str, str]]]", await self._redis.xrange(
                        self._audit(key_id), min=start, max="+", count=AUDIT_PAGE))
                for entry_id, fields in page:
                    yield {**fields, "ts_ms": entry_id.split("-", 1)[0]}
                if len(page) < AUDIT_PAGE:
                    break
                start = "(" + page[-1][0]


def _encode(record: KeyRecord) -> dict[str, str]:
    """A record as hash fields: all strings, None as "", so the hash round-trips exactly."""
    return {
        "id": record.id,
        "name": record.name,
        "key_hash": record.key_hash,
        "prefix": record.prefix,
        "created": str(record.created),
        "disabled": "1" if record.disabled else "0",
        "balance": str(record.balance),
        "credits": str(record.credits),
        "usage": str(record.usage),
        "rpm": "" if record.rpm is None else str(record.rpm),
        "rpd": "" if record.rpd is None else str(record.rpd),
        "models": ",".join(record.models),
        **{cap: "" if getattr(record, cap) is None else str(getattr(record, cap)) for cap in _CAPS},
    }


def _decode(fields: dict[str, str], address: str) -> KeyRecord:
    """Hash fields back to a record; a malformed hash is the store answering nonsense, so StoreError."""
    try:
        return KeyRecord(
            id=fields["id"],
            name=fields["name"],
            key_hash=fields["key_hash"],
            prefix=fields["prefix"],
            created=int(fields["created"]),
            disabled=fields["disabled"] == "1",
            balance=int(fields["balance"]),
            credits=int(fields["credits"]),
            usage=int(fields["usage"]),
            rpm=_opt_int(fields.get("rpm", "")),
            rpd=_opt_int(fields.get("rpd", "")),
            models=tuple(m for m in fields.get("models", "").split(",") if m),
            **{cap: _opt_int(fields.get(cap, "")) for cap in _CAPS},  # absent in records made before caps
        )
    except (KeyError, ValueError) as exc:
        raise StoreError(f"malformed key record in redis at {address}: {exc!r}") from exc


_CAPS = ("max_streams", "max_tokens", "max_body_bytes")


def _opt_int(value: str) -> int | None:
    return None if value == "" else int(value)
