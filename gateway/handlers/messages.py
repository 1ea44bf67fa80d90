"""POST /v1/messages: Anthropic's Messages API, for the Anthropic SDK and tools that speak only it.

The gateway key comes as `x-api-key` or `Authorization: Bearer` (`gateway.auth.presented_key`); any
`anthropic-version` is accepted. The body is checked in Anthropic's terms (max_tokens is required there),
then served by the shared pipeline; errors are in Anthropic's shape (`gateway.middleware`).
"""

from __future__ import annotations

from aiohttp import web

from gateway import billing, caps, presets
from gateway.auth import model_allowed
from gateway.errors import Forbidden, InvalidRequest
from gateway.messages import MessagesEndpoint
from gateway.pipeline import serve
from gateway.requests import read_json
from gateway.state import KEY, LOG, RUNTIME
from providers import anthropic_inbound
from providers.types import ProviderError

MAX_BETA_HEADER = 1000
ROLES = ("user", "assistant")


def _validate(body: dict[str, object], needs_max_tokens: bool = True) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required" if model is None else "model: must be a string", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    max_tokens = body.get("max_tokens", 1 if not needs_max_tokens else None)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Field required (a positive integer)", param="max_tokens",
                             code="missing_required_parameter" if max_tokens is None else "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages: must be a non-empty list of message objects", param="messages",
                             code="missing_required_parameter" if messages is None else "invalid_type")
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:  # Anthropic's format has no other (`system` is a top-level field)
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant' (the system prompt "
                                 "goes in the top-level 'system' field)", param=f"messages[{i}].role",
                                 code="invalid_value")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: must be a boolean", param="stream", code="invalid_type")


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, caps.body_limit(request.app[RUNTIME].snapshot.config.server.max_body_bytes,
                                                    request[KEY]))
    _validate(body)
    beta = request.headers.get("anthropic-beta", "")[:MAX_BETA_HEADER]
    return await serve(request, body, MessagesEndpoint(beta))


async def count_tokens(request: web.Request) -> web.Response:
    """POST /v1/messages/count_tokens (Claude Code asks before long requests): `{"input_tokens": n}`.

    Answered by the gateway itself with the estimate its holds use (`billing.estimate_prompt_tokens`: bytes/3
    plus a per-message overhead, ~1,600 an image, 4,600 a PDF page; errs high), whatever provider serves the
    model: no upstream call, nothing charged, no rate limit counted — as Anthropic's own endpoint is free. The
    model must exist and be allowed. A Claude model takes the body as its own endpoint would (documents,
    server tools, thinking...: the native route sends them on); another model only what translates to chat,
    as /v1/messages would refuse the rest.
    """
    snapshot = request.app[RUNTIME].snapshot
    body = await read_json(request, caps.body_limit(snapshot.config.server.max_body_bytes, request[KEY]))
    _validate(body, needs_max_tokens=False)
    asked = body["model"]
    preset = presets.lookup(snapshot.config.presets, asked)
    if preset is not None:
        body = presets.apply_anthropic(preset, body)
    route = snapshot.catalog.resolve(str(body["model"]))
    key = request[KEY]
    if not (model_allowed(key, route.model_id) or (preset is not None and model_allowed(key, str(asked)))):
        raise Forbidden(f"This key may not use model '{asked}'.", code="model_not_allowed", param="model")
    if route.provider.kind != "anthropic":
        try:
            anthropic_inbound.chat_body(body)
        except ProviderError as exc:
            raise InvalidRequest(f"messages: {exc}", param=getattr(exc, "param", None) or "messages",
                                 code="invalid_value") from exc
    request[LOG]["model"] = route.model_id
    return web.json_response({"input_tokens": billing.estimate_prompt_tokens(body)})
