"""Images in chat requests: whether a request has any, and inlining https image URLs for upstreams that
only take bytes (Gemini).

The gateway never fetches a client-given URL unless the provider needs inline bytes, and then only under
`gateway.fetch`'s rules (https, public addresses only, redirects re-checked, no SSRF into the operator's
network), through the provider's own egress route, within a size and a time limit.
"""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from gateway import fetch
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


async def _data_uri(session: aiohttp.ClientSession, url: str, guard: fetch.Guard) -> str:
    try:
        got = await fetch.fetch(session, url, guard, MAX_IMAGE_BYTES, FETCH_TIMEOUT_S)
    except fetch.Refused as exc:
        raise _refuse(url, str(exc)) from exc
    return f"data:{got.media_type};base64,{base64.b64encode(got.data).decode()}"


async def inline_remote_images(body: dict[str, Any], session: aiohttp.ClientSession,
                               resolve_locally: bool, guard: fetch.Guard | None = None) -> dict[str, Any]:
    """A copy of `body` whose https image URLs are data: URIs; the client's body is left as it was.

    `resolve_locally`: the fetch leaves directly, so the host's addresses are checked (and pinned) here;
    through a proxy the name is resolved at the proxy and only literal addresses and local names are refused.
    """
    guard = guard or fetch.Guard(resolve_locally)
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
                part = {**part, "image_url": {**part["image_url"], "url": await _data_uri(session, url, guard)}}
            parts.append(part)
        messages.append({**message, "content": parts})
    return {**body, "messages": messages}
