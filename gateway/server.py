"""Running the app: uvloop, the listener, SIGHUP reload, and the memory store's starter key."""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop
from aiohttp import web

from gateway import keys
from gateway.app import create_app, reload_config
from gateway.config import Config, to_nano
from gateway.logging import configure, get_logger
from gateway.state import RUNTIME

log = get_logger("gateway.server")


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


async def _on_startup(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload_config(app)))
    await _starter_key(app)
    config = app[RUNTIME].snapshot.config
    log.info("gateway started", host=config.server.host, port=config.server.port,
             store="redis" if config.store.url else "memory", models=len(config.models))


def serve(config: Config, config_path: str, host: str | None = None, port: int | None = None) -> int:
    configure(config.server.log_level)
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    app = create_app(config, config_path, server_overrides=overrides)
    app.on_startup.append(_on_startup)
    config = app[RUNTIME].snapshot.config
    web.run_app(app, host=config.server.host, port=config.server.port,
                access_log=None, print=None, shutdown_timeout=30,
                loop=uvloop.new_event_loop())
    return 0
