"""Reading client bodies: size-capped before anything is buffered, JSON-checked with clear 400s."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import InvalidRequest, PayloadTooLarge


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds this gateway's limit of {limit} bytes.")


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The body, refusing past `limit` bytes whether or not the client declared a Content-Length."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


async def read_json(request: web.Request, limit: int) -> dict[str, Any]:
    raw = await read_limited(request, limit)
    if not raw:
        raise InvalidRequest("The request body is empty; send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body
