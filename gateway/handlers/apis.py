"""POST /v1/completions, /v1/embeddings, /v1/moderations and /v1/images/generations: each body checked
for what the pipeline needs, then served like chat (`gateway.pipeline.serve`)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import caps, validation
from gateway.endpoints import COMPLETIONS, EMBEDDINGS, IMAGES, MODERATIONS
from gateway.errors import InvalidRequest
from gateway.pipeline import serve
from gateway.requests import read_json
from gateway.state import KEY, RUNTIME

MAX_IMAGES = 10  # OpenAI's own bound on `n`
ENCODING_FORMATS = ("float", "base64")


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json(request, caps.body_limit(request.app[RUNTIME].snapshot.config.server.max_body_bytes,
                                                    request[KEY]))


def _model(body: dict[str, Any], default: str = "") -> None:
    """`model` must be a string; an endpoint with a configured default fills it in when absent."""
    if body.get("model") is None and default:
        body["model"] = default
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a string.", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")


def _required(body: dict[str, Any], name: str, types: tuple[type, ...]) -> None:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"'{name}' is required.", param=name, code="missing_required_parameter")
    if not isinstance(value, types) or value in ("", []):
        raise InvalidRequest(f"'{name}' must be a non-empty {' or '.join(t.__name__ for t in types)}.", param=name,
                             code="invalid_type")


def _no_stream(body: dict[str, Any], path: str) -> None:
    if body.get("stream") not in (None, False):
        raise InvalidRequest(f"{path} does not stream on this gateway.", param="stream", code="unsupported_value")


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    _model(body)
    _required(body, "prompt", (str, list))
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream", code="invalid_type")
    max_tokens = body.get("max_tokens")  # the hold counts it: -1 ("no limit" to Ollama, llama.cpp) must not pass
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0):
        raise InvalidRequest("'max_tokens' must be a non-negative integer.", param="max_tokens", code="invalid_value")
    validation.check_numbers(body, validation.COMPLETION_NUMBERS)  # `n`/`best_of` size the hold: "20" is not 1
    return await serve(request, body, COMPLETIONS)


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    _model(body)
    _required(body, "input", (str, list))
    _no_stream(body, "/v1/embeddings")
    dimensions = body.get("dimensions")  # OpenAI's 400s, also where the gateway translates (Gemini)
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise InvalidRequest("'dimensions' must be an integer of at least 1.", param="dimensions",
                             code="invalid_value")
    if body.get("encoding_format") not in (None, *ENCODING_FORMATS):
        raise InvalidRequest(f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}.",
                             param="encoding_format", code="invalid_value")
    return await serve(request, body, EMBEDDINGS)


async def moderations(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    _model(body, request.app[RUNTIME].snapshot.config.default_models.moderations)
    _required(body, "input", (str, list))
    _no_stream(body, "/v1/moderations")
    return await serve(request, body, MODERATIONS)


async def image_generations(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    _model(body, request.app[RUNTIME].snapshot.config.default_models.images)
    _required(body, "prompt", (str,))
    _no_stream(body, "/v1/images/generations")
    n = body.get("n")
    if n is None:  # OpenAI's `n` is nullable: null means its default, one image
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_IMAGES:
        raise InvalidRequest(f"'n' must be an integer from 1 to {MAX_IMAGES}.", param="n", code="invalid_value")
    return await serve(request, body, IMAGES)
