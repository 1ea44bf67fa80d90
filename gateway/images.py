"""Images in chat and Anthropic Messages requests: whether a request has any, and inlining https image URLs
for upstreams that only take bytes (Gemini).

The gateway never fetches a client-given URL unless the provider needs inline bytes, and then only under
`gateway.fetch`'s rules (https, public addresses only, redirects re-checked, no SSRF into the operator's
network), through the provider's own egress route, within a size and a time limit.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import aiohttp

from gateway import fetch
from gateway.errors import InvalidRequest

# a request's fetched images together, not each: a thousand URLs of 20 MB each held 20 GB in memory, for a
# hold of 1.6M tokens (~$0.50 at Gemini Flash prices)
MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT_S = 15.0
# and one time limit for them together: fifty URLs that each answer just inside FETCH_TIMEOUT_S held a
# request, its hold and its stream slot for over ten minutes
FETCH_TOTAL_S = 30.0


def _image_parts(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The image parts of a request's messages, those inside Anthropic `tool_result` blocks too: OpenAI's
    `{"type": "image_url", "image_url": {"url"}}` or Anthropic's `{"type": "image", "source": {"type": "base64" |
    "url" | ..., ...}}`.

    One generator for the body and plain loops in it, not a generator per message and per block: an agent's
    turn holds hundreds of blocks and, almost always, no image, so every block is looked at once, cheaply."""
    lists = [content for message in body.get("messages") or ()
             if isinstance(message, dict) and isinstance(content := message.get("content"), list)]
    for parts in lists:  # a tool_result's blocks are appended, and met in their turn
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image" or (kind == "image_url" and isinstance(part.get("image_url"), dict)):
                yield part
            elif kind == "tool_result" and isinstance(nested := part.get("content"), list):
                lists.append(nested)


def _remote_url(part: dict[str, Any]) -> str | None:
    """The URL an image part points to, None for inline bytes (a data: URI, a base64 source) or no image."""
    if part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
        url = str(part["image_url"].get("url", ""))
    elif part.get("type") == "image" and isinstance(part.get("source"), dict) and part["source"].get("type") == "url":
        url = str(part["source"].get("url", ""))
    else:
        return None
    return None if url.startswith("data:") else url


def has_images(body: dict[str, Any]) -> bool:
    """Whether any message holds an image, in OpenAI's or Anthropic's shape."""
    return next(_image_parts(body), None) is not None


def has_remote_images(body: dict[str, Any]) -> bool:
    """Whether any image is given by URL (an upstream that takes only bytes needs it fetched)."""
    return any(_remote_url(part) is not None for part in _image_parts(body))


def _refuse(url: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Image URL {url[:100]!r} cannot be used: {why}.", code="invalid_image_url",
                          param="messages")


async def _fetched(session: aiohttp.ClientSession, url: str, guard: fetch.Guard, max_bytes: int,
                   time_left_s: float) -> fetch.Fetched:
    """One image within what the request's earlier fetches left of the byte and time budgets."""
    together = f"the request's images take more than {FETCH_TOTAL_S:g} s to fetch together"
    if time_left_s <= 0:
        raise _refuse(url, together)
    try:
        return await fetch.fetch(session, url, guard, max_bytes, min(FETCH_TIMEOUT_S, time_left_s))
    except fetch.Refused as exc:
        why = str(exc)
        if max_bytes < MAX_IMAGE_BYTES and why.startswith("it is larger than"):
            why = f"the request's images come to more than {MAX_IMAGE_BYTES} bytes together"
        elif time_left_s < FETCH_TIMEOUT_S and why.startswith("fetching it took longer than"):
            why = together
        raise _refuse(url, why) from exc


async def inline_remote_images(body: dict[str, Any], session: aiohttp.ClientSession,
                               resolve_locally: bool, guard: fetch.Guard | None = None) -> dict[str, Any]:
    """A copy of `body` whose https image URLs are inline bytes (data: URIs, Anthropic base64 sources); the
    client's body is left as it was.

    `resolve_locally`: the gateway resolves names on this route (direct, or a `socks5://` / `socks4://`
    proxy), so the host's addresses are checked (and pinned) here; through a proxy that resolves names itself
    (`socks5h://`, `socks4a://`, HTTP(S) CONNECT) only literal addresses and local names are refused.
    """
    if not has_remote_images(body):
        return body
    inline = _Inliner(session, guard or fetch.Guard(resolve_locally))
    messages = []
    for message in body["messages"]:
        content = message.get("content") if isinstance(message, dict) else None
        messages.append({**message, "content": await inline.content(content)} if isinstance(content, list)
                        else message)
    return {**body, "messages": messages}


class _Inliner:
    """Rewrites remote image parts as inline ones, one fetch each, under one guard, within MAX_IMAGE_BYTES
    and FETCH_TOTAL_S for all of them."""

    def __init__(self, session: aiohttp.ClientSession, guard: fetch.Guard) -> None:
        self.session, self.guard = session, guard
        self.left = MAX_IMAGE_BYTES
        self.clock = asyncio.get_running_loop().time
        self.deadline = self.clock() + FETCH_TOTAL_S

    async def content(self, content: list[Any]) -> list[Any]:
        return [await self.part(part) if isinstance(part, dict) else part for part in content]

    async def part(self, part: dict[str, Any]) -> dict[str, Any]:
        if part.get("type") == "tool_result" and isinstance(part.get("content"), list):
            return {**part, "content": await self.content(part["content"])}
        url = _remote_url(part)
        if url is None:
            return part
        got = await _fetched(self.session, url, self.guard, self.left, self.deadline - self.clock())
        self.left -= len(got.data)
        data_uri = f"data:{got.media_type};base64,{base64.b64encode(got.data).decode()}"
        if part.get("type") == "image_url":
            return {**part, "image_url": {**part["image_url"], "url": data_uri}}
        media_type, _, data = data_uri.removeprefix("data:").partition(";base64,")
        return {**part, "source": {"type": "base64", "media_type": media_type, "data": data}}
