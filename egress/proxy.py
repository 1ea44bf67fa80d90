"""Proxy URL -> pooled client session.

One `aiohttp.ClientSession` per way out (direct, or one per proxy), created once and reused across
requests so connections stay alive; SOCKS4/5 and HTTP CONNECT proxies go through aiohttp-socks, whose
connector tunnels TLS to the upstream inside the proxy connection.
"""

from __future__ import annotations

import aiohttp
from aiohttp_socks import ProxyConnector

# Per-host connection cap of a session: high enough for streams that stay open for minutes.
CONNECTIONS_PER_HOST = 256


def make_connector(proxy_url: str | None) -> aiohttp.BaseConnector:
    if proxy_url is None:
        return aiohttp.TCPConnector(limit=0, limit_per_host=CONNECTIONS_PER_HOST, ttl_dns_cache=300)
    url, rdns = proxy_url, False
    if url.startswith("socks5h://"):  # name resolved at the proxy: no DNS leak from the gateway's region
        url, rdns = "socks5://" + url[len("socks5h://"):], True
    return ProxyConnector.from_url(url, rdns=rdns, limit=0, limit_per_host=CONNECTIONS_PER_HOST)


def make_session(proxy_url: str | None = None) -> aiohttp.ClientSession:
    """A session with no total timeout: the caller bounds connect, first byte and silences itself."""
    return aiohttp.ClientSession(
        connector=make_connector(proxy_url),
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        raise_for_status=False,
    )
