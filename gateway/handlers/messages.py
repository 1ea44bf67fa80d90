"""POST /v1/messages: Anthropic's Messages API, for the Anthropic SDK and tools that speak only it.

The gateway key comes as `x-api-key` or `Authorization: Bearer` (`gateway.auth.presented_key`); any
`anthropic-version` is accepted. The body is checked in Anthropic's terms (max_tokens is required there),
then served by the shared pipeline; errors are in Anthropic's shape (`gateway.middleware`).
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import InvalidRequest
from gateway.handlers.chat import serve
from gateway.messages import MessagesEndpoint
from gateway.requests import read_json
from gateway.state import RUNTIME

MAX_BETA_HEADER = 1000


def _validate(body: dict[str, object]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required" if model is None else "model: must be a string", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Field required (a positive integer)", param="max_tokens",
                             code="missing_required_parameter" if max_tokens is None else "invalid_type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages: must be a non-empty list of message objects", param="messages",
                             code="missing_required_parameter" if messages is None else "invalid_type")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: must be a boolean", param="stream", code="invalid_type")


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request, request.app[RUNTIME].snapshot.config.server.max_body_bytes)
    _validate(body)
    beta = request.headers.get("anthropic-beta", "")[:MAX_BETA_HEADER]
    return await serve(request, body, MessagesEndpoint(beta))
