"""Redis store: several gateway processes behind one Redis act as one gateway.

Layout (every name starts with the configurable prefix, default ``gw:``)::

    {p}key:{id}         hash   id name key_hash prefix created disabled balance rpm rpd models
    {p}keyhash:{hash}   string -> id (the auth lookup)
    {p}keys             zset   id scored by created (equal scores order by id, as Redis does)

Integers are stored as decimal strings (Redis hashes hold strings; HINCRBY works on them), None as "",
booleans as "0"/"1", models comma-joined. Every check-and-change is one Lua script, so it is atomic
across processes.

Every failure below this boundary (redis-py errors, OSError, timeouts) leaves as `StoreError` with the
cause chained; messages name the server by a redacted address, never by the URL, which may hold a
password, and any spelling of that password is scrubbed from the cause's text.
The client does not retry commands by itself: a write whose reply was lost (e.g. a socket timeout after
HINCRBY ran) must not run twice. Stale pooled connections are still replaced on checkout, so a Redis
restart costs no failed request once the server is back. The pool blocks (up to `POOL_WAIT_S`) rather
than failing when a burst of requests wants more than `MAX_CONNECTIONS` connections at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast  # casts: decode_responses=True makes every reply str
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.store.base import KeyRecord, StoreError
from gateway.store.memory import validate_amount, validate_models

CONNECT_TIMEOUT_S = 3.0
SOCKET_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 15
MAX_CONNECTIONS = 64  # per process; a burst beyond it waits up to POOL_WAIT_S for a free connection
POOL_WAIT_S = 5.0

# KEYS: key hash, hash index, keys zset. ARGV: id, created, then field/value pairs for HSET.
_CREATE_KEY = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX') == false then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""

# KEYS: key hash. ARGV: amount. Nil when the key is missing, so a topup never creates a stub hash.
_TOPUP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
return redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
"""

# KEYS: key hash. ARGV: "0" or "1". 0 when the key is missing.
_SET_DISABLED = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'disabled', ARGV[1])
return 1
"""

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def redacted_address(url: str) -> str:
    """The URL without credentials, query or fragment ("redis://127.0.0.1:6379/0"), fit for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "redis (unparsable url)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def url_secrets(url: str) -> tuple[str, ...]:
    """Every spelling of the URL's password (userinfo or ``?password=``, raw and percent-decoded)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return ()
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) == "password":
            found.append(value)
    spellings = {s for raw in found for s in (raw, unquote(raw)) if s}
    return tuple(sorted(spellings, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret replaced by "***" (longest first, so no fragment of one survives)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class RedisStore:
    """The `Store` contract over `redis.asyncio`; one client (with its connection pool) per store."""

    def __init__(self, url: str, prefix: str = "gw:") -> None:
        self._address = redacted_address(url)
        self._secrets = url_secrets(url)
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
        self._topup = self._redis.register_script(_TOPUP)
        self._set_disabled = self._redis.register_script(_SET_DISABLED)

    def _key(self, key_id: str) -> str:
        return f"{self._prefix}key:{key_id}"

    def _hash_index(self, key_hash: str) -> str:
        return f"{self._prefix}keyhash:{key_hash}"

    @property
    def _zset(self) -> str:
        return f"{self._prefix}keys"

    @asynccontextmanager
    async def _boundary(self, op: str) -> AsyncIterator[None]:
        """Turn any lower-layer failure of `op` into StoreError, its message scrubbed of the password.

        redis-py's own messages name host and port only, but scrubbing costs nothing and keeps the rule
        ("secrets never appear in logs or error bodies") from resting on another library's habits.
        """
        try:
            yield
        except _ERRORS as exc:
            detail = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            raise StoreError(f"redis {op} failed at {self._address}: {detail}") from exc

    async def ping(self) -> None:
        async with self._boundary("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        async with self._boundary("close"):
            await self._redis.aclose()

    async def create_key(self, record: KeyRecord) -> None:
        """Store a new key in one script; ValueError if its id or hash already exists."""
        validate_models(record.models)
        fields = _encode(record)
        argv: list[Any] = [record.id, record.created]
        for name, value in fields.items():
            argv += [name, value]
        keys = [self._key(record.id), self._hash_index(record.key_hash), self._zset]
        async with self._boundary("create_key"):
            result = await self._create_key(keys=keys, args=argv)
        if result == 0:
            raise ValueError(f"key id {record.id} already exists")
        if result == -1:
            raise ValueError("a key with this hash already exists")

    async def get_key_by_hash(self, key_hash: str) -> KeyRecord | None:
        async with self._boundary("get_key_by_hash"):
            key_id = cast("str | None", await self._redis.get(self._hash_index(key_hash)))
        return None if key_id is None else await self.get_key(key_id)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        async with self._boundary("get_key"):
            fields = cast("dict[str, str]", await self._redis.hgetall(self._key(key_id)))
        return _decode(fields, self._address) if fields else None

    async def list_keys(self) -> list[KeyRecord]:
        """All keys, oldest first: ids from the zset, then every hash in one pipelined round trip."""
        async with self._boundary("list_keys"):
            ids = cast("list[str]", await self._redis.zrange(self._zset, 0, -1))
            async with self._redis.pipeline(transaction=False) as pipe:
                for key_id in ids:
                    pipe.hgetall(self._key(key_id))
                rows = await pipe.execute()
        return [_decode(fields, self._address) for fields in rows if fields]

    async def set_disabled(self, key_id: str, disabled: bool) -> bool:
        async with self._boundary("set_disabled"):
            result = await self._set_disabled(keys=[self._key(key_id)], args=["1" if disabled else "0"])
        return bool(result)

    async def topup(self, key_id: str, amount: int) -> int | None:
        """Add `amount` nano-dollars in one script; None (and nothing written) when the key is missing."""
        validate_amount(amount)
        async with self._boundary("topup"):
            result = await self._topup(keys=[self._key(key_id)], args=[amount])
        return None if result is None else int(result)


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
        "rpm": "" if record.rpm is None else str(record.rpm),
        "rpd": "" if record.rpd is None else str(record.rpd),
        "models": ",".join(record.models),
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
            rpm=_opt_int(fields.get("rpm", "")),
            rpd=_opt_int(fields.get("rpd", "")),
            models=tuple(m for m in fields.get("models", "").split(",") if m),
        )
    except (KeyError, ValueError) as exc:
        raise StoreError(f"malformed key record in redis at {address}: {exc!r}") from exc


def _opt_int(value: str) -> int | None:
    return None if value == "" else int(value)
