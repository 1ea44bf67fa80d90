"""Images in chat requests: whether a request has any, and inlining https image URLs for upstreams that
only take bytes (Gemini).

The gateway never fetches a client-given URL unless the provider needs inline bytes, and then only over
https, never from loopback/private/link-local addresses (no SSRF into the operator's network), through
the provider's own egress route, within a size and a time limit.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from gateway.errors import InvalidRequest

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_S = 15.0


def image_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The `image_url` objects of every message part, in order."""
    found = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            found += [part["image_url"] for part in content if isinstance(part, dict)
                      and part.get("type") == "image_url" and isinstance(part.get("image_url"), dict)]
    return found


def _refuse(url: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Image URL {url[:100]!r} cannot be used: {why}.", code="invalid_image_url",
                          param="messages")


def _private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return not ip.is_global or ip.is_multicast


async def _check_host(url: str, resolve_locally: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise _refuse(url, "only https URLs (or data: URIs) are accepted")
    host = parts.hostname
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if _private(host):
            raise _refuse(url, "it points to a private or loopback address")
        return
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        raise _refuse(url, "it points to a private or loopback address")
    if resolve_locally:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise _refuse(url, "its host does not resolve") from exc
        if any(_private(str(info[4][0])) for info in infos):
            raise _refuse(url, "it points to a private or loopback address")


async def _fetch(session: aiohttp.ClientSession, url: str) -> str:
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S), session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise _refuse(url, f"fetching it gave HTTP {resp.status}")
            media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
            if not media_type.startswith("image/"):
                raise _refuse(url, "it is not an image")
            data = await resp.content.read(MAX_IMAGE_BYTES + 1)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise _refuse(url, f"fetching it failed ({type(exc).__name__})") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise _refuse(url, f"it is larger than {MAX_IMAGE_BYTES} bytes")
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


async def inline_remote_images(body: dict[str, Any], session: aiohttp.ClientSession,
                               resolve_locally: bool) -> dict[str, Any]:
    """A copy of `body` whose https image URLs are data: URIs; the client's body is left as it was.

    `resolve_locally`: the fetch leaves directly, so the host's addresses are checked here; through a
    proxy the name is resolved at the proxy and only literal addresses and local names are refused.
    """
    if not any(not str(img.get("url", "")).startswith("data:") for img in image_parts(body)):
        return body
    messages = []
    for message in body["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            messages.append(message)
            continue
        parts = []
        for part in content:
            url = str(part.get("image_url", {}).get("url", "")) if isinstance(part, dict) else ""
            if part.get("type") == "image_url" and url and not url.startswith("data:"):
                await _check_host(url, resolve_locally)
                part = {**part, "image_url": {**part["image_url"], "url": await _fetch(session, url)}}
            parts.append(part)
        messages.append({**message, "content": parts})
    return {**body, "messages": messages}
