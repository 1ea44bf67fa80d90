"""Gateway key format: what `generate` makes, `is_well_formed` accepts it, and nothing near it."""

from __future__ import annotations

import hashlib
import re
import zlib

import pytest

from gateway import keys

KEY_RE = re.compile(r"gw-[0-9A-Za-z]{38}")


def swap_char(key: str, index: int) -> str:
    """The key with one character replaced by a different alphabet character (a typo)."""
    replacement = "a" if key[index] != "a" else "b"
    return key[:index] + replacement + key[index + 1 :]


def test_generated_key_round_trips() -> None:
    key = keys.generate()
    assert KEY_RE.fullmatch(key)
    assert len(key) == keys.KEY_LEN == 41
    assert keys.is_well_formed(key)


def test_generated_keys_differ() -> None:
    generated = {keys.generate() for _ in range(100)}
    assert len(generated) == 100


@pytest.mark.parametrize(
    "index",
    [
        pytest.param(3, id="first-random"),
        pytest.param(17, id="middle-random"),
        pytest.param(34, id="last-random"),
        pytest.param(35, id="first-checksum"),
        pytest.param(40, id="last-checksum"),
    ],
)
def test_single_character_typo_is_refused(index: int) -> None:
    for _ in range(50):  # many keys, so a lucky checksum cannot hide a weak one
        key = keys.generate()
        assert not keys.is_well_formed(swap_char(key, index))


def test_adjacent_transposition_is_refused() -> None:
    key = keys.generate()
    i = next(i for i in range(3, 34) if key[i] != key[i + 1])
    assert not keys.is_well_formed(key[:i] + key[i + 1] + key[i] + key[i + 2 :])


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda k: "sk-" + k[3:], id="wrong-prefix"),
        pytest.param(lambda k: "GW-" + k[3:], id="uppercase-prefix"),
        pytest.param(lambda k: k[:-1], id="too-short"),
        pytest.param(lambda k: k + "0", id="too-long"),
        pytest.param(lambda k: k[:10] + "-" + k[11:], id="dash-in-body"),
        pytest.param(lambda k: k[:10] + "é" + k[11:], id="non-ascii"),
        pytest.param(lambda k: k[:10] + " " + k[11:], id="space"),
        pytest.param(lambda k: " " + k[:-1], id="leading-space"),
        pytest.param(lambda k: "", id="empty"),
    ],
)
def test_malformed_key_is_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    assert not keys.is_well_formed(mangle(keys.generate()))


def test_non_string_is_refused() -> None:
    assert not keys.is_well_formed(None)  # type: ignore[arg-type]
    assert not keys.is_well_formed(b"gw-" + b"0" * 38)  # type: ignore[arg-type]


def test_checksum_is_padded_base62_crc32() -> None:
    random_part = "0" * 32
    key = "gw-" + random_part + keys._base62(zlib.crc32(random_part.encode()), 6)
    assert keys.is_well_formed(key)
    assert keys._base62(0, 6) == "000000"
    assert keys._base62(61, 6) == "00000z"
    assert keys._base62(62, 6) == "000010"
    assert keys._base62(2**32 - 1, 6) == "4gfFC3"


def test_hash_is_sha256_hex() -> None:
    key = keys.generate()
    assert keys.hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", keys.hash_key(key))


def test_hashes_match() -> None:
    a, b = keys.hash_key(keys.generate()), keys.hash_key(keys.generate())
    assert keys.hashes_match(a, a)
    assert not keys.hashes_match(a, b)
    assert not keys.hashes_match(a, a[:-1])


def test_visible_prefix() -> None:
    key = keys.generate()
    assert keys.visible_prefix(key) == key[:8]
    assert len(keys.visible_prefix(key)) == 8 and keys.visible_prefix(key).startswith("gw-")


def test_new_key_id() -> None:
    assert re.fullmatch(r"key_[0-9a-f]{12}", keys.new_key_id())
    assert keys.new_key_id() != keys.new_key_id()


def test_new_record_matches_its_key() -> None:
    key, record = keys.new_record("bob", 7_000_000_000, rpm=10, rpd=None, models=["openai/*"])
    assert keys.is_well_formed(key)
    assert record.key_hash == keys.hash_key(key)
    assert record.prefix == keys.visible_prefix(key)
    assert key not in repr(record)  # the plaintext is not stored anywhere in the record
    assert (record.name, record.balance, record.rpm, record.rpd) == ("bob", 7_000_000_000, 10, None)
    assert record.models == ("openai/*",) and not record.disabled and record.created > 1_700_000_000
