"""Per-key caps an operator sets on a key (`keys create --max-streams/--max-tokens/--max-body-bytes`).

They narrow what the gateway-wide settings allow, for one key: a reseller's small customer gets a smaller
body limit, a ceiling on the output tokens of one request, and a number of streams it may hold open at
once. The stream count lives in the store, so it holds across gateway processes: a capped key's stream is
counted by its admission and freed by its settlement (`Admission.streams`, no round trip of its own), and
a process that dies with streams open cannot leak slots for longer than the hold TTL.
"""

from __future__ import annotations

from typing import Any

from gateway import validation
from gateway.errors import InvalidRequest
from gateway.store.base import KeyRecord


def body_limit(server_limit: int, key: KeyRecord) -> int:
    """The largest body this key may send."""
    return min(server_limit, key.max_body_bytes) if key.max_body_bytes else server_limit


def check_max_tokens(body: dict[str, Any], key: KeyRecord) -> None:
    """Refuse an ask above the key's ceiling."""
    cap = key.max_tokens
    if cap and (name := validation.output_ask_over(body, cap)):
        raise InvalidRequest(f"'{name}' is too large: {body[name]}. This key may ask for at most {cap} "
                             "output tokens per request.", param=name, code="invalid_value")


def fill_max_tokens(body: dict[str, Any], key: KeyRecord, model_max: int | None) -> dict[str, Any]:
    """For endpoints whose body takes `max_tokens`: a request that asks nothing given the key's ceiling
    (within the model's own maximum), so the upstream and the hold are bounded by it. Per attempt: a
    fallback with a smaller maximum is not sent the first model's figure."""
    cap = key.max_tokens
    if not cap or isinstance(body.get("max_completion_tokens"), int) or isinstance(body.get("max_tokens"), int):
        return body
    return {**body, "max_tokens": min(cap, model_max) if model_max else cap}
