"""Upstream I/O: send one translated request, read its answer under split timeouts, map failures.

Timeouts are split, never total: `connect_s` to open the connection (through the proxy, if any),
`first_byte_s` until the upstream's response headers, and `between_chunks_s` for any silence inside a
body. A reasoning model may stream for ten minutes; only a stalled one is cut.

Lower-layer errors become gateway errors here and nowhere else:
direct connection refused -> UpstreamFailed (502), direct connect or first-byte timeout -> UpstreamTimeout
(504), no way out of a proxy pool -> Unavailable (503 egress_unavailable), upstream 4xx -> UpstreamRejected (its
own status), 5xx -> UpstreamFailed. Retryable are only failures before the request body left and
answers with a status; a connection lost after the body was sent (`upstream_disconnected`), a timeout
after it, and anything going wrong inside an answer's body are not: the upstream may be acting on it.
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
from collections.abc import Awaitable, Callable

import aiohttp

from egress.pool import DIRECT, Egress, EgressUnavailable, Exit
from egress.proxy import PROXY_ERRORS, Progress, failure_outcome, watching
from gateway import resilience
from gateway.errors import GatewayError, Unavailable, UpstreamFailed, UpstreamRejected, UpstreamTimeout, no_client_retry
from providers.types import UpstreamHTTPError, UpstreamRequest

MAX_UPSTREAM_BODY = 64 * 1024 * 1024  # a non-streamed answer larger than this is not a chat answer


def egress_unavailable(provider: str, refusal: EgressUnavailable) -> Unavailable:
    """503 egress_unavailable: retryable, since a fallback model may leave by another route. `Retry-After` as the
    pool tells it (`Egress.unavailable`): absent only when no probe can restore a way out."""
    wait = refusal.retry_after_s
    headers = {"Retry-After": str(wait)} if wait is not None else None
    return Unavailable(f"No way out to provider {provider}: {refusal}.", code="egress_unavailable", retryable=True,
                       headers=headers)


async def open_upstream(egress: Egress, pool: str, affinity_key: str | None, blocked: frozenset[str],
                        req: UpstreamRequest, connect_s: float, first_byte_s: float,
                        provider: str, max_idle_s: float | None = None) -> tuple[aiohttp.ClientResponse, Exit]:
    """Send the request through the provider's pool; return once the upstream's headers arrived.

    A way out that fails before the request reached the upstream (proxy refused, handshake failed,
    connect timeout) counts against that proxy and the next exit is tried at once (the direct route last,
    when the pool may fall back to it); once the request body was sent, there is no resend, here or by a
    retry (the error is not retryable). The request's deadline running out while connecting is nobody's
    failure and leaves no time for another exit. A pooled connection idle for `max_idle_s` (the provider's
    `timeouts.pool_idle_s`) is not reused: the upstream may be closing it as the request goes out.
    """
    try:
        exits = egress.plan(pool, affinity_key, blocked)
    except EgressUnavailable as exc:
        raise egress_unavailable(provider, exc) from exc
    timeout, own_s = _connect_timeout(connect_s), first_byte_s + connect_s
    for exit_ in exits:
        if exit_.proxy is None and pool != DIRECT:
            egress.leaving_direct(pool)
        progress = Progress(False, max_idle_s)
        wait_s = _header_wait(own_s)
        try:
            with watching(progress):
                async with asyncio.timeout(wait_s) as waited:
                    resp = await exit_.session.request(req.method, req.url, headers=req.headers, data=req.body,
                                                       timeout=timeout, allow_redirects=False)
        except (TimeoutError, aiohttp.ClientError, OSError, EOFError, *PROXY_ERRORS) as exc:  # type: ignore[misc]
            if (bad_certificate := _certificate_error(exc)) is not None:
                # The way out worked (the upstream's certificate came back through it): another exit would
                # meet the same certificate, and the proxy must not be ejected for it.
                egress.succeeded(exit_)
                raise UpstreamFailed(f"provider {provider}'s TLS certificate could not be verified "
                                     f"({bad_certificate.verify_message}); the request was not sent",
                                     code="upstream_tls_error", retryable=False) from exc
            if not progress.connected and waited.expired() and wait_s < own_s:
                # the request's deadline came before the exit's own connect timeout: not the exit's failure
                raise UpstreamTimeout(f"provider {provider}: the request's deadline (retries.deadline_s) ran out "
                                      "before a connection was made; the request was not sent") from exc
            if not progress.connected:  # the request never left: this way out failed, try the next
                egress.failed(exit_, failure_outcome(exc))
                last: BaseException = exc
                continue
            if isinstance(exc, aiohttp.ClientResponseError):
                # An answer came back through the way out, but its head is unreadable (a header over aiohttp's
                # limit, a garbled status line): the upstream's fault, not the proxy's, and no broken connection.
                egress.succeeded(exit_)
                raise UpstreamFailed(f"provider {provider} sent an answer the gateway could not read "
                                     f"({type(exc).__name__}); not resent, as the provider may have acted on it",
                                     code="upstream_bad_response", retryable=False) from exc
            if not isinstance(exc, TimeoutError):  # a slow upstream is not the proxy's failure
                egress.failed(exit_, "reset")
            raise _broken_after_sending(exc, provider) from exc
        egress.succeeded(exit_)
        return resp, exit_
    if exits[-1].proxy is None:  # the direct route (or a pool's fallback to it) failed last: the upstream's
        if isinstance(last, TimeoutError):  # the connection never completed: the upstream's timeout (504)
            raise UpstreamTimeout(f"provider {provider} did not accept a connection within {connect_s:g} s; "
                                  "the request was not sent") from last
        raise UpstreamFailed(f"provider {provider} is unreachable ({type(last).__name__})",
                             code="upstream_unreachable") from last
    refusal = egress.unavailable(pool, "every proxy tried failed to connect", blocked)
    raise egress_unavailable(provider, refusal) from last


@functools.lru_cache(maxsize=64)
def _connect_timeout(connect_s: float) -> aiohttp.ClientTimeout:
    """aiohttp's timeout for connecting (the rest is ours): one per configured value, not one per request."""
    return aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s)


def _certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind `exc`: aiohttp raises its own type for a direct
    connection, while through aiohttp-socks it arrives as a ClientOSError caused by the ssl error. A proxy
    error is the proxy's, whatever caused it (an `https://` proxy's own certificate): never the upstream's."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None or isinstance(seen, PROXY_ERRORS):
            return None
        if isinstance(seen, aiohttp.ClientConnectorCertificateError):
            seen = seen.certificate_error
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _header_wait(own_s: float) -> float:
    """How long this attempt may wait for headers: its own timeouts, or less when the request's deadline
    (retries and fallbacks included) comes first."""
    left = resilience.attempt_time_left()
    return own_s if left is None else min(own_s, left)


def _broken_after_sending(exc: BaseException, provider: str) -> GatewayError:
    """A connection that failed after the request had it (so was sent) but before the upstream's headers.

    The upstream may be generating (and billing) an answer we will never see: resending would pay twice,
    so the client gets the error instead.
    """
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"provider {provider} did not answer in time", retryable=False,
                               headers=no_client_retry())
    return UpstreamFailed(f"provider {provider}: the connection broke after the request was sent and before "
                          f"an answer ({type(exc).__name__}); not resent, as the provider may have acted on it",
                          code="upstream_disconnected", retryable=False, headers=no_client_retry())


async def next_data(content: aiohttp.StreamReader, silence_s: float, tick_s: float,
                    on_tick: Callable[[], Awaitable[None]] | None = None) -> bytes:
    """The next piece of an upstream body (b"" at its end).

    Buffered bytes are returned at once without scheduling anything; otherwise wait, calling `on_tick`
    every `tick_s` of silence (SSE keep-alive, disconnect check) and giving up after `silence_s`. The
    wait is the reader's own under a deadline (no task of its own): a long stream waits once a read.
    """
    if content.at_eof():
        return b""
    data = content.read_nowait()
    if data:
        return data
    waited = 0.0
    while True:
        deadline = asyncio.timeout(min(tick_s, silence_s - waited))
        try:
            async with deadline:
                return await content.readany()  # cancelled by the deadline: nothing was read
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours
        waited += tick_s
        if waited >= silence_s:
            raise UpstreamTimeout("the upstream went silent mid-answer", code="upstream_stalled",
                                  retryable=False)  # it was answering: no resend
        if on_tick is not None:
            await on_tick()


async def read_some(resp: aiohttp.ClientResponse, silence_s: float) -> bytes:
    """The next bytes of an upstream body (b"" at its end); a broken connection is the upstream's 502."""
    try:
        return await next_data(resp.content, silence_s, silence_s)
    except aiohttp.ClientError as exc:
        raise UpstreamFailed(f"the upstream connection broke mid-answer ({type(exc).__name__})",
                             code="upstream_disconnected", retryable=False) from exc


async def read_body(resp: aiohttp.ClientResponse, silence_s: float, head: bytes = b"") -> bytes:
    """A whole upstream body (`head`: its first bytes, already read), its pieces joined once: a growing
    bytearray and `bytes()` copy a big answer (an embeddings batch, images as base64) two times more, in
    fresh memory the kernel faults in page by page (`read_limited` in gateway.requests, bench/README.md)."""
    pieces, size = ([head] if head else []), len(head)
    while data := await read_some(resp, silence_s):
        pieces.append(data)
        size += len(data)
        if size > MAX_UPSTREAM_BODY:
            raise UpstreamFailed(f"the upstream's answer is too large (over {MAX_UPSTREAM_BODY} bytes)",
                                 code="upstream_bad_response", retryable=False)
    return b"".join(pieces)


_HTML = re.compile(r"^\s*<(!doctype html|html|head|body)\b", re.IGNORECASE)
_TITLE = re.compile(r"<(title|h1)\b[^>]*>([^<]{1,200})<", re.IGNORECASE)


def _unhtml(message: str) -> str:
    """A load balancer's HTML error page (nginx, Cloudflare) as one readable line, not markup."""
    if not _HTML.match(message):
        return message
    title = _TITLE.search(message)
    text = " ".join(title.group(2).split()) if title else ""
    return f"an HTML error page ({text})" if text else "an HTML error page"


async def html_for_stream(resp: aiohttp.ClientResponse, provider: str, silence_s: float,
                          scrub: Callable[[str], str]) -> GatewayError:
    """A 200 HTML page where an event stream was asked for (a captive portal, a CDN's page): unreadable, so a
    502 before the client's headers go out, naming the page. Not resent: the upstream answered."""
    text = scrub((await read_body(resp, silence_s)).decode("utf-8", "replace"))
    page = _unhtml(text) if _HTML.match(text) else "an HTML page"
    return UpstreamFailed(f"provider {provider} answered a stream with {page}, not an event stream",
                          code="upstream_bad_response", retryable=False)


def map_upstream_error(err: UpstreamHTTPError, provider: str, own_key: bool,
                       scrub: Callable[[str], str], retry_after: str | None = None) -> GatewayError:
    """An upstream's refusal as the client should see it, with no secret in its message.

    A 401/403 on the operator's configured key is the operator's problem, not the client's: it becomes a
    502 naming the provider, so a client never believes its own gateway key was refused. So is a 402 on it
    (the operator's account at the provider ran dry), as is OpenAI's 429 `insufficient_quota`: a 503, never the
    client's own 402 `insufficient_quota`. A 404 on it means the configured route names a model the provider
    does not serve: a 502 a fallback may still answer.
    """
    message = scrub(_unhtml(err.message)) or f"provider {provider} answered HTTP {err.status}"
    headers = {"Retry-After": retry_after} if retry_after and (err.status == 429 or err.status >= 500) else {}
    if 300 <= err.status < 400:  # never followed: it would resend the prompt and the key headers elsewhere
        return UpstreamFailed(f"provider {provider} answered with a redirect (HTTP {err.status}), which the "
                              f"gateway does not follow: a prompt and a provider key go only where the config "
                              f"sends them. Check providers.{provider}.base_url.", code="upstream_redirect",
                              headers=no_client_retry())
    if err.key_refused and not own_key:
        return UpstreamFailed(f"provider {provider} refused the gateway's configured credentials "
                              f"(HTTP {err.status}): {message}", code="upstream_auth_failed", retryable=False,
                              headers=no_client_retry())
    if (err.status == 402 or err.code == "insufficient_quota") and not own_key:
        # OpenRouter's "Insufficient credits", DeepSeek's "Insufficient Balance", OpenAI's 429 quota (which the
        # SDKs would retry as a rate limit, and whose code is the gateway's own for the client's balance)
        return Unavailable(f"provider {provider} refused the request: the gateway's account there has no "
                           f"credit left (HTTP 402): {message}", code="upstream_insufficient_credits",
                           retryable=False, headers=no_client_retry())
    if err.status == 404 and not own_key:
        # Ollama's "model not found, try pulling it first", a retired or misspelt `upstream` id: the route the
        # config gives is wrong, not the model the client named (which /v1/models lists)
        return UpstreamFailed(f"provider {provider} does not serve the model this route names (HTTP 404): "
                              f"{message}", code="upstream_model_not_found")
    if err.status == 529 or err.code == "overloaded_error":
        return Unavailable(f"provider {provider} is overloaded: {message}", code="upstream_overloaded",
                           retryable=True, headers=headers)
    if 400 <= err.status < 500:
        return UpstreamRejected(message, status=err.status, type_=err.type or "invalid_request_error",
                                code=err.code, param=err.param, headers=headers, retryable=err.status == 429)
    return UpstreamFailed(f"provider {provider} failed (HTTP {err.status}): {message}",
                          code="upstream_error", headers=headers)
