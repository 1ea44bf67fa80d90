"""The gateway's error tree and its one mapping to OpenAI's error JSON.

Only this module turns exceptions into HTTP. Everything a client can get wrong or the gateway can hit
downstream is a `GatewayError` with the status an OpenAI client library expects::

    GatewayError
    ├── InvalidRequest        400 invalid_request_error
    ├── Unauthorized          401 invalid_api_key
    ├── InsufficientQuota     402 insufficient_quota
    ├── Forbidden             403 permission_error
    ├── NotFound              404 (model_not_found, ...)
    ├── PayloadTooLarge       413
    ├── RateLimited           429
    ├── UpstreamFailed        502 (upstream 5xx, unreachable, unreadable answer)
    ├── Unavailable           503 (store down, provider not configured)
    ├── UpstreamTimeout       504
    └── UpstreamRejected      the upstream's own 4xx, passed through with its (scrubbed) message
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    retryable = False  # may a retry or a fallback model fix it (nothing reached the client yet)?

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 type_: str | None = None, status: int | None = None,
                 headers: dict[str, str] | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        if code is not None:
            self.code = code
        if type_ is not None:
            self.type = type_
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class InsufficientQuota(GatewayError):
    status, type, code = 402, "insufficient_quota", "insufficient_quota"


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "permission_denied"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class UpstreamFailed(GatewayError):
    status, type, code = 502, "upstream_error", "bad_gateway"
    retryable = True


class Unavailable(GatewayError):
    status, type, code = 503, "service_unavailable", "service_unavailable"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "timeout_error", "upstream_timeout"
    retryable = True


class UpstreamRejected(GatewayError):
    """An upstream 4xx: its status, type and code pass through, its message scrubbed of secrets."""

    type = "invalid_request_error"


def error_response(err: GatewayError, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id, **err.headers}
    return web.Response(status=err.status, body=orjson.dumps(err.body()), headers=headers,
                        content_type="application/json")


def error_event(err: GatewayError) -> bytes:
    """The same error as an SSE event, for failures after a stream's headers went out."""
    return b"data: " + orjson.dumps(err.body()) + b"\n\n"
