"""Key operations shared by the command line and the admin API: one implementation behind both."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway import keys
from gateway.config import NANO
from gateway.store import KeyRecord, Store
from gateway.store.memory import MAX_AMOUNT

MAX_USD = Decimal(MAX_AMOUNT) / NANO  # ~9 million: what the store's Lua scripts count exactly in nano-dollars
CAPS = ("max_streams", "max_tokens", "max_body_bytes")  # per-key caps, same names in CLI, admin API, records
_LINE_BREAKING = frozenset({"Cc", "Zl", "Zp"})  # C0/C1 controls (\n, \r, \t, ESC, NEL), U+2028, U+2029


class KeyNotFound(LookupError):
    """No key with that id."""


def usd_to_nano(value: Any) -> int:
    """A dollar amount (number or string) -> nano-dollars, exactly; ValueError when it is not one."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"not an amount in USD: {value!r}") from None
    if not amount.is_finite() or isinstance(value, bool):
        raise ValueError(f"not an amount in USD: {value!r}")
    if abs(amount) > MAX_USD:  # beyond this Lua's doubles would no longer count nano-dollars exactly
        raise ValueError(f"amount out of range: at most {MAX_USD} USD either way")
    return int(amount * NANO)


def check_name(name: str) -> str:
    """A key's name, stripped; ValueError when it is blank or holds a control character. `keys list` prints
    one key a line: a line break in a name would print a line of its own (a forged key, or something that
    reads as a log line) and an escape sequence would rewrite the operator's terminal."""
    name = name.strip()
    if not name:
        raise ValueError("must not be blank")
    bad = next((c for c in name if unicodedata.category(c) in _LINE_BREAKING), None)
    if bad is not None:  # only the character, never the rest of the name, goes back into the message
        raise ValueError(f"must not contain a control character ({bad!a})")
    return name


def usd(nano: int) -> str:
    """Nano-dollars as an exact decimal number of dollars: "1.25", "0.000000001" (never str(Decimal)'s
    scientific "1E-9", which it writes for anything under a micro-dollar)."""
    return format(Decimal(nano) / NANO, "f")


def dollars(nano: int) -> str:
    """Nano-dollars as operators read them: "$1.25", "-$0.000000001"."""
    return f"-${usd(-nano)}" if nano < 0 else f"${usd(nano)}"


def key_json(record: KeyRecord) -> dict[str, Any]:
    """A key as shown to operators: never the key, only its prefix."""
    return {"id": record.id, "name": record.name, "prefix": record.prefix,
            "balance": float(Decimal(record.balance) / NANO), "credits": float(Decimal(record.credits) / NANO),
            "usage": float(Decimal(record.usage) / NANO), "disabled": record.disabled, "rpm": record.rpm,
            "rpd": record.rpd, "models": list(record.models), "created": record.created,
            **{cap: getattr(record, cap) for cap in CAPS}}


async def create(store: Store, name: str, balance: int, rpm: int | None = None, rpd: int | None = None,
                 models: Sequence[str] = (), **caps: int | None) -> tuple[str, KeyRecord]:
    """A new key: the plaintext (shown once) and its stored record; `caps` as named in CAPS."""
    unknown = set(caps) - set(CAPS)
    if unknown:
        raise TypeError(f"unknown caps: {sorted(unknown)}")
    plain, record = keys.new_record(check_name(name), balance, rpm, rpd, tuple(models), **caps)
    await store.create_key(record)
    return plain, await store.get_key(record.id) or record


async def topup(store: Store, key_id: str, amount: int) -> int:
    """Add `amount` (negative: deduct); ValueError in dollars when a deduction would go below zero, or a
    grant past the most a key can hold (its credits exact in the store's arithmetic)."""
    try:
        balance = await store.topup(key_id, amount)
    except ValueError:  # the store's message counts nano-dollars; an operator thinks in dollars
        record = await store.get_key(key_id)
        have = f" (balance {dollars(record.balance)})" if record is not None else ""
        if amount > 0:
            raise ValueError(f"a top-up of {dollars(amount)} would take key {key_id} past the most a key can "
                             f"hold, {dollars(MAX_AMOUNT)} ever granted{have}") from None
        raise ValueError(f"a deduction of {dollars(-amount)} would leave key {key_id} below zero{have}") from None
    if balance is None:
        raise KeyNotFound(key_id)
    return balance


async def disable(store: Store, key_id: str) -> None:
    if not await store.set_disabled(key_id, True):
        raise KeyNotFound(key_id)


async def listing(store: Store) -> list[dict[str, Any]]:
    return [key_json(r) for r in await store.list_keys()]
