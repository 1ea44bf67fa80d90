"""Bearer key -> key record.

A malformed key (wrong prefix, length or checksum) is refused before any store lookup, so scanners and
typos cost nothing. Keys are looked up by their SHA-256 and compared in constant time; the key itself is
never stored, logged or echoed.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from aiohttp import web

from gateway import keys
from gateway.errors import Forbidden, Unauthorized, Unavailable
from gateway.store import KeyRecord, Store, StoreError

_INVALID = ("Incorrect API key provided. Use a gateway key (gw-...) issued by this gateway's operator.")


def presented_key(request: web.Request) -> str:
    """The key a client sent: `Authorization: Bearer`, or `x-api-key` as the Anthropic SDK sends it."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip()


async def authenticate(request: web.Request, store: Store) -> KeyRecord:
    token = presented_key(request)
    if not token:
        raise Unauthorized("You didn't provide an API key. Send 'Authorization: Bearer <gateway key>'.")
    if not keys.is_well_formed(token):
        raise Unauthorized(_INVALID)
    digest = keys.hash_key(token)
    try:
        record = await store.get_key_by_hash(digest)
    except StoreError as exc:
        raise Unavailable("The gateway's key store is unavailable; retry shortly.",
                          code="store_unavailable") from exc
    if record is None or not keys.hashes_match(record.key_hash, digest):
        raise Unauthorized(_INVALID)
    if record.disabled:
        raise Forbidden("This API key has been disabled by the gateway's operator.", code="key_disabled")
    return record


def model_allowed(record: KeyRecord, model_id: str) -> bool:
    return not record.models or any(fnmatchcase(model_id, pattern) for pattern in record.models)
