"""`output_config` as Anthropic's Messages API takes it, for the fake Anthropic upstream.

- `effort` is one of `EFFORTS` (the SDK's `OutputConfigParam`: low, medium, high, xhigh, max); anything else is the
  API's 400 `invalid_request_error`, its message in the API's validation wording (`<field path>: Input should
  be ...`, as in its recorded refusals).
- `format` (or the structured-outputs beta's top-level `output_format`) is `{"type": "json_schema", "schema":
  {...}}` (the SDK's `JSONOutputFormatParam`), else the same 400. Claude then answers text that is JSON valid
  against the schema: the fake's recorded answer keeps its shape, its text blocks (streamed: text deltas) say
  a small instance of the schema instead (`instance`), cut into as many deltas as the recording has.

The fake cannot know which efforts a given model takes (older ones refuse the field), so every model takes all.
"""

from __future__ import annotations

import json
from typing import Any

EFFORTS = ("low", "medium", "high", "xhigh", "max")


def output_error(body: dict[str, Any]) -> str | None:
    """The API's refusal of the request's `output_config` (or `output_format`), or None."""
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            return "output_config: Input should be a valid dictionary"
        effort = config.get("effort")
        if effort is not None and not (isinstance(effort, str) and effort in EFFORTS):
            return "output_config.effort: Input should be " + ", ".join(f"'{e}'" for e in EFFORTS[:-1]) + " or 'max'"
        if refusal := _format_error(config.get("format"), "output_config.format"):
            return refusal
    return _format_error(body.get("output_format"), "output_format")


def _format_error(fmt: Any, where: str) -> str | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        return f"{where}: Input should be a valid dictionary"
    if fmt.get("type") != "json_schema":
        return f"{where}.type: Input should be 'json_schema'"
    if "schema" not in fmt:
        return f"{where}.schema: Field required"
    if not isinstance(fmt["schema"], dict):
        return f"{where}.schema: Input should be a valid dictionary"
    return None


def structured_text(body: dict[str, Any]) -> str | None:
    """The JSON text Claude answers for a valid format's schema, or None when the request sets no format."""
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = body.get("output_format") if fmt is None else fmt
    return json.dumps(instance(fmt["schema"], fmt["schema"])) if isinstance(fmt, dict) else None


def instance(schema: Any, root: dict[str, Any]) -> Any:
    """A small value valid against `schema` (every property of an object, the fewest items an array may have)."""
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("$ref"), str):
        target: Any = root
        for key in schema["$ref"].removeprefix("#/").split("/"):
            target = target.get(key, {}) if key and isinstance(target, dict) else target
        return instance(target, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for union in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(union), list) and schema[union]:
            return instance(schema[union][0], root)
    kind = schema.get("type")
    kind = next((k for k in kind if k != "null"), "null") if isinstance(kind, list) else kind
    if kind == "object" or isinstance(schema.get("properties"), dict):
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: instance(prop, root) for name, prop in properties.items()}
    if kind == "array":
        return [instance(schema.get("items"), root) for _ in range(int(schema.get("minItems") or 0))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "string":
        return "a" * int(schema.get("minLength") or 0)
    return {"boolean": False}.get(str(kind))


def with_message_text(answer: dict[str, Any], text: str) -> dict[str, Any]:
    """A recorded message whose text blocks say `text` (the first one; any other text block says nothing)."""
    texts = [block for block in answer["content"] if block.get("type") == "text"]
    for i, block in enumerate(texts):
        block["text"] = text if i == 0 else ""
    return answer


def with_stream_text(events: list[bytes], text: str) -> list[bytes]:
    """Recorded stream events whose text deltas say `text` between them, every other event as recorded."""
    parsed = [(raw.strip().partition(b"\ndata: ")) for raw in events]
    spots = [i for i, (_, _, data) in enumerate(parsed) if b'"text_delta"' in data]
    size = -(-len(text) // max(len(spots), 1))
    out = list(events)
    for n, i in enumerate(spots):
        head, _, data = parsed[i]
        event = json.loads(data)
        event["delta"]["text"] = text[n * size:(n + 1) * size]
        out[i] = head + b"\ndata: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
    return out
