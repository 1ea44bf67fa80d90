"""What the gateway answers before any handler runs: requests aiohttp's HTTP parser refuses, and
connections whose request head never ends.

aiohttp answers a request it cannot parse (a malformed request line or header, a line over its 8190-byte
limit, more than 128 headers, bad chunked framing, an unsupported Transfer- or Content-Encoding, HTTP/2 or
TLS on this plain-HTTP port) itself, before routing and middlewares: in plain text that quotes the
offending line back, an Authorization header's value included, with an ERROR log record and a traceback
for each, which any scanner of the port can multiply. It offers no public hook for that answer:
`RequestHandler.handle_error` builds it, so that method is replaced here, with `check_hook` (run at
import) refusing an aiohttp whose hook moved, so that an upgrade fails loudly rather than bringing the
plain-text answers back in silence. The replacement answers for the gateway's own listeners only, made
with `handler_args()`, whose `logger` marks them; any other aiohttp server in the process (an embedder's,
the tests' fake upstreams) keeps aiohttp's answer.
"""

from __future__ import annotations

import inspect
import logging
import random
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway import metrics
from gateway.errors import GatewayError, InvalidRequest, error_response
from gateway.logging import get_logger

log = get_logger("gateway.edge")
# aiohttp's own lines about the gateway's connections; being this logger is what marks a gateway listener
SERVER_LOGGER = logging.getLogger("gateway.http")
# aiohttp's keep-alive timer, which also closes a connection whose request head is still arriving this long
# after it opened or after its last answer (no handler runs before the head is whole, so nothing else
# would). run_app's own default, set here so that every way of running the app gets it: AppRunner's and
# the test servers' default is an hour.
KEEPALIVE_S = 75.0
# aiohttp's words that quote nothing of the request: passed on as they are
_FIXED = frozenset({"Missing 'Host' header in request.", "Duplicate 'Host' header found."})
# llhttp's reason in aiohttp's C parser's message ("Invalid header value char:\n\n  b'<the line>'\n  ^"):
# fixed text, before the quoted bytes, which are never used
_REASON = re.compile(r"(?:^|\n  )([A-Za-z][A-Za-z0-9 `'/.,-]{0,79}):\n\n  ")


def handler_args() -> dict[str, Any]:
    """`web.Application(handler_args=...)` for each of the gateway's listeners (aiohttp's RequestHandler's
    own keyword arguments)."""
    return {"logger": SERVER_LOGGER, "keepalive_timeout": KEEPALIVE_S}


def refusal(exc: BaseException | None, handler: RequestHandler) -> InvalidRequest:
    """What the parser refused, in our code and words."""
    text = str(getattr(exc, "message", ""))
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], int) else handler.max_field_size
        return InvalidRequest(f"The request line or a header is longer than {limit} bytes, this server's limit.",
                              code="headers_too_large")
    if text.startswith("Too many headers"):
        return InvalidRequest(f"The request has more than {handler.max_headers} headers, this server's limit.",
                              code="headers_too_large")
    if isinstance(exc, ContentEncodingError):
        return InvalidRequest("The request's Content-Encoding is not one this gateway decodes: send the body "
                              "uncompressed, gzip or deflate.", code="invalid_body")
    if isinstance(exc, BadHttpMethod) and "HTTPS" in text:
        words = "This port speaks plain HTTP and got a TLS handshake: use an http:// URL."
    elif text.startswith("Pause on PRI/Upgrade"):
        words = "This server speaks HTTP/1.1; HTTP/2 without an upgrade (prior knowledge) is not served."
    elif text in _FIXED:
        words = f"The request is not valid HTTP/1.1: {text}"
    else:
        found = _REASON.search(text)
        words = f"The request is not valid HTTP/1.1{f': {found[1]}' if found else ''}."
    return InvalidRequest(words, code="invalid_http")


_aiohttps_answer = RequestHandler.handle_error


def _handle_error(self: RequestHandler, request: web.BaseRequest, status: int = 500,
                  exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
    """aiohttp's `handle_error`, answering in OpenAI's shape on the gateway's listeners. aiohttp calls it
    for what its parser refused (400) and for what escaped the handler (500, 504: the gateway's middleware
    answers those itself), and closes the connection after the answer."""
    if self.logger is not SERVER_LOGGER:
        return _aiohttps_answer(self, request, status, exc, message)
    if request.writer.output_size > 0:  # as aiohttp: an answer is under way, another cannot follow
        raise ConnectionError("Response is sent already, cannot send another response with the error message")
    request_id = "req_" + random.randbytes(16).hex()
    if status >= 500:
        self.log_exception("Error handling request", exc_info=exc)
        err: GatewayError = GatewayError("The gateway failed to handle this request.", code="internal_error",
                                         status=status)
    else:
        err = refusal(exc, self)
        err.status = status  # aiohttp's: 400 for whatever its parser refuses
        log.info("malformed request refused", request_id=request_id, status=status, error=err.code,
                 reason=err.message)
    metrics.child(metrics.REQUESTS, "unmatched", metrics.UNKNOWN, metrics.UNKNOWN, metrics.status_class(status)).inc()
    response = error_response(err, request_id)
    response.force_close()
    return response


_HOOK_PARAMETERS = ["self", "request", "status", "exc", "message"]
_HANDLER_ARGS = {"logger", "keepalive_timeout"}


def check_hook(owner: type = RequestHandler) -> None:
    """Refuse to start on an aiohttp whose hook moved (run at import, before the hook is replaced): its
    `handle_error` with the parameters it is called with, and the keyword arguments `handler_args` gives."""
    hook = getattr(owner, "handle_error", None)
    if (not callable(hook) or list(inspect.signature(hook).parameters) != _HOOK_PARAMETERS
            or not set(inspect.signature(owner).parameters) >= _HANDLER_ARGS):
        raise ImportError(f"{owner.__module__}.{owner.__qualname__}.handle_error is gone or changed, and "
                          "gateway.edge overrides it: install the aiohttp version pyproject.toml names")


check_hook()
RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
