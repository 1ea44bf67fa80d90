"""Gateway keys: their format, their stored form, and a fresh record for `keys create`.

A key is ``gw-`` + 32 random base62 characters + a 6-character base62 checksum::

    gw-4mB0qZ...(32)...Xy  00a1Zc
    └┬┘└──── random ─────┘ └checksum┘

The checksum is CRC32 of the random part, so a mistyped, truncated or scanned-for string is refused by
`is_well_formed` without a store round trip (CRC32 catches every single-character change). It is not a
secret and adds no entropy; the 32 random characters carry ~190 bits.

Only `hash_key(key)` is ever stored; the plaintext is shown once, when the key is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
import zlib
from collections.abc import Iterable

from gateway.store.base import KeyRecord

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
PREFIX = "gw-"
RANDOM_LEN = 32
CHECKSUM_LEN = 6  # 62**6 > 2**32, so any CRC32 fits
KEY_LEN = len(PREFIX) + RANDOM_LEN + CHECKSUM_LEN
VISIBLE_PREFIX_LEN = 8

_ALPHABET_SET = frozenset(ALPHABET)


def _base62(n: int, width: int) -> str:
    """Encode a non-negative int in base62, left-padded with '0' to `width` characters."""
    digits = []
    while n:
        n, rem = divmod(n, 62)
        digits.append(ALPHABET[rem])
    return "".join(reversed(digits)).rjust(width, ALPHABET[0])


def _checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode("ascii")), CHECKSUM_LEN)


def generate() -> str:
    """Return a new plaintext key; `secrets` because the key is the whole credential."""
    random_part = "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_LEN))
    return PREFIX + random_part + _checksum(random_part)


def is_well_formed(key: str) -> bool:
    """True when `key` has our prefix, length, alphabet and a matching checksum.

    Auth calls this first, so garbage (an OpenAI key pasted by mistake, a typo, a scanner's guess) is
    refused cheaply and never reaches the store.
    """
    if not isinstance(key, str) or len(key) != KEY_LEN or not key.startswith(PREFIX):
        return False
    body = key[len(PREFIX) :]
    if not _ALPHABET_SET.issuperset(body):
        return False
    random_part, checksum = body[:RANDOM_LEN], body[RANDOM_LEN:]
    return _checksum(random_part) == checksum


def hash_key(key: str) -> str:
    """SHA-256 hex digest of the key: the only form a key is stored or looked up in.

    A plain fast hash is enough here, unlike for passwords: the key has ~190 bits of randomness, so a
    leaked hash cannot be brute-forced, and a slow KDF would only add latency to every request. A
    presented key with header bytes that are not UTF-8 (lone surrogates) hashes as the bytes it came as.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def hashes_match(a: str, b: str) -> bool:
    """Compare two hex digests in constant time, so timing reveals nothing about a stored hash."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def visible_prefix(key: str) -> str:
    """The first characters of a key ("gw-AbC1x"), safe to list so a user can tell their keys apart."""
    return key[:VISIBLE_PREFIX_LEN]


def new_key_id() -> str:
    """A public key id ("key_3f9a0c1d2e4b"): names a key in admin commands without revealing it."""
    return "key_" + secrets.token_hex(6)


def new_record(
    name: str,
    balance_nano: int,
    rpm: int | None = None,
    rpd: int | None = None,
    models: Iterable[str] = (),
    **caps: int | None,
) -> tuple[str, KeyRecord]:
    """Make a new key; return its plaintext (to show once, never store) and the record to store.

    `caps`: the record's per-key caps (max_streams, max_tokens, max_body_bytes).
    """
    key = generate()
    record = KeyRecord(
        id=new_key_id(),
        name=name,
        key_hash=hash_key(key),
        prefix=visible_prefix(key),
        created=int(time.time()),
        balance=balance_nano,
        rpm=rpm,
        rpd=rpd,
        models=tuple(models),
        **caps,  # type: ignore[arg-type]
    )
    return key, record
