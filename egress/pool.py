"""Named pools of ways out, and the sessions behind them.

`Egress.session_for(pool)` returns the session a request should leave through: the shared direct
session for "direct", or the next proxy of the pool. Sessions are reused across requests and closed when
a reload removes their proxy or at shutdown.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from egress.proxy import make_session

DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class ProxySpec:
    name: str
    url: str


class Egress:
    def __init__(self) -> None:
        self._sessions: dict[str, aiohttp.ClientSession] = {}  # by proxy url ("" = direct)
        self._pools: dict[str, tuple[ProxySpec, ...]] = {}
        self._cycles: dict[str, Iterator[ProxySpec]] = {}

    async def configure(self, pools: Mapping[str, Sequence[ProxySpec]]) -> None:
        """Adopt a new set of pools; sessions of proxies still configured are kept, others closed."""
        self._pools = {name: tuple(specs) for name, specs in pools.items()}
        self._cycles = {name: itertools.cycle(specs) for name, specs in self._pools.items()}
        wanted = {spec.url for specs in self._pools.values() for spec in specs} | {""}
        stale = [url for url in self._sessions if url not in wanted]
        await asyncio.gather(*(self._sessions.pop(url).close() for url in stale))
        for url in wanted - self._sessions.keys():
            self._sessions[url] = make_session(url or None)

    def session_for(self, pool: str) -> aiohttp.ClientSession:
        url = "" if pool == DIRECT else next(self._cycles[pool]).url
        return self._sessions[url]

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions))
