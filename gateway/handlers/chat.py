"""POST /v1/chat/completions: catalog -> provider adapter -> egress -> relay, streamed or not.

The client's response headers go out only after the upstream answered 2xx, so an upstream refusal still
reaches the client as a proper HTTP status. From then on each upstream event is relayed as soon as it
arrives, with keep-alive comments while the upstream is silent.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from aiohttp import web

from gateway.auth import model_allowed
from gateway.catalog import Route
from gateway.errors import Forbidden, GatewayError, InvalidRequest, Unavailable, UpstreamFailed, error_event
from gateway.logging import redactor
from gateway.relay import map_upstream_error, next_data, open_upstream, read_body
from gateway.requests import read_json
from gateway.sse import DONE, ClientGone, SSEWriter, frame
from gateway.state import KEY, LOG, RUNTIME
from providers import registry
from providers.framing import SSEDecoder
from providers.registry import Adapter
from providers.types import ChatRequest, ProviderError, StreamState, Target, UpstreamHTTPError

GATEWAY_FIELDS = ("provider_api_key",)  # ours, never forwarded upstream


def _validate(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array.", param="messages",
                             code="missing_required_parameter" if messages is None else "invalid_type")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise InvalidRequest("Each message must be an object with a string 'role'.", param="messages",
                             code="invalid_type")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")


def _provider_key(request: web.Request, body: dict[str, Any], route: Route) -> tuple[str, bool]:
    """The key to call the provider with, and whether it is the client's own (BYOK)."""
    byok = body.get("provider_api_key") or request.headers.get("X-Provider-Api-Key", "")
    if byok:
        if not isinstance(byok, str):
            raise InvalidRequest("'provider_api_key' must be a string.", param="provider_api_key")
        return byok, True
    prov = route.provider
    if not prov.api_key and prov.api_key_env:
        raise Unavailable(
            f"Provider '{route.provider_name}' has no API key configured on this gateway: the operator "
            f"must set {prov.api_key_env}, or send your own key in 'provider_api_key' or the "
            "X-Provider-Api-Key header.", code="provider_not_configured")
    return prov.api_key, False


def _scrubber(own_key: str) -> Any:
    def scrub(text: str) -> str:
        if own_key:
            text = text.replace(own_key, "[REDACTED]")
        return redactor.scrub(text)
    return scrub


async def chat_completions(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    snapshot = runtime.snapshot
    body = await read_json(request, snapshot.config.server.max_body_bytes)
    _validate(body)
    route = snapshot.catalog.resolve(body["model"])
    fields = request[LOG]
    fields.update(model=route.model_id, provider=route.provider_name, streamed=bool(body.get("stream")))
    if not model_allowed(request[KEY], route.model_id):
        raise Forbidden(f"This key may not use model '{route.model_id}'.", code="model_not_allowed",
                        param="model")
    api_key, byok = _provider_key(request, body, route)
    clean = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    chat = ChatRequest(body=clean, stream=bool(body.get("stream")))
    adapter = registry.get(route.provider.kind)
    target = route.target(api_key)
    upstream_req = adapter.build_request(chat, target)
    session = runtime.egress.session_for(route.provider.egress)
    t = route.provider.timeouts
    resp = await open_upstream(session, upstream_req, t.connect_s, t.first_byte_s, route.provider_name)
    scrub = _scrubber(api_key if byok else "")
    try:
        if resp.status >= 300:
            raw = await read_body(resp, t.between_chunks_s)
            err = adapter.parse_error(resp.status, raw)
            fields["upstream_status"] = resp.status
            raise map_upstream_error(err, route.provider_name, byok, scrub, resp.headers.get("Retry-After"))
        if chat.stream:
            return await _relay_stream(request, resp, adapter, chat, target, scrub, t.between_chunks_s)
        return await _relay_json(resp, adapter, target, fields, t.between_chunks_s)
    finally:
        resp.close()


async def _relay_json(resp: aiohttp.ClientResponse, adapter: Adapter, target: Target,
                      fields: dict[str, Any], silence_s: float) -> web.Response:
    raw = await read_body(resp, silence_s)
    try:
        result = adapter.parse_response(raw, target)
    except ProviderError as exc:
        raise UpstreamFailed(f"provider {target.provider} sent an answer the gateway cannot read: {exc}",
                             code="upstream_bad_response") from exc
    fields.update(prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens)
    return web.Response(body=orjson.dumps(result.body), content_type="application/json")


async def _relay_stream(request: web.Request, resp: aiohttp.ClientResponse, adapter: Adapter,
                        chat: ChatRequest, target: Target, scrub: Any, silence_s: float) -> web.StreamResponse:
    out = SSEWriter(request)
    await out.start()
    state = adapter.new_stream_state(chat, target)
    fields = request[LOG]
    try:
        await _pump(resp, adapter, state, out, _wants_usage(chat.body), silence_s,
                    request.app[RUNTIME].snapshot.config.server.sse_keepalive_s)
        await out.write(DONE)
        await out.finish()
    except ClientGone:
        fields["status"] = 499  # nginx's "client closed request": the upstream is closed in our caller
    except GatewayError as exc:
        fields.update(status=exc.status, error=exc.code)
        await _try_write(out, error_event(exc))
    except UpstreamHTTPError as exc:
        err = map_upstream_error(exc, target.provider, False, scrub)
        fields.update(status=err.status, error=err.code)
        await _try_write(out, error_event(err))
    finally:
        fields.update(prompt_tokens=state.usage.prompt_tokens,
                      completion_tokens=state.usage.completion_tokens)
    return out.response


def _wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


async def _pump(resp: aiohttp.ClientResponse, adapter: Adapter, state: StreamState, out: SSEWriter,
                wants_usage: bool, silence_s: float, keepalive_s: float) -> None:
    """Relay upstream events until the upstream says it is done; one client write per upstream read."""
    decoder = SSEDecoder()
    try:
        while not state.done:
            data = await next_data(resp.content, silence_s, keepalive_s, out.keepalive)
            if not data:
                raise UpstreamFailed("the upstream closed the stream before it finished",
                                     code="upstream_truncated")
            batch = bytearray()
            for event in decoder.feed(data):
                for chunk in adapter.parse_stream_event(state, event):
                    if chunk.get("choices") or wants_usage:
                        batch += frame(chunk)
            if batch:
                await out.write(bytes(batch))
    except (aiohttp.ClientError, ProviderError) as exc:
        if isinstance(exc, UpstreamHTTPError):
            raise
        raise UpstreamFailed(f"the upstream stream broke ({type(exc).__name__})",
                             code="upstream_stream_error") from exc


async def _try_write(out: SSEWriter, data: bytes) -> None:
    try:
        await out.write(data)
        await out.finish()
    except ClientGone:
        pass
