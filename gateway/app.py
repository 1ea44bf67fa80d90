"""The app factory: AppKeys, middlewares, routes, and the long-lived resources born in cleanup_ctx."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from egress import health as egress_health
from egress.pool import PoolSpec
from egress.proxy import ProxySpec
from gateway import config as config_mod
from gateway import config_load, edge, metrics
from gateway.config import Config
from gateway.handlers import admin, apis, chat, credits, docs, health, messages, models
from gateway.logging import get_logger, redactor, set_level
from gateway.middleware import add_response_headers, request_context, require_admin, require_key
from gateway.state import RUNTIME, Runtime, Snapshot
from gateway.store import open_store

log = get_logger("gateway.app")
# after the shutdown grace, settlements still pending get this long: grace + this stays within the
# supervisor's grace + 10 s for its workers and the unit's TimeoutStopSec=45 (which SIGKILLs mid-drain)
SHUTDOWN_DRAIN_S = 8.0


def _pools(config: Config) -> dict[str, PoolSpec]:
    """The egress package's plain specs from the config (egress knows nothing of providers)."""
    return {name: PoolSpec(
        name=name, proxies=tuple(ProxySpec(p.name, p.url, p.region) for p in pool.proxies),
        strategy=pool.strategy, affinity=pool.affinity, fallback_direct=pool.fallback_direct,
        max_attempts=pool.max_attempts, eject_after_failures=pool.health.eject_after_failures,
        restore_after_successes=pool.health.restore_after_successes, max_ejected_share=pool.max_ejected_share,
        interval_s=pool.health.interval_s, timeout_s=pool.health.timeout_s,
        probe=pool.health.probe or _default_probe(config, name),
    ) for name, pool in config.egress.pools.items()}


def _default_probe(config: Config, pool: str) -> str:
    """Without a configured probe, a pool checks that it can open a tunnel to a provider it serves."""
    for provider in config.providers.values():
        if provider.egress == pool:
            url = urlsplit(provider.base_url)
            return f"tcp://{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}"
    return ""


def _with_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    if not overrides:
        return config
    return config.model_copy(update={"server": config.server.model_copy(update=overrides)})


async def _resources(app: web.Application) -> AsyncIterator[None]:
    """Store and egress sessions: opened once at startup, closed at shutdown, never per request."""
    runtime = app[RUNTIME]
    config = runtime.snapshot.config
    runtime.store = open_store(config.store.url, config.store.prefix)
    if not config.store.url:
        log.warning("memory store in use: keys and balances live in this process only and vanish at exit; "
                    "set store.url (REDIS_URL) for production or more than one process")
    await runtime.egress.configure(_pools(config))
    prober = asyncio.create_task(egress_health.run(runtime.egress))
    yield
    prober.cancel()
    await runtime.settlements.drain(timeout_s=SHUTDOWN_DRAIN_S)
    await runtime.egress.close()
    await runtime.store.close()


def create_app(config: Config, config_path: str | None = None, extra_middlewares: Sequence[Middleware] = (),
               server_overrides: dict[str, Any] | None = None) -> web.Application:
    """The gateway app; `extra_middlewares` run innermost (an embedder's own checks, test probes);
    `server_overrides` (the command line's --host/--port) win over the file, also across reloads."""
    overrides = server_overrides or {}
    config = _with_overrides(config, overrides)
    redactor.update(config.secrets())
    # aiohttp's own cap stays above ours so that our handler answers 413 in OpenAI's shape
    app = web.Application(middlewares=[request_context, require_key, require_admin, *extra_middlewares],
                          client_max_size=config.server.max_body_bytes + 1024, handler_args=edge.handler_args())
    app[RUNTIME] = Runtime(Snapshot.of(config), config_path, overrides, started=config)
    app.cleanup_ctx.append(_resources)
    app.on_response_prepare.append(add_response_headers)
    app.router.add_post("/v1/chat/completions", chat.chat_completions)
    app.router.add_post("/v1/completions", apis.completions)
    app.router.add_post("/v1/embeddings", apis.embeddings)
    app.router.add_post("/v1/moderations", apis.moderations)
    app.router.add_post("/v1/images/generations", apis.image_generations)
    app.router.add_post("/v1/messages", messages.messages)
    app.router.add_post("/v1/messages/count_tokens", messages.count_tokens)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{name:.+}", models.model_or_endpoints)
    app.router.add_get("/v1/credits", credits.credits)
    app.router.add_get("/v1/generation", credits.generation)
    app.router.add_get("/healthz", health.healthz)
    app.router.add_get("/readyz", health.readyz)
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/openapi.json", docs.openapi_json)
    add_admin_routes(app.router)
    return app


def add_admin_routes(router: web.UrlDispatcher) -> None:
    """On the main listener, or on `server.admin_listen`'s (gateway.server)."""
    router.add_get("/admin/egress", admin.egress)
    router.add_get("/admin/keys", admin.list_keys)
    router.add_post("/admin/keys", admin.create_key)
    router.add_post("/admin/keys/{key_id}/topup", admin.topup)
    router.add_post("/admin/keys/{key_id}/disable", admin.disable)


async def reload_config(app: web.Application) -> bool:
    """SIGHUP: load the config file again and swap it in whole, or keep the old one and say why."""
    runtime = app[RUNTIME]
    if runtime.config_path is None:
        log.warning("config reload requested but the gateway was not started from a file")
        return False
    try:
        new = _with_overrides(config_load.load(runtime.config_path), runtime.server_overrides)
    except config_mod.ConfigError as exc:
        metrics.RELOADS.labels("failure").inc()
        log.error("config reload failed; keeping the old config", path=runtime.config_path,
                  problems=str(exc).splitlines())
        return False
    old = runtime.snapshot.config
    if new.store != old.store:
        log.warning("store settings changed; they take effect at the next restart")
    if new.server.host != old.server.host or new.server.port != old.server.port:
        log.warning("listen address changed; it takes effect at the next restart")
    # the side listeners were bound at startup: what they (and the main listener) serve stays as started
    side = {f: getattr(old.server, f) for f in ("metrics_listen", "admin_listen")
            if getattr(new.server, f) != getattr(old.server, f)}
    if side:
        log.warning("side listener addresses changed; they take effect at the next restart", fields=sorted(side))
    # the store, the listeners, the grace and a higher max_body_bytes (aiohttp's own limit) stay as started
    new = config_mod.with_restart_settings(new, runtime.started or old)
    redactor.update([*old.secrets(), *new.secrets()])  # requests in flight still hold the old ones
    await runtime.egress.configure(_pools(new))
    runtime.snapshot = Snapshot.of(new)
    if new.server.log_level != old.server.log_level:  # serve() applied the old one at startup
        set_level(new.server.log_level)
    metrics.RELOADS.labels("success").inc()
    metrics.CONFIG_AGE.set(0)  # else a worker no scrape reached since keeps its pre-reload age in the max
    log.info("config reloaded", path=runtime.config_path, models=len(new.models),
             providers=len(new.providers))
    return True
