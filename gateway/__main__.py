"""Command line: serve, check-config, keys.

    python -m gateway serve        --config FILE [--host H] [--port P] [--workers N]
    python -m gateway check-config FILE
    python -m gateway keys create  --config FILE --name NAME --balance USD [--rpm N] [--rpd N]
                                   [--models GLOB,...] [--max-streams N] [--max-tokens N]
                                   [--max-body-bytes N] [--json]
    python -m gateway keys topup   --config FILE KEY_ID USD
    python -m gateway keys list    --config FILE [--json]
    python -m gateway keys disable --config FILE KEY_ID
    python -m gateway usage export --config FILE [--since ISO] [--until ISO] [--format jsonl|csv]

Exit status: 0 done; 1 the store failed (unreachable, an error) or `serve` cannot listen; 2 bad input —
a bad argument, an invalid config, an unknown key id, a deduction below zero — said in one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn

import orjson

from gateway import config as config_mod
from gateway import config_load, keyops
from gateway.config import NANO, Config
from gateway.logging import configure as configure_logging
from gateway.store import Store, StoreError, open_store
from gateway.store.memory import MAX_AMOUNT

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Parser(argparse.ArgumentParser):
    """Bad usage is one line on stderr and exit status 2, as for every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _usd(text: str) -> int:
    """A dollar amount from the command line -> nano-dollars, exactly (negative: a deduction)."""
    try:
        return keyops.usd_to_nano(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _balance(text: str) -> int:
    """A new key's balance: dollars, not below zero."""
    nano = _usd(text)
    if nano < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return nano


def _name(text: str) -> str:
    """A key's name: not blank, no control character (`keys list` prints one key a line)."""
    try:
        return keyops.check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    """A whole number >= 1 (a limit or cap of 0 would refuse everything: leave it out instead)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {value}")
    if value > MAX_AMOUNT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_AMOUNT}, not {value}")
    return value


def _globs(text: str) -> tuple[str, ...]:
    """--models: comma-separated globs. One that names none would restrict nothing: every model allowed."""
    globs = tuple(m.strip() for m in text.split(",") if m.strip())
    if not globs:
        raise argparse.ArgumentTypeError(f"no model glob in {text!r} (leave --models out to allow every model)")
    return globs


def _moment_ms(text: str) -> int:
    """An ISO date or date-time (UTC unless it says otherwise) -> unix milliseconds."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date/time (e.g. 2026-01-31 or 2026-01-31T12:00Z): "
                                         f"{text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # whole milliseconds counted exactly: timestamp() * 1000 is a float that falls a millisecond short of
    # some moments (from 2038 on), moving a --since or --until edge past an entry stamped at it
    return (moment - EPOCH) // timedelta(milliseconds=1)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1-65535, not {value}")
    return value


def _bad_input(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def _load(path: str) -> Config:
    try:
        return config_load.load(path)
    except config_mod.ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    print(f"{args.file}: ok ({len(config.providers)} providers, {len(config.models)} models, "
          f"{len(config.egress.pools)} egress pools)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.worker:
        from gateway.supervisor import follow_supervisor

        if not follow_supervisor():  # it died while this worker started: nobody would stop or restart it
            return 0
    # a worker starts on the config its supervisor has in force; it reloads from the file, as its siblings do
    start = os.environ.get("GATEWAY_CONFIG_IN_FORCE") if args.worker else None
    config = _load(start or args.config)
    started = os.environ.get("GATEWAY_CONFIG_AT_START") if args.worker else None
    if started:  # what only a restart changes stays as the siblings started (a reload kept it for them)
        config = config_mod.with_restart_settings(config, _load(started))
    if args.workers > 1:
        from gateway.supervisor import supervise

        return supervise(config, args.config, args.host, args.port, args.workers)
    from gateway.server import serve  # aiohttp app imports only when serving

    try:
        return serve(config, args.config, host=args.host, port=args.port, worker=args.worker)
    finally:
        if args.worker:
            from gateway.supervisor import leave_no_orphaned_state

            leave_no_orphaned_state()


async def _with_store(config: Config, action: Callable[[Store], Awaitable[int]]) -> int:
    if not config.store.url:
        print("store.url is empty, so keys and usage live inside the serving process's memory store and "
              "cannot be reached from here.\nSet REDIS_URL (store.url) to manage them from the command line; "
              "a memory-store gateway prints a starter key when it starts.", file=sys.stderr)
        return 2
    store = open_store(config.store.url, config.store.prefix)
    try:
        return await action(store)
    except StoreError as exc:
        print(f"store error: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def cmd_keys(args: argparse.Namespace) -> int:
    config = _load(args.config)

    async def create(store: Store) -> int:
        caps = {cap: getattr(args, cap) for cap in keyops.CAPS}
        plain, record = await keyops.create(store, args.name, args.balance, args.rpm, args.rpd, args.models or (),
                                            **caps)
        if args.json:
            print(orjson.dumps({**keyops.key_json(record), "key": plain}).decode())
        else:
            print(f"created key {record.id} ({record.name}), balance {keyops.dollars(record.balance)}\n"
                  f"{plain}\nThis key is shown once; store it now.")
        return 0

    async def topup(store: Store) -> int:
        try:
            balance = await keyops.topup(store, args.key_id, args.amount)
        except keyops.KeyNotFound:
            return _bad_input(f"no key {args.key_id!r} (see `keys list`)")
        except ValueError as exc:
            return _bad_input(f"refused: {exc}")
        print(f"{args.key_id}: balance {keyops.dollars(balance)}")
        return 0

    async def listing(store: Store) -> int:
        if args.json:
            print(orjson.dumps(await keyops.listing(store)).decode())
            return 0
        for r in await store.list_keys():  # the balance exact, as `create` and `topup` print it (not via a float)
            state = "disabled" if r.disabled else "active"
            print(f"{r.id}  {r.prefix}…  {state:8}  ${Decimal(r.balance) / NANO:>14.9f}  {r.name}")
        return 0

    async def disable(store: Store) -> int:
        try:
            await keyops.disable(store, args.key_id)
        except keyops.KeyNotFound:
            return _bad_input(f"no key {args.key_id!r} (see `keys list`)")
        print(f"{args.key_id}: disabled")
        return 0

    actions = {"create": create, "topup": topup, "list": listing, "disable": disable}
    return asyncio.run(_with_store(config, actions[args.keys_cmd]))


USAGE_COLUMNS = ("ts", "generation_id", "key_id", "model", "provider_name", "cost_usd", "charged_nano",
                 "tokens_prompt", "tokens_completion", "streamed", "cancelled", "is_byok", "estimated", "status",
                 "endpoint", "images", "shortfall_nano", "service_tier")


def _usage_row(entry: dict[str, str]) -> dict[str, Any]:
    charged = int(entry.get("charged", "0"))
    ts_ms = int(entry.get("ts_ms", "0"))
    return {**entry, "ts": datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds"),
            "cost_usd": keyops.usd(charged), "charged_nano": charged,
            "shortfall_nano": int(entry.get("shortfall", "0"))}


def cmd_usage_export(args: argparse.Namespace) -> int:
    """Every settled charge from the store's audit streams, as JSON lines or CSV on stdout."""
    config = _load(args.config)
    since, until = args.since or 0, args.until
    if until is not None and until <= since:
        return _bad_input("--until must be later than --since")

    async def export(store: Store) -> int:
        writer = csv.DictWriter(sys.stdout, USAGE_COLUMNS, extrasaction="ignore") if args.format == "csv" else None
        if writer is not None:
            writer.writeheader()
        async for entry in store.iter_usage(since):
            if until is not None and int(entry.get("ts_ms", "0")) >= until:
                continue  # each key's stream is in time order, but keys follow one another
            row = _usage_row(entry)
            if writer is not None:
                writer.writerow(row)
            else:
                sys.stdout.write(orjson.dumps(row).decode() + "\n")
        return 0

    return asyncio.run(_with_store(config, export))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m gateway", description="LLM edge gateway")
    sub = parser.add_subparsers(dest="cmd", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host")
    serve.add_argument("--port", type=_port)
    serve.add_argument("--workers", type=_positive, default=1)
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # started by the supervisor
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    keys_p = sub.add_parser("keys", help="manage gateway keys")
    ksub = keys_p.add_subparsers(dest="keys_cmd", required=True)
    create = ksub.add_parser("create")
    create.add_argument("--name", type=_name, required=True)
    create.add_argument("--balance", type=_balance, required=True, help="USD")
    create.add_argument("--rpm", type=_positive, help="requests per minute, per model")
    create.add_argument("--rpd", type=_positive, help="requests per day, per model")
    create.add_argument("--models", type=_globs, help="comma-separated globs of allowed model ids")
    create.add_argument("--max-streams", type=_positive, help="concurrent streamed requests of this key")
    create.add_argument("--max-tokens", type=_positive, help="output tokens one request may ask for")
    create.add_argument("--max-body-bytes", type=_positive, help="largest request body of this key")
    create.add_argument("--json", action="store_true")
    topup = ksub.add_parser("topup")
    topup.add_argument("key_id")
    topup.add_argument("amount", type=_usd, help="USD (negative to deduct)")
    listing = ksub.add_parser("list")
    listing.add_argument("--json", action="store_true")
    disable = ksub.add_parser("disable")
    disable.add_argument("key_id")
    for p in (create, topup, listing, disable):
        p.add_argument("--config", required=True)
        p.set_defaults(func=cmd_keys)

    usage_p = sub.add_parser("usage", help="usage records")
    usub = usage_p.add_subparsers(dest="usage_cmd", required=True)
    export = usub.add_parser("export", help="every settled charge, from the audit streams")
    export.add_argument("--config", required=True)
    export.add_argument("--since", type=_moment_ms, help="ISO date/time (UTC unless it says otherwise)")
    export.add_argument("--until", type=_moment_ms, help="ISO date/time, exclusive (UTC unless it says otherwise)")
    export.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    export.set_defaults(func=cmd_usage_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    if args.cmd != "serve":  # `keys list | head` may exit quietly; a server must never die of a reset client
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
