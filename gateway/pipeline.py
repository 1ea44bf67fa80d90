"""The pipeline every endpoint shares: preset -> catalog -> checks -> admit -> translate -> egress -> relay ->
settle, streamed or not (`serve`). What differs per API (chat, completions, embeddings, Anthropic's
format...) is a `gateway.exchange.Endpoint`; the handlers in `gateway.handlers` read and check their body,
then hand it here.

The client's response headers go out only after the upstream answered 2xx, so an upstream refusal still
reaches the client as a proper HTTP status. From then on each upstream event is relayed as soon as it
arrives, with keep-alive comments while the upstream is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import time
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from egress.pool import Egress, EgressUnavailable
from gateway import caps, limits, metering, metrics, presets, resilience, routing, streaming, validation
from gateway.auth import model_allowed
from gateway.catalog import Route, without_stream_options
from gateway.config import Config
from gateway.errors import Forbidden, GatewayError, InvalidRequest, Unavailable, UpstreamFailed, no_client_retry
from gateway.exchange import Endpoint, Exchange
from gateway.images import has_images, has_remote_images, inline_remote_images
from gateway.logging import get_logger, redactor
from gateway.relay import (
    egress_unavailable,
    html_for_stream,
    map_upstream_error,
    open_upstream,
    read_body,
    read_some,
)
from gateway.sse import ClientGone, SSEWriter
from gateway.state import KEY, LOG, RATE_HEADERS, REQUEST_ID, RUNTIME
from gateway.streaming import StreamCodec
from providers.types import ProviderError, Target, UpstreamHTTPError, UpstreamRequest, Usage

GATEWAY_FIELDS = ("provider_api_key", "models")  # ours (BYOK, OpenRouter's fallback list), never forwarded
log = get_logger("gateway.pipeline")


def _client_key(request: web.Request, body: dict[str, Any]) -> str:
    """The client's own provider key (BYOK), or "" when it sent none."""
    return body.get("provider_api_key") or request.headers.get("X-Provider-Api-Key") or ""


def _unconfigured(route: Route) -> bool:
    """The provider needs a key (`api_key_env`) and the operator set none."""
    return not route.provider.api_key and bool(route.provider.api_key_env)


def _provider_key(request: web.Request, body: dict[str, Any], route: Route) -> tuple[str, bool]:
    """The key to call the provider with, and whether it is the client's own (BYOK)."""
    byok = _client_key(request, body)
    if byok:
        redactor.protect(validation.check_provider_key(byok))  # it goes into a header: printable ASCII only
        return byok, True
    prov = route.provider
    if _unconfigured(route):
        raise Unavailable(
            f"Provider '{route.provider_name}' has no API key configured on this gateway: the operator "
            f"must set {prov.api_key_env}, or send your own key in 'provider_api_key' or the "
            "X-Provider-Api-Key header.", code="provider_not_configured", headers=no_client_retry())
    return prov.api_key, False


async def _inline_images(egress: Egress, route: Route, affinity: str, blocked: frozenset[str],
                         body: dict[str, Any]) -> dict[str, Any]:
    """Image URLs as bytes for upstreams that take only bytes, fetched along the provider's own way out."""
    try:
        exit_ = egress.plan(route.provider.egress, affinity, blocked)[0]
    except EgressUnavailable as exc:
        raise egress_unavailable(route.provider_name, exc) from exc
    return await inline_remote_images(body, exit_.session, resolve_locally=exit_.resolves_locally)


def _affinity_key(route: Route, api_key: str) -> str:
    """Which identity the provider sees: its API key (hashed: the pool never holds a key)."""
    return hashlib.sha256(f"{route.provider_name}\0{api_key}".encode()).hexdigest()


def _scrubber(own_key: str) -> Any:
    def scrub(text: str) -> str:
        if own_key:
            text = text.replace(own_key, "[REDACTED]")
        return redactor.scrub(text)
    return scrub


async def serve(request: web.Request, body: dict[str, Any], op: Endpoint) -> web.StreamResponse:
    """Any endpoint's request through the pipeline: preset, candidates and checks, then `_serve_first`.

    A key allowed a preset (`@preset/name`) may use the preset's model through it.
    """
    snapshot = request.app[RUNTIME].snapshot
    key = request[KEY]
    asked = body.get("model")
    preset = presets.lookup(snapshot.config.presets, asked)
    if preset is not None:
        body = op.apply_preset(preset, body)
        request[LOG]["preset"] = asked
    routes = routing.candidates(snapshot.catalog, body)
    images = has_images(body)
    primary = routes[0]
    request[LOG]["streamed"] = bool(body.get("stream"))

    def allowed(model_id: str) -> bool:  # a preset grants its own model only, not what the body lists
        return model_allowed(key, model_id) or (preset is not None and model_id == primary.model_id
                                                and model_allowed(key, str(asked)))

    if not allowed(primary.model_id):
        raise Forbidden(f"This key may not use model '{asked if preset else primary.model_id}'.",
                        code="model_not_allowed", param="model")
    if images and not primary.model.vision:
        raise InvalidRequest(f"Model '{primary.model_id}' does not accept images.", code="model_not_vision",
                             param="messages")
    validation.check_route(body, primary, op.name)
    caps.check_max_tokens(body, key)
    byok = bool(_client_key(request, body))  # a client's key is for one provider: its fallbacks stay there
    # a fallback is skipped when it cannot give what was asked (images, choices, max_tokens), or when its
    # provider has no key here (the request asked for another model: that one's answer is the client's)
    usable = [r for r in routes if allowed(r.model_id) and (r.model.vision or not images)
              and validation.serves(body, r, op.name) and validation.within_output_cap(body, r)
              and not (byok and r.provider_name != primary.provider_name)
              and (r is primary or byok or not _unconfigured(r))]
    return await _serve_first(request, snapshot.config, usable, body, op, images)


async def _serve_first(request: web.Request, config: Config, routes: list[Route], body: dict[str, Any],
                       op: Endpoint, images: bool) -> web.StreamResponse:
    """Try each candidate, retrying retryable failures, until one answers or the deadline passes. Every
    attempt runs on the config the request started with (its routes are that config's): a reload meanwhile
    applies to the next request."""
    return await resilience.serve_first(request.app[RUNTIME].guard, config.retries, routes,
                                        lambda route: _serve(request, config, route, body, op, images))


async def _serve(request: web.Request, config: Config, route: Route, body: dict[str, Any],
                 op: Endpoint, images: bool) -> web.StreamResponse:
    """One attempt on one model: translate, admit (hold + limits), call, settle — whatever happens.

    The translation comes first, so a request this model's provider cannot express is refused (or moves
    on to a fallback) before it counts against the key's limits. Only a body whose remote images must be
    fetched for the upstream is translated after admission: a key that would be refused must not make
    the gateway fetch anything.
    """
    runtime = request.app[RUNTIME]
    fields = request[LOG]
    fields.update(model=route.model_id, provider=route.provider_name)
    fields["attempts"] = fields.get("attempts", 0) + 1
    exchange = op.exchange(route)
    api_key, byok = _provider_key(request, body, route)
    key = request[KEY]
    if op.name in validation.CHOICE_ENDPOINTS:  # the key's output cap, within this attempt's model
        body = caps.fill_max_tokens(body, key, route.model.max_output_tokens)
    streamed = bool(body.get("stream"))
    clean = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    quiet = streamed and route.learned.refuses_stream_options and "stream_options" not in clean
    target = _capped(route.target(api_key, quiet), key.max_tokens)
    inline = images and exchange.needs_inline_images and has_remote_images(clean)  # `images`: of the same messages
    upstream_request = None if inline else _translate(exchange, route, clean, target, streamed)
    ticket = await metering.admit(runtime.store, runtime.settlements, config, route, key, body, byok, streamed,
                                  op.worst_case(body, route, config), op.name)
    request[RATE_HEADERS] = limits.headers(ticket.admitted)
    fields["generation_id"] = ticket.generation_id
    outcome = metering.Outcome(status=502)  # until the upstream answers well, an exit releases the hold
    try:
        if upstream_request is None:
            clean = await _inline_images(runtime.egress, route, _affinity_key(route, api_key),
                                         frozenset(route.provider.blocked_regions), clean)
            upstream_request = _translate(exchange, route, clean, target, streamed)
        return await _call(request, route, op, exchange, upstream_request, clean, target, api_key, byok, ticket,
                           outcome)
    finally:
        await metering.close(ticket, outcome)
        fields.update(prompt_tokens=outcome.usage.prompt_tokens, completion_tokens=outcome.usage.completion_tokens)


def _translate(exchange: Exchange, route: Route, clean: dict[str, Any], target: Target,
               streamed: bool) -> UpstreamRequest:
    try:
        return exchange.build(clean, target, streamed)
    except ProviderError as exc:  # nothing was sent: a fallback of another kind may take it (routing)
        raise InvalidRequest(f"This request cannot be sent to {route.model_id}: {exc}", code="untranslatable",
                             param=getattr(exc, "param", None), retryable=True) from exc


async def _call(request: web.Request, route: Route, op: Endpoint, exchange: Exchange,
                upstream_request: UpstreamRequest, clean: dict[str, Any], target: Target, api_key: str, byok: bool,
                ticket: metering.Ticket, outcome: metering.Outcome) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    affinity, blocked = _affinity_key(route, api_key), frozenset(route.provider.blocked_regions)
    t = route.provider.timeouts
    asked = time.perf_counter()
    resp, exit_ = await open_upstream(runtime.egress, route.provider.egress, affinity, blocked, upstream_request,
                                      t.connect_s, t.first_byte_s, route.provider_name, route.provider.pool_idle_s)
    metrics.child(metrics.UPSTREAM, route.provider_name, route.model_id).observe(time.perf_counter() - asked)
    ticket.egress = request[LOG]["egress"] = exit_.name
    scrub = _scrubber(api_key if byok else "")
    try:
        if resp.status >= 300:
            raw = await read_body(resp, t.between_chunks_s)
            if _refused_added_stream_options(resp.status, raw, upstream_request, clean, target):
                resp.close()
                target = _learn_refuses_stream_options(route, target)
                upstream_request = _translate(exchange, route, clean, target, ticket.streamed)
                return await _call(request, route, op, exchange, upstream_request, clean, target, api_key, byok,
                                   ticket, outcome)
            # scrubbed whole, before an adapter cuts its text short: a key cut in two is no longer recognised
            err = exchange.parse_error(resp.status, scrub(raw.decode("utf-8", "replace")).encode())
            outcome.status = request[LOG]["upstream_status"] = resp.status
            log.warning("upstream refused", provider=route.provider_name, status=resp.status,
                        upstream_message=err.message[:500])
            raise map_upstream_error(err, route.provider_name, byok, scrub,
                                   resp.headers.get("Retry-After") or err.retry_after)
        if ticket.streamed:
            if resp.content_type == "text/html":  # nothing went out yet: a proper status, not a broken stream
                raise await html_for_stream(resp, route.provider_name, t.between_chunks_s, scrub)
            codec = exchange.codec(clean, target, ticket.generation_id, op.wants_usage(clean))
            whole, head = None, b""
            if resp.content_type == "application/json":  # decided once, at the answer's head
                head = await read_some(resp, t.between_chunks_s)
                if head.lstrip()[:1] in (b"{", b"["):  # it ignored `stream` (else: an event stream mislabelled)
                    whole = await _replay(resp, head, codec, target, scrub, t.between_chunks_s)
            return await _relay_stream(request, resp, codec, op, clean, target, ticket, outcome, scrub, whole, head)
        return await _relay_json(resp, exchange, op, clean, target, ticket, outcome, scrub)
    finally:
        resp.close()


def _refused_added_stream_options(status: int, raw: bytes, sent: UpstreamRequest, clean: dict[str, Any],
                                  target: Target) -> bool:
    """A strict OpenAI-compatible server (Pydantic's `extra="forbid"`: 400 or 422 `extra_forbidden`) refused the
    `stream_options` the gateway added to a stream whose client sent none: the request may go again without it,
    since nothing was generated. A client's own `stream_options` gets the refusal, as it would from the server."""
    return (status in (400, 422) and sent.stream and "stream_options" not in clean
            and "stream_options" not in target.drop and b"stream_options" in raw
            and b'"stream_options":' in sent.body)


def _learn_refuses_stream_options(route: Route, target: Target) -> Target:
    """Remember (for this config's life, in this process) that the provider refuses `stream_options`, saying so
    once; the target to send this request again with."""
    if not route.learned.refuses_stream_options:
        route.learned.refuses_stream_options = True
        log.warning("upstream refuses stream_options; its streams are sent without it from now on",
                    provider=route.provider_name, model=route.model_id)
    return without_stream_options(target)


def _capped(target: Target, key_cap: int | None) -> Target:
    """The key's output cap as the most the translation may give the upstream: Claude's thinking raises
    max_tokens above the client's ask, and a capped key must not get more than its cap that way either."""
    if not key_cap:
        return target
    ceiling = min(key_cap, target.default_max_tokens) if target.default_max_tokens else key_cap
    return dataclasses.replace(target, default_max_tokens=ceiling)


async def _relay_json(resp: aiohttp.ClientResponse, exchange: Exchange, op: Endpoint, body: dict[str, Any],
                      target: Target, ticket: metering.Ticket, outcome: metering.Outcome,
                      scrub: Any) -> web.Response:
    raw = await read_body(resp, ticket.route.provider.timeouts.between_chunks_s)
    try:
        reply = exchange.parse(raw, target)
    except ProviderError as exc:
        raise _unreadable(target, exc, scrub) from exc
    outcome.status, outcome.upstream_id, outcome.finish_reason = 200, reply.upstream_id, reply.finish_reason
    outcome.usage, outcome.estimated = reply.usage, not reply.usage.reported
    if outcome.estimated:
        outcome.usage = reply.usage = _estimate(op, body, reply.text_bytes, reply.usage.service_tier)
    bill = await ticket.settle(outcome)
    answer = op.present(reply, bill, ticket.generation_id)
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


def _estimate(op: Endpoint, body: dict[str, Any], text_bytes: int, tier: str) -> Usage:
    """The endpoint's estimate of usage an upstream did not report, at the processing tier its answer named."""
    usage = op.estimate(body, text_bytes)
    return dataclasses.replace(usage, service_tier=tier) if tier else usage


def _unreadable(target: Target, exc: ProviderError, scrub: Any) -> UpstreamFailed:
    """A 200 answer the adapter cannot read; its text may be the upstream's own (an error inside a 200): scrubbed.
    Not resent: it answered."""
    return UpstreamFailed(f"provider {target.provider} sent an answer the gateway cannot read: {scrub(str(exc))}",
                          code="upstream_bad_response", retryable=False)


async def _replay(resp: aiohttp.ClientResponse, head: bytes, codec: StreamCodec, target: Target, scrub: Any,
                  silence_s: float) -> tuple[bytes, int]:
    """A JSON answer to a streamed request (a compatible server or a proxy that drops `stream`), `head` its first
    bytes, as the stream's bytes, read before the client's headers go out: an unreadable one, or an error object,
    is a proper 502."""
    raw = await read_body(resp, silence_s, head)
    try:
        return codec.replay(raw, target)
    except ProviderError as exc:
        raise _unreadable(target, exc, scrub) from exc


async def _relay_stream(request: web.Request, resp: aiohttp.ClientResponse, codec: StreamCodec, op: Endpoint,
                        body: dict[str, Any], target: Target, ticket: metering.Ticket, outcome: metering.Outcome,
                        scrub: Any, whole: tuple[bytes, int] | None = None, head: bytes = b"") -> web.StreamResponse:
    """The upstream's stream relayed as it comes (`head`: its first bytes, already read), or `whole`, a JSON
    answer already made into the stream's bytes (and the text they hold), sent at once; billed alike, from the
    usage the codec's state holds."""
    config = ticket.config  # the request's own, as every attempt's
    out = SSEWriter(request)
    state = codec.state
    relayed = streaming.Relayed()
    fields = request[LOG]

    def account(status: int) -> None:
        codec.catch_up()  # the usage so far of events relayed from their bytes (Gemini's)
        outcome.status, outcome.finish_reason, outcome.upstream_id = status, state.finish_reason, state.response_id
        outcome.first_token_at = relayed.first_at
        if state.usage.reported:
            outcome.usage = state.usage
            if not state.done and relayed.text_bytes:  # a cut stream's usage may be a running count (Gemini
                guess = op.estimate(body, relayed.text_bytes)  # sends candidatesTokenCount only at the end)
                if guess.completion_tokens > state.usage.completion_tokens:
                    outcome.usage = dataclasses.replace(state.usage, completion_tokens=guess.completion_tokens)
                    outcome.estimated = True
        elif relayed.text_bytes or status in (200, 499):  # a client that left before any text still had its
            # prompt read by an upstream that had accepted it (a reasoning model may think for minutes), and so
            # had one whose answer came whole but empty (a non-streamed answer is billed its prompt too)
            tier = state.service_tier or state.usage.service_tier  # its chunks', or a replayed answer's
            outcome.usage, outcome.estimated = _estimate(op, body, relayed.text_bytes, tier), True

    metrics.ACTIVE_STREAMS.inc()
    try:
        await out.start()
        if whole is None:
            await streaming.pump(resp, codec, out, target_silence(ticket), config.server.sse_keepalive_s, relayed,
                                 time.time, head)
        else:
            relayed.first_at, relayed.text_bytes = time.time(), whole[1]
            await out.write(whole[0])
        account(200)
        bill = await ticket.settle(outcome)
        billing_event = config.billing.stream_billing_event or request.headers.get("X-Billing-Event", "") == "true"
        await streaming.finish(out, codec, bill.block(), billing_event, outcome.usage)
    except ClientGone:
        outcome.cancelled = True
        account(499)  # nginx's "client closed request"; the upstream is closed by our caller
        fields["status"] = 499
    except asyncio.CancelledError:
        outcome.cancelled = True
        account(499)
        raise
    except Exception as exc:  # the stream is open: no new HTTP response can follow it, an error event can
        if isinstance(exc, GatewayError):
            err = exc
        elif isinstance(exc, UpstreamHTTPError):
            err = map_upstream_error(exc, target.provider, ticket.byok, scrub)
        else:
            log.exception("stream relay failed")
            err = UpstreamFailed(f"the upstream stream broke ({type(exc).__name__})", code="upstream_stream_error")
        account(err.status)
        fields.update(status=err.status, error=err.code)
        with contextlib.suppress(ClientGone):
            await out.finish(codec.error(err, request[REQUEST_ID]))
    finally:
        out.stop()
        metrics.ACTIVE_STREAMS.dec()
        if relayed.first_at is not None:
            metrics.child(metrics.TTFT, target.provider, target.public_model).observe(relayed.first_at - ticket.started)
    return out.response


def target_silence(ticket: metering.Ticket) -> float:
    return ticket.route.provider.timeouts.between_chunks_s
