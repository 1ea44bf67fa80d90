"""Operations endpoints: /healthz (the process runs), /readyz (it can serve: the store answers and takes
writes), /metrics."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway import metrics as metrics_mod
from gateway.auth import bearer_matches
from gateway.errors import Unauthorized
from gateway.state import RUNTIME, served_here
from gateway.store import Store, StoreError, StoreRefused

STORE_CHECK_S = 2.0  # a scrape or readiness probe waits at most this long for the store's answer
_REFUSING = {"writes": "refusing writes", "login": "refusing login", "loading": "loading"}  # /readyz's words


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def store_check(store: Store) -> tuple[str, str | None]:
    """Check the store (`Store.ping`: it answers and would take a write), waiting at most STORE_CHECK_S (a
    black-holed Redis must not hang a scrape), and write the answer to gateway_store_up. The check's word
    ("ok", "refusing writes", "refusing login", "loading", "unreachable") and, when the store refused, its
    own words: a replica's READONLY calls for a failover fix, a rotated password for the gateway's URL, a
    restart still loading its dataset for a wait, a dead server for a restart; "unreachable" said all four."""
    try:
        async with asyncio.timeout(STORE_CHECK_S):
            await store.ping()
        state, said = "ok", None
    except StoreRefused as exc:
        state, said = _REFUSING.get(exc.refusing, "refusing writes"), exc.reply
    except (StoreError, TimeoutError):
        state, said = "unreachable", None
    if state != "ok":
        metrics_mod.STORE_ERRORS.labels("ping").inc()
    metrics_mod.store_up(state == "ok", force=True)
    return state, said


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    store, said = await store_check(runtime.store)
    checks = {"config": "ok", "store": store}
    ready = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ready" if ready else "not_ready", "checks": checks,
                               "config_age_s": round(time.time() - runtime.snapshot.loaded_at, 1)}
    if said is not None:
        body["store_error"] = said
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format: this process's metrics, or the sum over workers.

    Served on the main listener unless `server.metrics_listen` moves it to its own address; protected by
    `server.metrics_token` when one is set.
    """
    server = request.app[RUNTIME].snapshot.config.server
    if not served_here(request, "metrics", server.metrics_listen):
        raise web.HTTPNotFound()
    if server.metrics_token and not bearer_matches(request, server.metrics_token):
        raise Unauthorized("/metrics needs 'Authorization: Bearer <metrics token>'.", code="invalid_metrics_token")
    await store_check(request.app[RUNTIME].store)  # an idle gateway's gauge would otherwise be stale
    metrics_mod.CONFIG_AGE.set(time.time() - request.app[RUNTIME].snapshot.loaded_at)
    return web.Response(body=metrics_mod.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})
