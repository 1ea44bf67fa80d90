"""What the gateway answers before any handler runs: requests aiohttp's HTTP parser refuses, connections
whose request head never ends, `Expect` headers, HTTP versions it does not speak, and its `Server` name.

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

aiohttp's routes also meet a request's `Expect` header before any middleware, in a default handler each
route takes when it is made (`web_urldispatcher._default_expect_handler`): `100 Continue` at once, before
any key was checked, and a plain-text 417 quoting any other expectation. That default is replaced here
too (`_expect`, checked likewise), again for the gateway's listeners only: the 100 waits for the handler's
first read of the body (`send_continue`), the other expectations are refused in JSON by `_handle_error`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import re
from typing import Any

from aiohttp import hdrs, web, web_urldispatcher
from aiohttp.helpers import reify
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from gateway import metrics
from gateway.errors import ANTHROPIC_PATH, GatewayError, InvalidRequest, error_response, no_client_retry
from gateway.logging import get_logger

log = get_logger("gateway.edge")
# aiohttp's own lines about the gateway's connections; being this logger is what marks a gateway listener
SERVER_LOGGER = logging.getLogger("gateway.http")
# aiohttp's keep-alive timer, which also closes a connection whose request head is still arriving this long
# after it opened or after its last answer (no handler runs before the head is whole, so nothing else
# would). run_app's own default, set here so that every way of running the app gets it: AppRunner's and
# the test servers' default is an hour.
KEEPALIVE_S = 75.0
# the `Server` header of every answer of the gateway's listeners, in place of aiohttp's, which names its
# own release and Python's: no version, nothing for a scanner to look up
SERVER_NAME = "llm-edge-gateway"
# the HTTP versions served; 1.1 first, which `in` finds by identity (aiohttp's C parser's own objects)
SERVED_VERSIONS = (HttpVersion11, HttpVersion10)
CONTINUE = "100-continue"
CONTINUED = web.RequestKey("continued", bool)  # the request's 100 Continue went out
CUT_OFF = frozenset({408, 413})  # refusals of a body as it arrives: what is left of it is not waited for
LINGER_S = 10.0  # aiohttp's lingering time: the longest a refused body's rest is read and dropped
LINGER_IDLE_S = 2.0  # ... and the silence that ends it (a client writing its body at speed is never this quiet)
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
    for what its parser refused (400), for what escaped the handler (500, 504: the gateway's middleware
    answers those itself) and for the expectation `_expect` refused (417, raised before any middleware),
    and closes the connection after the answer."""
    if self.logger is not SERVER_LOGGER:
        return _aiohttps_answer(self, request, status, exc, message)
    if request.writer.output_size > 0:  # as aiohttp: an answer is under way, another cannot follow
        raise ConnectionError("Response is sent already, cannot send another response with the error message")
    request_id = "req_" + random.randbytes(16).hex()
    if isinstance(exc, GatewayError):  # an expectation `_expect` refused, before any middleware
        err: GatewayError = exc
        status = err.status
        log.info("unmet expectation refused", request_id=request_id, status=status, error=err.code)
    elif status >= 500:
        self.log_exception("Error handling request", exc_info=exc)
        err = GatewayError("The gateway failed to handle this request.", code="internal_error", status=status)
    else:
        err = refusal(exc, self)
        err.status = status  # aiohttp's: 400 for whatever its parser refuses
        log.info("malformed request refused", request_id=request_id, status=status, error=err.code,
                 reason=err.message)
    metrics.child(metrics.REQUESTS, "unmatched", metrics.UNKNOWN, metrics.UNKNOWN, metrics.status_class(status)).inc()
    response = error_response(err, request_id, request.path.startswith(ANTHROPIC_PATH))
    response.headers[hdrs.SERVER] = SERVER_NAME  # a parser's refusal has no route, so no prepare hook runs
    response.force_close()
    return response


_aiohttps_expect = web_urldispatcher._default_expect_handler


async def _expect(request: web.Request) -> None:
    """aiohttp's default `Expect` handler, on the gateway's listeners: the 100 Continue is owed until the
    handler first waits for the body (`send_continue`), so that a client is told to send it only once its
    key and the declared length were accepted; any other expectation is raised, answered by
    `_handle_error` (a 417, the connection closed: its body was never read). An HTTP/1.0 request's
    expectation is ignored, as aiohttp does (RFC 9110 10.1.1), as are those of versions not served (505)."""
    if request.protocol.logger is not SERVER_LOGGER:
        await _aiohttps_expect(request)
    elif request.version == HttpVersion11 and request.headers.get(hdrs.EXPECT, "").lower() != CONTINUE:
        raise GatewayError("This server meets no expectation but 100-continue: send the request without its "
                           "Expect header.", status=417, type_="invalid_request_error", code="expectation_failed")


def _owes_continue(request: web.Request) -> bool:
    """An HTTP/1.1 request whose `Expect: 100-continue` has had no 100 yet: its client may still hold its body."""
    return (request.version == HttpVersion11 and not request.get(CONTINUED)
            and request.headers.get(hdrs.EXPECT, "").lower() == CONTINUE)


async def send_continue(request: web.Request) -> None:
    """The `100 Continue` an HTTP/1.1 request with `Expect: 100-continue` waits for, sent when its handler
    first waits for the body (`requests.read_limited`, after the key and the declared length passed). A
    client may have sent the body anyway (curl does after a second): it is read as usual."""
    if _owes_continue(request):
        request[CONTINUED] = True
        try:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # as aiohttp's: the answer itself has not begun
            await request.writer.drain()
        except ConnectionError as exc:  # the client left while it waited: its 499, not a gateway failure
            raise GatewayError("The client closed its connection before sending the body.", status=499,
                               type_="invalid_request_error", code="client_closed_request") from exc


def version_not_served() -> GatewayError:
    """For a request line in an HTTP version other than 1.1 and 1.0 (aiohttp's parser lets 2.0 and 0.9
    through, and would serve them); a retry cannot help."""
    return GatewayError("This server speaks HTTP/1.1 (and HTTP/1.0): send the request as HTTP/1.1.", status=505,
                        type_="invalid_request_error", code="http_version_not_supported", headers=no_client_retry())


def refused(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """A middleware's error answer, with the connection closed after it when what the client sends next
    cannot be read safely: a request in an HTTP version not served (answered as HTTP/1.1, the only version
    the gateway speaks: RFC 9110 6.2), a client still waiting for the 100 Continue before its body (its
    next bytes could be that body or its next request: aiohttp discards what comes for at most its lingering
    time, 10 s, and serves none of it), and a body refused before it was read whole (`hang_up`)."""
    if request.version not in SERVED_VERSIONS:
        request._cache["version"] = HttpVersion11  # the status line's version (`check_version_pin`)
        response.force_close()
    elif not request.content.is_eof() and (response.status in CUT_OFF or _owes_continue(request)):
        response.force_close()
    return response


async def hang_up(request: web.Request, response: web.StreamResponse) -> None:
    """End the connection of a body refused before it was read whole (408: it stalled or was too slow;
    413: past the limit), once the refusal is written: such a connection cannot carry another request, and
    aiohttp would keep it open up to its lingering time, 10 s, waiting for a rest that a stalled client
    never sends. The client reads the refusal and the end of the connection at once (a FIN after it); what
    it still sends is read and dropped until it is silent for `LINGER_IDLE_S` (at most `LINGER_S`), as
    closing with its bytes unread would reset the connection, and a client still writing its body (as the
    SDKs do before they read) would lose its refusal to the reset."""
    transport = request.transport
    if response.status not in CUT_OFF or response.keep_alive or request.content.is_eof() or transport is None:
        return
    if transport.can_write_eof():
        transport.write_eof()  # after the refusal, which is still being flushed
    loop = asyncio.get_running_loop()
    ends = loop.time() + LINGER_S
    try:
        while loop.time() < ends:
            async with asyncio.timeout(min(LINGER_IDLE_S, ends - loop.time())):
                if not await request.content.readany():
                    break
    except (TimeoutError, ConnectionError, HttpProcessingError):  # silent, gone, or its framing broke
        pass
    request.protocol.force_close()


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


def check_expect_hook(module: Any = web_urldispatcher) -> None:
    """Refuse to start on an aiohttp whose routes' default `Expect` handler moved or changed shape."""
    hook = getattr(module, "_default_expect_handler", None)
    if not inspect.iscoroutinefunction(hook) or list(inspect.signature(hook).parameters) != ["request"]:
        raise ImportError(f"{module.__name__}._default_expect_handler is gone or changed, and gateway.edge "
                          "replaces it: install the aiohttp version pyproject.toml names")


def check_version_pin(owner: type = web.BaseRequest) -> None:
    """`refused` answers in HTTP/1.1 by setting the request's cached `version`: refuse an aiohttp whose
    request keeps it elsewhere."""
    if not isinstance(owner.__dict__.get("version"), reify) or "_cache" not in getattr(owner, "ATTRS", ()):
        raise ImportError(f"{owner.__module__}.{owner.__qualname__}.version is no longer cached in `_cache`, "
                          "which gateway.edge sets: install the aiohttp version pyproject.toml names")


def _install_expect_hook() -> None:
    """Routes take the module's default when they are made: one made now must take ours."""
    check_expect_hook()
    web_urldispatcher._default_expect_handler = _expect
    route = web.UrlDispatcher().add_get("/", _expect)  # type: ignore[arg-type]  # never served: any coroutine
    if getattr(route, "_expect_handler", None) is not _expect:
        raise ImportError("aiohttp's routes no longer take web_urldispatcher._default_expect_handler, which "
                          "gateway.edge replaces: install the aiohttp version pyproject.toml names")


check_hook()
check_version_pin()
RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
_install_expect_hook()
