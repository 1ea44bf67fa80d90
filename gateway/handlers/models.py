"""GET /v1/models, GET /v1/models/{id} and OpenRouter's GET /v1/models/{author}/{slug}/endpoints.

Model ids hold a "/" ("openai/gpt-5", "openrouter/meta-llama/llama-3.3-70b-instruct"), so one route takes
the rest of the path: a known model id or alias is that model; one followed by `/endpoints` is its
endpoints listing. A key sees only the models it may use: any other answers 404, as if it did not exist.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from gateway.auth import model_allowed
from gateway.catalog import Route
from gateway.errors import NotFound
from gateway.state import KEY, RUNTIME, Snapshot

ENDPOINTS_SUFFIX = "/endpoints"


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    snapshot = request.app[RUNTIME].snapshot
    record = request[KEY]
    created = int(snapshot.loaded_at)
    data = [route.public_info(created) for mid, route in snapshot.catalog.routes.items()
            if model_allowed(record, mid)]
    return _json({"object": "list", "data": data})


def _visible(request: web.Request, snapshot: Snapshot, name: str) -> Route | None:
    try:
        route = snapshot.catalog.resolve(name)
    except NotFound:
        return None
    return route if model_allowed(request[KEY], route.model_id) else None


async def model_or_endpoints(request: web.Request) -> web.Response:
    snapshot = request.app[RUNTIME].snapshot
    name = request.match_info["name"]
    route = _visible(request, snapshot, name)
    if route is not None:
        return _json(route.public_info(int(snapshot.loaded_at)))
    if name.endswith(ENDPOINTS_SUFFIX):
        route = _visible(request, snapshot, name.removesuffix(ENDPOINTS_SUFFIX))
        if route is not None:
            return _json({"data": endpoints_info(route, int(snapshot.loaded_at))})
    raise NotFound(f"The model '{name[:200]}' does not exist or is not available to this key.",
                   code="model_not_found", param="model")


def _per_token(per_mtok: float | None) -> str:
    """USD per million tokens -> OpenRouter's decimal string of USD per token."""
    return format(Decimal(repr(per_mtok or 0)) / 1_000_000, "f")


def _usd(value: float) -> str:
    return format(Decimal(repr(value)), "f")


def endpoints_info(route: Route, created: int) -> dict[str, Any]:
    """OpenRouter's `ListEndpointsResponse` for one catalog model: the provider that serves it."""
    model, price = route.model, route.model.price
    inputs = ["text", "image"] if model.vision else ["text"]
    pricing = {"prompt": _per_token(price.input_per_mtok), "completion": _per_token(price.output_per_mtok),
               "input_cache_read": _per_token(price.cache_read), "input_cache_write": _per_token(price.cache_write),
               "request": _usd(price.per_request), "image": _usd(price.per_image)}
    endpoint = {
        "name": f"{route.provider_name}: {route.model_id}", "model_id": route.model_id,
        "model_name": route.model_id, "context_length": model.context_window or 0, "pricing": pricing,
        "provider_name": route.provider_name, "tag": route.provider_name, "quantization": None,
        "max_completion_tokens": model.max_output_tokens, "max_prompt_tokens": None,
        "supported_parameters": route.supported_parameters(), "status": 0,
        "uptime_last_30m": None, "uptime_last_5m": None, "uptime_last_1d": None,  # not tracked per model
        "latency_last_30m": None, "throughput_last_30m": None,
        "supports_implicit_caching": route.provider.kind != "anthropic",  # Anthropic caches only when marked
    }
    return {
        "id": route.model_id, "name": route.model_id, "created": created, "description": "",
        "architecture": {"input_modalities": inputs, "output_modalities": ["text"], "tokenizer": "Other",
                         "instruct_type": None, "modality": "+".join(inputs) + "->text"},
        "endpoints": [endpoint],
    }
