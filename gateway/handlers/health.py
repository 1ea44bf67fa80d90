"""Liveness and readiness: /healthz says the process runs, /readyz that it can serve (store answers)."""

from __future__ import annotations

import time

from aiohttp import web

from gateway.state import RUNTIME
from gateway.store import StoreError


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    checks = {"config": "ok", "store": "ok"}
    try:
        await runtime.store.ping()
    except StoreError:
        checks["store"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks,
            "config_age_s": round(time.time() - runtime.snapshot.loaded_at, 1)}
    return web.json_response(body, status=200 if ready else 503)
