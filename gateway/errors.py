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

ANTHROPIC_PATH = "/v1/messages"  # Anthropic-format clients get errors in Anthropic's shape, which their SDK parses


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

    def anthropic_body(self, request_id: str = "") -> dict[str, Any]:
        """Anthropic's error shape, which the Anthropic SDK parses; our code rides along as `code`, and the field at
        fault as `param` when one is (Anthropic names it only in its message)."""
        error = {"type": anthropic_type(self), "message": self.message, "code": self.code}
        if self.param:
            error["param"] = self.param
        return {"type": "error", "error": error, "request_id": request_id}


def no_client_retry() -> dict[str, str]:
    """Headers telling the official SDKs (and so LangChain) not to retry a 5xx they retry by default: the same
    request cannot succeed (the operator's configuration or account is at fault), or it would send again a prompt
    the provider may have acted on, which the gateway itself never does (the provider bills each try, the key
    none of the failed ones)."""
    return {"x-should-retry": "false"}


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


_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 504: "timeout_error", 505: "invalid_request_error",
                    529: "overloaded_error"}


def anthropic_type(err: GatewayError) -> str:
    """Anthropic's error type for a gateway error, by status (an overloaded upstream stays overloaded, and so
    is a provider at its `max_concurrency`: busy now, try again shortly, as Anthropic's own 529 says)."""
    if err.code in ("upstream_overloaded", "overloaded_error", "provider_overloaded"):
        return "overloaded_error"
    return _ANTHROPIC_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")


def error_response(err: GatewayError, request_id: str, anthropic: bool = False) -> web.Response:
    """The error as JSON: OpenAI's shape, or Anthropic's for the Anthropic-format endpoint."""
    headers = {"X-Request-Id": request_id, **err.headers}
    body = err.anthropic_body(request_id) if anthropic else err.body()
    return web.Response(status=err.status, body=orjson.dumps(body), headers=headers, content_type="application/json")


def error_event(err: GatewayError) -> bytes:
    """The same error as an SSE event, for failures after a stream's headers went out."""
    return b"data: " + orjson.dumps(err.body()) + b"\n\n"


def anthropic_error_event(err: GatewayError, request_id: str) -> bytes:
    """Anthropic's `error` stream event, which the Anthropic SDK raises as an APIStatusError."""
    return b"event: error\ndata: " + orjson.dumps(err.anthropic_body(request_id)) + b"\n\n"
