"""Admin routes (admin token only): what the operator needs that no client may do or see.

Key management runs the same operations as `python -m gateway keys ...` (gateway.keyops).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway import keyops, metrics
from gateway.errors import InvalidRequest, NotFound
from gateway.metering import store_unavailable
from gateway.requests import read_json
from gateway.state import RUNTIME
from gateway.store import StoreError
from gateway.store.memory import MAX_AMOUNT

ADMIN_BODY_LIMIT = 64 * 1024


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _amount(body: dict[str, Any], field: str) -> int:
    try:
        return keyops.usd_to_nano(body[field])
    except KeyError:
        raise InvalidRequest(f"'{field}' (USD) is required.", param=field, code="missing_required_parameter") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=field, code="invalid_value") from None


def _opt_limit(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_AMOUNT:
        raise InvalidRequest(f"'{field}' must be a whole number from 1 to {MAX_AMOUNT}.", param=field,
                             code="invalid_value")
    return value


async def _run(request: web.Request, action: Any) -> Any:
    """Store failures and unknown keys as the same errors the client API uses."""
    try:
        return await action(request.app[RUNTIME].store)
    except StoreError as exc:
        metrics.STORE_ERRORS.labels("admin").inc()
        raise store_unavailable(exc) from exc
    except keyops.KeyNotFound as exc:
        raise NotFound(f"No key {exc.args[0]!r}.", code="key_not_found") from None
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_value") from None


async def egress(request: web.Request) -> web.Response:
    """Every pool and proxy with its health state, by name and host only: no URL, no credential."""
    return _json({"pools": request.app[RUNTIME].egress.snapshot()})


async def list_keys(request: web.Request) -> web.Response:
    return _json({"data": await _run(request, keyops.listing)})


async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request, ADMIN_BODY_LIMIT)
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("'name' is required.", param="name", code="missing_required_parameter")
    try:
        name = keyops.check_name(name)
    except ValueError as exc:
        raise InvalidRequest(f"'name' {exc}.", param="name", code="invalid_value") from None
    models = body.get("models")
    if models is None:
        models = []
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise InvalidRequest("'models' must be an array of non-empty model id globs.", param="models",
                             code="invalid_type")
    balance, rpm, rpd = _amount(body, "balance"), _opt_limit(body, "rpm"), _opt_limit(body, "rpd")
    caps = {cap: _opt_limit(body, cap) for cap in keyops.CAPS}
    plain, record = await _run(request, lambda store: keyops.create(store, name, balance, rpm, rpd, models,
                                                                    **caps))
    return _json({**keyops.key_json(record), "key": plain}, status=201)


async def topup(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    amount = _amount(await read_json(request, ADMIN_BODY_LIMIT), "amount")
    balance = await _run(request, lambda store: keyops.topup(store, key_id, amount))
    return _json({"id": key_id, "balance": balance / 1_000_000_000})


async def disable(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    await _run(request, lambda store: keyops.disable(store, key_id))
    return _json({"id": key_id, "disabled": True})
