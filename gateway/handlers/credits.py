"""GET /v1/credits and GET /v1/generation: what a key was granted and spent, and one request's record.

Both answer in OpenRouter's shapes, which budget tools and dashboards already read. A generation is
looked up under the calling key only, so one key can never read another's records.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import metrics
from gateway.billing import nano_to_usd
from gateway.errors import InvalidRequest, NotFound
from gateway.metering import store_unavailable
from gateway.state import KEY, RUNTIME
from gateway.store import StoreError

_INTS = ("tokens_prompt", "tokens_completion", "tokens_cached", "latency", "generation_time", "status", "images")
_FLAGS = ("streamed", "cancelled", "is_byok", "estimated")


def _json(obj: Any) -> web.Response:
    return web.Response(body=orjson.dumps(obj), content_type="application/json")


async def credits(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        record = await runtime.store.get_key(request[KEY].id)
    except StoreError as exc:
        metrics.STORE_ERRORS.labels("credits").inc()
        raise store_unavailable(exc) from exc
    if record is None:
        raise NotFound("This key no longer exists.", code="key_not_found")
    return _json({"data": {"total_credits": nano_to_usd(record.credits), "total_usage": nano_to_usd(record.usage),
                           "balance": nano_to_usd(record.balance), "currency": "USD"}})


def generation_json(raw: dict[str, str]) -> dict[str, Any]:
    """A stored generation record (strings) as OpenRouter's typed fields."""
    out: dict[str, Any] = {k: v for k, v in raw.items() if k not in _INTS + _FLAGS}
    for name in _INTS:
        if raw.get(name, "") != "":
            out[name] = int(raw[name])
    for name in _FLAGS:
        out[name] = raw.get(name) == "1"
    out["total_cost"] = nano_to_usd(int(raw.get("charged", "0")))
    out["reserved"] = nano_to_usd(int(raw.get("reserved", "0")))
    out["finish_reason"] = raw.get("finish_reason") or None
    out.pop("charged", None)
    out.pop("balance_after", None)
    out.pop("shortfall", None)  # the operator's (audit, usage export): the key was charged `total_cost`
    return out


async def generation(request: web.Request) -> web.Response:
    gen_id = request.query.get("id", "")
    if not gen_id:
        raise InvalidRequest("Query parameter 'id' is required (the 'id' of a completion).", param="id",
                             code="missing_required_parameter")
    runtime = request.app[RUNTIME]
    try:
        raw = await runtime.store.get_generation(request[KEY].id, gen_id[:100])
    except StoreError as exc:
        metrics.STORE_ERRORS.labels("generation").inc()
        raise store_unavailable(exc) from exc
    if raw is None:
        raise NotFound(f"No generation '{gen_id[:100]}' for this key (records are kept for a limited time).",
                       code="generation_not_found", param="id")
    return _json({"data": generation_json(raw)})
