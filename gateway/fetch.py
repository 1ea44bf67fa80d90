"""Fetching a URL a client named, without letting the client reach the operator's own network (SSRF).

Used for image URLs inlined for providers that take bytes only. The rules:

- https only, on every hop; at most `MAX_REDIRECTS` redirects, each target checked like the first URL;
- hosts that are IP literals in any spelling the resolver would accept (``2130706433``, ``0x7f.1``,
  ``0177.0.0.1``, ``[::ffff:127.0.0.1]``, NAT64 and 6to4 wrappings) are judged by the address they name;
- wherever the gateway resolves names itself (the direct route, and ``socks5://`` and ``socks4://``
  proxies, which are handed an address) a name is resolved once, every address it resolves to must be
  public, and the connection goes to the address that was checked (through the proxy, the tunnel is asked
  for that address; the Host header and TLS name stay the name), so DNS rebinding between check and
  connect cannot redirect it. Through a proxy that resolves names itself (``socks5h``, ``socks4a``, HTTP(S)
  CONNECT: no DNS leaves locally) only literals and local names can be refused here;
- refused: loopback, private, link-local (169.254.169.254 and other metadata addresses), CGNAT,
  unspecified, multicast, reserved — anything `ipaddress` does not call global;
- the whole fetch, redirects included, is bounded by `timeout_s` and the body by `max_bytes`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from egress.proxy import PROXY_ERRORS

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]
MAX_REDIRECTS = 3
_LOCAL_NAMES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The URL may not be fetched, or fetching it failed; the message says why (never with the body)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    media_type: str
    data: bytes


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, in any form `inet_aton` accepts (decimal, octal, hex, short)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def refused_address(ip: IPAddress) -> bool:
    """Whether an address is off limits: anything not globally routable, also when wrapped in IPv6."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and refused_address(inner):
            return True
    return not ip.is_global or ip.is_multicast


def local_host(host: str) -> bool:
    """Whether a URL's host is a local one by what it says: an address not globally routable, `localhost`,
    a name under a local suffix (`.local`, `.internal`...) or of one label (a Compose service, `ollama`)."""
    literal = literal_address(host)
    if literal is not None:
        return refused_address(literal)
    return _local_name(host)


def _local_name(host: str) -> bool:
    return host == "localhost" or host.endswith(_LOCAL_NAMES) or "." not in host.rstrip(".")


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class Guard:
    """The policy one fetch runs under; tests swap `refuse` and `resolve`, production keeps the defaults."""

    resolve_locally: bool  # the gateway resolves names on this route (direct, socks5://, socks4://): check and pin
    refuse: Callable[[IPAddress], bool] = refused_address
    resolve: Resolve = system_resolve

    async def target(self, url: str) -> tuple[str, str | None]:
        """(URL to connect to, the name to keep for TLS and Host when that URL is a pinned address), or Refused."""
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise Refused("only https URLs (or data: URIs) are accepted")
        host, port = parts.hostname, parts.port or 443
        literal = literal_address(host)
        if literal is not None:
            if self.refuse(literal):
                raise Refused("it points to a private, loopback or link-local address")
            return url, None
        if _local_name(host):
            raise Refused("it names a local host")
        if not self.resolve_locally:
            return url, None
        try:
            addresses = await self.resolve(host, port)
        except OSError as exc:
            raise Refused("its host does not resolve") from exc
        ips = [literal_address(a.split("%")[0]) for a in addresses]
        if not ips or any(ip is None or self.refuse(ip) for ip in ips):
            raise Refused("its host resolves to a private, loopback or link-local address")
        pinned = f"[{ips[0]}]" if isinstance(ips[0], ipaddress.IPv6Address) else str(ips[0])
        return parts._replace(netloc=f"{pinned}:{port}").geturl(), host


async def fetch(session: aiohttp.ClientSession, url: str, guard: Guard, max_bytes: int, timeout_s: float,
                accept: str = "image/") -> Fetched:
    """GET `url` under `guard`, following at most MAX_REDIRECTS checked redirects; Refused otherwise."""
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(MAX_REDIRECTS + 1):
                connect_to, name = await guard.target(url)
                port = urlsplit(url).port
                headers = {"Host": f"{name}:{port}" if port else name} if name else None
                async with session.get(connect_to, allow_redirects=False, headers=headers,
                                       server_hostname=name) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    return await _read(resp, max_bytes, accept)
            raise Refused(f"it redirects more than {MAX_REDIRECTS} times")
    except TimeoutError as exc:
        raise Refused(f"fetching it took longer than {timeout_s:g} s") from exc
    except (aiohttp.ClientError, OSError, EOFError, *PROXY_ERRORS) as exc:  # type: ignore[misc]  # aiohttp-socks: its own
        raise Refused(f"fetching it failed ({type(exc).__name__})") from exc


async def _read(resp: aiohttp.ClientResponse, max_bytes: int, accept: str) -> Fetched:
    if resp.status != 200:
        raise Refused(f"fetching it gave HTTP {resp.status}")
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not media_type.startswith(accept):
        raise Refused(f"it is not of type {accept}*")
    if (resp.content_length or 0) > max_bytes:
        raise Refused(f"it is larger than {max_bytes} bytes")
    data = bytearray()
    async for chunk in resp.content.iter_any():
        data += chunk
        if len(data) > max_bytes:
            raise Refused(f"it is larger than {max_bytes} bytes")
    return Fetched(media_type, bytes(data))
