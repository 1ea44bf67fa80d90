"""Cross-cutting concerns of every request: request id, one log line, errors in OpenAI's shape, auth.

Handlers raise `GatewayError`s and fill `request[LOG]` with what they learnt (model, provider, tokens);
this module turns both into the response and the request's single JSON log line.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway import metrics
from gateway.auth import authenticate, bearer_matches
from gateway.edge import CUT_OFF, SERVED_VERSIONS, SERVER_NAME, hang_up, refused, version_not_served
from gateway.errors import (
    ANTHROPIC_PATH,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    error_response,
)
from gateway.logging import access, bind_request_id, get_logger, unbind_request_id
from gateway.state import KEY, LOG, RATE_HEADERS, REQUEST_ID, RUNTIME, served_here
from gateway.store import StoreError

log = get_logger("gateway.request")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HTTP_ERRORS: dict[int, tuple[type[GatewayError], str]] = {
    404: (NotFound, "Unknown path. This gateway serves the OpenAI API under /v1/."),
    405: (InvalidRequest, "Method not allowed on this path."),
    413: (PayloadTooLarge, "Request body too large."),
}


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _CLIENT_ID.match(given) else "req_" + random.randbytes(16).hex()  # unique, not secret


def _anthropic(request: web.Request) -> bool:
    """Anthropic-format clients get errors in Anthropic's shape, which their SDK parses."""
    return request.path.startswith(ANTHROPIC_PATH)


def _from_http_exception(exc: web.HTTPException) -> GatewayError:
    cls, message = _HTTP_ERRORS.get(exc.status, (InvalidRequest, exc.reason))
    allow = exc.headers.get("Allow")  # a 405 must name the methods the path takes (RFC 9110 15.5.6)
    return cls(message, status=exc.status, headers={"Allow": allow} if allow is not None else None)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: gives every response an X-Request-Id, every failure an OpenAI error body, one log line."""
    started = time.perf_counter()
    rid = request[REQUEST_ID] = _request_id(request)
    fields: dict[str, Any] = {}
    request[LOG] = fields
    bound = bind_request_id(rid)
    status = 500
    try:
        response = await _respond(request, handler, rid, fields)
        status = response.status if await _send(request, response) else 499
    except asyncio.CancelledError:  # cut by the shutdown's grace (or a client gone): not a gateway failure
        status = 499
        raise
    finally:
        elapsed = time.perf_counter() - started
        final = fields.pop("status", status)
        _count(request, fields, final, elapsed)
        if request.path.startswith("/v1/"):
            access(rid, {"method": request.method, "path": request.path, "status": final,
                         "latency_ms": round(elapsed * 1000, 2), **fields})
        unbind_request_id(bound)
    if response.status in CUT_OFF:  # after the log line: the request's time is its answer's
        await hang_up(request, response)
    return response


async def _respond(request: web.Request, handler: Handler, rid: str, fields: dict[str, Any]) -> web.StreamResponse:
    """The handler's response, or the error it raised as an OpenAI (or Anthropic) error response. A request
    in an HTTP version the gateway does not speak reaches no handler (505, before the key is checked)."""
    try:
        if request.version not in SERVED_VERSIONS:
            raise version_not_served()
        return await handler(request)
    except GatewayError as exc:
        fields.setdefault("error", exc.code or exc.type)
        if isinstance(exc.__cause__, StoreError):  # what Redis said (READONLY, OOM, BUSY...): address redacted
            fields.setdefault("store_error", str(exc.__cause__))
        err = exc
    except web.HTTPException as exc:
        err = _from_http_exception(exc)
    except Exception:
        log.exception("unhandled error")
        err = GatewayError("The gateway failed to handle this request.", code="internal_error")
    return refused(request, error_response(err, rid, _anthropic(request)))


async def _send(request: web.Request, response: web.StreamResponse) -> bool:
    """Write the response here rather than after the middlewares return (aiohttp's own prepare and
    write_eof then find it done), so the client does not wait for the log line and the metrics. False
    when the client had left (aiohttp does not cancel a handler whose client left): logged as 499."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:  # aiohttp's own write finds out again
        return False
    return True


def _count(request: web.Request, fields: dict[str, Any], status: int, elapsed: float) -> None:
    """Request metrics, labelled by the route template and catalog ids only (bounded label sets)."""
    info = request.match_info.route.resource
    route = info.canonical if info is not None else "unmatched"
    provider, model = fields.get("provider", metrics.UNKNOWN), fields.get("model", metrics.UNKNOWN)
    metrics.child(metrics.REQUESTS, route, provider, model, metrics.status_class(status)).inc()
    metrics.child(metrics.DURATION, route, provider, model).observe(elapsed)


@web.middleware
async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Client routes under /v1/ need a gateway key; the key record rides on the request."""
    if request.path.startswith("/v1/"):
        runtime = request.app[RUNTIME]
        record = await authenticate(request, runtime.store, runtime.key_cache,
                                    runtime.snapshot.config.billing.key_cache_s)
        request[KEY] = record
        request[LOG]["key_id"] = record.id
    return await handler(request)


@web.middleware
async def require_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Admin routes take `Bearer <server.admin_token>`, never a client key; they are off without a token,
    and served on `server.admin_listen` only when that is set."""
    if request.path.startswith("/admin/"):
        server = request.app[RUNTIME].snapshot.config.server
        if not served_here(request, "admin", server.admin_listen):
            raise web.HTTPNotFound()
        token = server.admin_token
        if not token:
            raise NotFound("Admin routes are off: set server.admin_token to enable them.", code="admin_disabled")
        if not bearer_matches(request, token):
            raise Unauthorized("Admin routes need 'Authorization: Bearer <admin token>'.", code="invalid_admin_token")
    return await handler(request)


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the gateway's `Server` name, request id and rate-limit headers on every response,
    streamed ones included. On Anthropic's format the id is also `request-id`, the header Anthropic's API
    sends and its SDK reads (`message._request_id`, `err.request_id`)."""
    response.headers[hdrs.SERVER] = SERVER_NAME  # aiohttp's default names its release and Python's
    rid = request.get(REQUEST_ID)
    if rid:
        response.headers["X-Request-Id"] = rid
        if _anthropic(request):
            response.headers["request-id"] = rid
    rate = request.get(RATE_HEADERS)
    if rate:
        response.headers.update(rate)
