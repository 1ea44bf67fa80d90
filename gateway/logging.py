"""structlog configured in one place: JSON lines (orjson) with secrets redacted before rendering.

The redactor is the last line of defence: call sites already log key ids, never keys, but a provider's
error text, an exception message or a URL can still carry a secret. Known secret values from the config
(provider keys, proxy passwords, admin token) and secret-looking patterns are replaced in every string
of every event, recursively, before the line is written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import IO, Any

import orjson
import structlog

REDACTED = "[REDACTED]"

_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 " + REDACTED),
    (re.compile(r"\bgw-[A-Za-z0-9]{20,}"), "gw-" + REDACTED),
    (re.compile(r"\b(sk|xai|pk|rk)-[A-Za-z0-9_*-]{12,}"), r"\1-" + REDACTED),
    (re.compile(r"\bAIza[0-9A-Za-z_-]{20,}"), REDACTED),  # Google API keys
    (re.compile(r"(?i)\b([a-z][a-z0-9+]*://[^:/@\s]*):[^@\s/]+@"), r"\1:" + REDACTED + "@"),  # user:pass@
]
_SECRET_KEYS = re.compile(r"(?i)^(authorization|x-api-key|api_key|provider_api_key|x-provider-api-key|"
                          r"password|admin_token|x-goog-api-key|key|token)$")


class Redactor:
    """A structlog processor; `update()` swaps the known secret values atomically on config reload."""

    def __init__(self) -> None:
        self._secrets: re.Pattern[str] | None = None

    def update(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, values))) if values else None

    def scrub(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: REDACTED if isinstance(k, str) and _SECRET_KEYS.match(k) and v else self._walk(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        return self._walk(dict(event))  # type: ignore[no-any-return]


class Sink:
    """Where rendered lines go; tests point `target` at a buffer without reconfiguring structlog."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target

    def write(self, data: bytes) -> None:
        self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


redactor = Redactor()
sink = Sink(sys.stdout.buffer)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _add_pid(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Which process wrote the line: with --workers N, N processes share one journal."""
    event.setdefault("pid", os.getpid())
    return event


def configure(level: str = "info") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_pid,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.BytesLoggerFactory(sink),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str = "gateway") -> Any:
    return structlog.get_logger(name)
