"""POST /v1/chat/completions: the body checked in OpenAI's terms, then served by the shared pipeline."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import caps, validation
from gateway.errors import InvalidRequest
from gateway.exchange import CHAT
from gateway.pipeline import serve
from gateway.requests import read_json
from gateway.state import KEY, RUNTIME


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    config = request.app[RUNTIME].snapshot.config
    body = await read_json(request, caps.body_limit(config.server.max_body_bytes, request[KEY]))
    _validate(body)
    validation.check_chat(body, request.headers.get("X-Provider-Api-Key"))
    return await serve(request, body, CHAT)
