"""Running one gateway process: uvloop, the listener, SIGHUP reload, readiness, graceful shutdown.

Readiness (systemd READY=1, or a worker's ready file for its supervisor) is announced once the store has
answered and every egress pool was probed once. On SIGTERM aiohttp stops accepting, lets requests in
flight (streams included) finish for `server.shutdown_grace_s`, then the cleanup context drains pending
settlements and closes the store: a stream that finished within the grace period is billed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import uvloop
from aiohttp import web

from egress import health as egress_health
from gateway import edge, keys, metrics, systemd
from gateway.app import add_admin_routes, create_app, reload_config
from gateway.config import Config, to_nano
from gateway.handlers import health
from gateway.logging import configure, get_logger, sink
from gateway.middleware import add_response_headers, request_context, require_admin
from gateway.state import RUNTIME, SIDE
from gateway.store import StoreError

log = get_logger("gateway.server")
READY_TASK = web.AppKey("ready_task", asyncio.Task[None])
LOG_BATCH_S = 0.05  # info lines (one per request) reach the journal at most this late, many per write
SIDE_RUNNERS = web.AppKey("side_runners", list)


async def _starter_key(app: web.Application) -> None:
    """A memory store starts empty and no CLI can reach it: hand the operator one key to begin with.

    Printed to the terminal once, never logged.
    """
    runtime = app[RUNTIME]
    config = runtime.snapshot.config
    if config.store.url or await runtime.store.list_keys():
        return
    plain, record = keys.new_record("starter", to_nano(config.store.starter_key_balance))
    await runtime.store.create_key(record)
    print(f"\nMemory store: created starter key {record.id} with ${config.store.starter_key_balance}:\n"
          f"  {plain}\nTry: curl http://{config.server.host}:{config.server.port}/v1/models "
          f"-H 'Authorization: Bearer {plain}'\n", file=sys.stderr, flush=True)


async def _reload(app: web.Application, talk_to_systemd: bool) -> None:
    if talk_to_systemd:
        systemd.reloading()
    await reload_config(app)
    if talk_to_systemd:
        systemd.notify("READY=1")


async def _announce_ready(app: web.Application, talk_to_systemd: bool, ready_file: str | None,
                          listening: asyncio.Event | None) -> None:
    """READY once the main listener is bound, the store answered (retrying while it does not) and the
    pools were probed once.

    `listening` is set when aiohttp has bound the main listener, after on_startup (where this task begins):
    with an instant store and no pools READY=1 could otherwise reach systemd first. It is awaited before
    the store: when startup fails, this task is cancelled at a wait that ends, not in the middle of a ping
    (redis-py on Python 3.11 could lose such a cancellation; `store.redis` now hands it back).

    The first answer also sets gateway_store_up, so a worker that no request has reached yet reports
    the truth (not the gauge's initial 0) from its first scrape.
    """
    if listening is not None:
        await listening.wait()
    runtime = app[RUNTIME]
    while True:
        try:
            await runtime.store.ping()
            break
        except StoreError as exc:  # its message names the server by a redacted address, password scrubbed
            metrics.store_up(False)
            log.warning("store not answering yet; not ready", reason=str(exc))
            await asyncio.sleep(1)
    metrics.store_up(True)
    await egress_health.check_all_once(runtime.egress)
    if ready_file:
        Path(ready_file).touch()
    if talk_to_systemd:
        systemd.notify("READY=1", f"MAINPID={os.getpid()}")
    log.info("ready")


def _startup(talk_to_systemd: bool, ready_file: str | None,
             listening: asyncio.Event | None = None) -> Callable[[web.Application], Awaitable[None]]:
    async def on_startup(app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload(app, talk_to_systemd)))
        await _starter_key(app)
        config = app[RUNTIME].snapshot.config
        log.info("gateway started", host=config.server.host, port=config.server.port, pid=os.getpid(),
                 store="redis" if config.store.url else "memory", models=len(config.models))
        app[READY_TASK] = asyncio.create_task(_announce_ready(app, talk_to_systemd, ready_file, listening))
        app[SIDE_RUNNERS] = [await _side_listener(app, address, what)
                             for address, what in _side_addresses(config).items()]
        _freeze_startup_objects()
    return on_startup


def _freeze_startup_objects() -> None:
    """Keep what startup built (modules, config, catalog: ~70,000 objects) out of the garbage collector's
    full passes, each of which otherwise stalls every request in flight for ~25 ms."""
    gc.collect()
    gc.freeze()


def _side_addresses(config: Config) -> dict[str, frozenset[str]]:
    """What each side listener serves; /metrics and /admin/* may share one address."""
    moved: dict[str, set[str]] = {}
    for what, address in (("metrics", config.server.metrics_listen), ("admin", config.server.admin_listen)):
        if address:
            moved.setdefault(address, set()).add(what)
    return {address: frozenset(what) for address, what in moved.items()}


async def _side_listener(app: web.Application, listen: str, what: frozenset[str]) -> web.AppRunner:
    """/metrics or /admin/* on an address of their own, as operators keep them off the public listener."""
    side = web.Application(middlewares=[request_context, require_admin], handler_args=edge.handler_args())
    side[RUNTIME] = app[RUNTIME]
    side[SIDE] = what
    side.on_response_prepare.append(add_response_headers)  # X-Request-Id, as on the main listener
    if "metrics" in what:
        side.router.add_get("/metrics", health.metrics)
    if "admin" in what:
        add_admin_routes(side.router)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    try:
        await web.TCPSite(runner, host, int(port), reuse_port=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(host, int(port), exc) from exc
    return runner


class ListenError(Exception):
    """An address the gateway was told to listen on cannot be bound (taken, not ours, not a name)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {listen_reason(cause)}")


def listen_reason(exc: OSError) -> str:
    """The kernel's or resolver's own words ("Address already in use"), without asyncio's wrapping."""
    if isinstance(exc, socket.gaierror):
        return exc.strerror or str(exc)
    return os.strerror(exc.errno) if exc.errno else str(exc)


async def _batched_log(_app: web.Application) -> AsyncIterator[None]:
    """While serving, info lines leave in batches (`gateway.logging.Sink`); all of them before exit."""
    sink.batch(asyncio.get_running_loop(), LOG_BATCH_S)
    yield
    sink.unbatch()


async def _on_shutdown(app: web.Application) -> None:
    app[READY_TASK].cancel()
    for runner in app.get(SIDE_RUNNERS, ()):
        await runner.cleanup()
    log.info("shutting down: no new connections; requests in flight may finish",
             grace_s=app[RUNTIME].snapshot.config.server.shutdown_grace_s)


def serve(config: Config, config_path: str, host: str | None = None, port: int | None = None,
          worker: bool = False) -> int:
    """One process. As a supervisor's worker it shares the port (SO_REUSEPORT) and leaves systemd to
    the supervisor, signalling readiness through a file in $GATEWAY_READY_DIR instead."""
    configure(config.server.log_level)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    app = create_app(config, config_path, server_overrides=overrides)
    ready_dir = os.environ.get("GATEWAY_READY_DIR") if worker else None
    app.cleanup_ctx.insert(0, _batched_log)  # cleaned up last: the other contexts' last lines are flushed too
    listening = asyncio.Event()
    app.on_startup.append(_startup(not worker, f"{ready_dir}/{os.getpid()}" if ready_dir else None, listening))
    app.on_shutdown.append(_on_shutdown)
    if not worker:
        app.on_shutdown.append(_notify_stopping)
    config = app[RUNTIME].snapshot.config
    try:
        # run_app calls `print` once, when every listener is bound: the moment READY may go out
        web.run_app(app, host=config.server.host, port=config.server.port, reuse_port=worker,
                    access_log=None, print=lambda _banner: listening.set(),
                    shutdown_timeout=config.server.shutdown_grace_s, loop=uvloop.new_event_loop())
    except ListenError as exc:  # a side listener (metrics_listen, admin_listen)
        return _cannot_listen(str(exc))
    except OSError as exc:  # the main listener: the only socket run_app itself binds
        return _cannot_listen(f"cannot listen on {config.server.host}:{config.server.port}: {listen_reason(exc)}")
    log.info("stopped")
    return 0


def _cannot_listen(message: str) -> int:
    """One line on stderr (the journal has it under systemd), exit status 1: the machine said no."""
    sink.flush()
    print(message, file=sys.stderr, flush=True)
    return 1


async def _notify_stopping(app: web.Application) -> None:
    systemd.notify("STOPPING=1")
