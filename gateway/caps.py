"""Per-key caps an operator sets on a key (`keys create --max-streams/--max-tokens/--max-body-bytes`).

They narrow what the gateway-wide settings allow, for one key: a reseller's small customer gets a smaller
body limit, a ceiling on the output tokens of one request, and a number of streams it may hold open at
once. The stream count lives in the store, so it holds across gateway processes; a process that dies with
streams open cannot leak slots for longer than the TTL the caller gives (the hold TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from gateway.errors import InvalidRequest, RateLimited
from gateway.logging import get_logger
from gateway.metering import store_unavailable
from gateway.store import Store, StoreError
from gateway.store.base import KeyRecord

log = get_logger("gateway.caps")


def body_limit(server_limit: int, key: KeyRecord) -> int:
    """The largest body this key may send."""
    return min(server_limit, key.max_body_bytes) if key.max_body_bytes else server_limit


def apply_max_tokens(body: dict[str, Any], key: KeyRecord, model_max: int | None, fill: bool = True) -> None:
    """Refuse an ask above the key's ceiling; with `fill` (endpoints whose body takes `max_tokens`), give a
    request that asks nothing the ceiling, so the upstream and the hold are bounded by it."""
    cap = key.max_tokens
    if not cap:
        return
    asked = [name for name in ("max_completion_tokens", "max_tokens") if isinstance(body.get(name), int)]
    for name in asked:
        if body[name] > cap:
            raise InvalidRequest(f"'{name}' is too large: {body[name]}. This key may ask for at most {cap} "
                                 "output tokens per request.", param=name, code="invalid_value")
    if fill and not asked:
        body["max_tokens"] = min(cap, model_max) if model_max else cap


def stream_slot(store: Store, key: KeyRecord, streamed: bool,
                ttl_s: int) -> contextlib.AbstractAsyncContextManager[None]:
    """Hold one of the key's stream slots while the body runs; 429 when all are taken."""
    if not streamed or not key.max_streams:
        return _NO_SLOT
    return _stream_slot(store, key, key.max_streams, ttl_s)


_NO_SLOT: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()


@contextlib.asynccontextmanager
async def _stream_slot(store: Store, key: KeyRecord, cap: int, ttl_s: int) -> AsyncIterator[None]:
    stream_id = uuid.uuid4().hex
    try:
        opened = await store.open_stream(key.id, stream_id, cap, ttl_s)
    except StoreError as exc:
        raise store_unavailable(exc) from exc
    if not opened:
        raise RateLimited(f"This key may have at most {cap} streams open at once; wait for one to finish.",
                          code="too_many_streams")
    try:
        yield
    finally:
        await asyncio.shield(_close(store, key.id, stream_id))


async def _close(store: Store, key_id: str, stream_id: str) -> None:
    try:
        await store.close_stream(key_id, stream_id)
    except StoreError:
        log.warning("stream slot not released; it frees itself at its TTL", key_id=key_id)
