"""Errors of OpenAI-compatible servers: the shapes they answer a refusal in (OpenAI's, Ollama's string,
vLLM's top-level message, OpenRouter's numeric code and metadata, xAI's sentence as code) read into one
`UpstreamHTTPError`, and an error object inside a 200 stream.

Which refusal is whose: a 429 `insufficient_quota` is not retryable; xAI's 400 "Incorrect API key" refuses
the key as a 401 does elsewhere; OpenRouter's 403 for flagged content refuses the request, not the key.

Pure and synchronous: no I/O, no aiohttp.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from providers.types import JSON, UpstreamHTTPError, status_phrase

_NOT_RETRYABLE_CODES = frozenset({"insufficient_quota"})  # a 429 that no retry will fix
_CONTENT_BLOCK_METADATA = frozenset({"reasons", "flagged_input", "patterns"})  # OpenRouter's, on a 403
# xAI refuses a key with a 400, `{"code": "Client specified an invalid argument", "error": "Incorrect API key
# provided: xa***ab. ..."}` (older answers URL-encoded the text): the key was refused, as a 401 says elsewhere
_BAD_KEY = re.compile(r"Incorrect(?: |%20)API(?: |%20)key\b")


def parse_error(status: int, body: bytes) -> UpstreamHTTPError:
    """A non-2xx answer in any of the shapes OpenAI-compatible servers use."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    fields = _error_fields(data) if isinstance(data, dict) else None
    if fields is None:
        text = body.decode("utf-8", "replace").strip()
        fields = {"message": text[:500]}
    message = str(fields.get("message") or "") or status_phrase(status)
    code = fields.get("code")
    code = None if code is None else str(code)
    retryable = (status == 429 or status >= 500) and code not in _NOT_RETRYABLE_CODES
    err = UpstreamHTTPError(
        status,
        message,
        type_=str(fields.get("type") or "upstream_error"),
        code=code,
        param=None if fields.get("param") is None else str(fields["param"]),
        retryable=retryable,
        key_refused=status == 400 and _BAD_KEY.match(message) is not None,
    )
    if status == 403 and _content_blocked(fields):
        err.key_refused = False  # the request's content was refused, not the key it came with
    return err


def _content_blocked(fields: JSON) -> bool:
    """OpenRouter's 403 for a prompt its moderation flagged (`metadata` with `reasons`, `flagged_input`) or a
    guardrail blocked (`metadata.patterns`, "Request blocked: ..."): the client's request, not the key."""
    metadata = fields.get("metadata")
    if isinstance(metadata, dict) and not _CONTENT_BLOCK_METADATA.isdisjoint(metadata):
        return True
    return str(fields.get("message") or "").startswith("Request blocked")


def _error_fields(data: JSON) -> JSON | None:
    """message/type/param/code out of `{"error": {...}}`, `{"error": "..."}` or a top-level `message`."""
    error = data.get("error")
    if isinstance(error, str):  # Ollama
        return {"message": error}
    if isinstance(error, dict):  # OpenAI; OpenRouter with a numeric code and metadata.error_type
        metadata = error.get("metadata")
        fields = dict(error)
        if not fields.get("type") and isinstance(metadata, dict) and metadata.get("error_type"):
            fields["type"] = metadata["error_type"]
        return fields
    if "message" in data:  # vLLM's ErrorResponse: {"object": "error", "message", "type", "code"}
        return data
    return None


def stream_error(error: Any) -> UpstreamHTTPError:
    """An error object inside a 200 stream (OpenRouter, vLLM) -> 502 with the upstream's own words."""
    fields = _error_fields({"error": error}) or {}
    code = fields.get("code")
    retryable = isinstance(code, int) and (code == 429 or code >= 500)
    return UpstreamHTTPError(
        502,
        str(fields.get("message") or "upstream error in stream"),
        type_=str(fields.get("type") or "upstream_error"),
        code=None if code is None else str(code),
        retryable=retryable,
    )

