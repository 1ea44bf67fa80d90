"""What the app holds between requests, and the keys to reach it.

`Runtime.snapshot` is replaced as a whole on reload (one attribute assignment, atomic for every request
that starts afterwards); a request in flight keeps the snapshot it started with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from egress.pool import Egress
from gateway.auth import KeyCache
from gateway.catalog import Catalog
from gateway.config import Config
from gateway.resilience import Guard
from gateway.settlements import Settlements
from gateway.store import KeyRecord, Store


@dataclass(frozen=True, slots=True)
class Snapshot:
    config: Config
    catalog: Catalog
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def of(cls, config: Config) -> Snapshot:
        return cls(config, Catalog(config))


@dataclass(slots=True)
class Runtime:
    snapshot: Snapshot
    config_path: str | None = None
    server_overrides: dict[str, Any] = field(default_factory=dict)  # --host/--port of the command line
    store: Store = field(init=False)
    egress: Egress = field(default_factory=Egress)
    settlements: Settlements = field(default_factory=Settlements)
    key_cache: KeyCache = field(default_factory=KeyCache)
    guard: Guard = field(default_factory=Guard)  # retry budget and concurrency caps of this process
    started: Config | None = None  # the config the process started on: what only a restart changes stays its


RUNTIME = web.AppKey("runtime", Runtime)
# what a side listener (server.metrics_listen / server.admin_listen) serves: "metrics", "admin" or both
SIDE = web.AppKey("side", frozenset)


def served_here(request: web.Request, what: str, listen: str) -> bool:
    """Routes moved to a side listener are served there only; the others only on the main listener."""
    return bool(listen) == (what in request.app.get(SIDE, frozenset()))


REQUEST_ID = web.RequestKey("request_id", str)
KEY = web.RequestKey("key", KeyRecord)
RATE_HEADERS = web.RequestKey("rate_headers", dict[str, str])  # x-ratelimit-* of the request's admission
LOG = web.RequestKey("log", dict[str, Any])  # fields of the request's log line, filled by handlers
