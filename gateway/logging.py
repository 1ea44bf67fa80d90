"""structlog configured in one place: JSON lines (orjson) with secrets redacted before rendering.

The redactor is the last line of defence: call sites already log key ids, never keys, but a provider's
error text, an exception message or a URL can still carry a secret. Known secret values from the config
(provider keys, proxy passwords, admin token) and secret-looking patterns are replaced in every string
of every event, recursively, before the line is written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import Iterable, MutableMapping
from contextvars import ContextVar, Token
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
    # a raw header line, as aiohttp's parser quotes a malformed one: the value runs to the line's end
    (re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|x-provider-api-key|x-goog-api-key):[^\r\n'\"]*"),
     r"\1: " + REDACTED),
]
# Every pattern above needs one of these substrings (lower-cased); a string with none of them (nearly every
# string of a request's log line) is left alone after a few substring tests, which cost far less than one
# regex scan trying every pattern (or one alternation of them all) at every position.
_HINTS = ("bearer", "basic", "gw-", "sk-", "xai-", "pk-", "rk-", "aiza", "://", "authorization", "api-key")
_SECRET_NAMES = frozenset({"authorization", "x-api-key", "api_key", "provider_api_key", "x-provider-api-key",
                           "password", "admin_token", "x-goog-api-key", "key", "token"})
# a field whose name holds one of these anywhere is secret-named too (`client_secret`, `secret_key`,
# `proxy_password`, `passwd`); not "key" or "token", which `key_id` and `prompt_tokens` hold
_SECRET_PARTS = ("secret", "passw")


def _secret_named(name: str) -> bool:
    low = name.lower()
    return low in _SECRET_NAMES or any(part in low for part in _SECRET_PARTS)


def _fewest(needles: Iterable[str]) -> tuple[str, ...]:
    """The needles that hold no other: a line holding a dropped one holds the one inside it too. Each test
    scans the whole line (~1,000 instructions), and these tests were 2 % of a request's."""
    unique = set(needles)
    return tuple(sorted(n for n in unique if not any(o != n and o in n for o in unique)))


# Searched in the rendered line as str: `bytes in bytes` first tries the needle as an int and builds a
# TypeError for every miss, which made these tests cost more than the rest of the line's rendering. A
# secret-named field reads `name":` in the line (the opening quote left out, so that `"x-api-key":` and
# `"admin_token":` come down to the hints `api-key` and `token":`; a line matching more is only walked). A
# name part is looked for as is: `passw` holds `password":`, so the parts cost one needle more (`secret`).
_LINE_HINTS = _fewest((*_HINTS, *(f'{name}":' for name in _SECRET_NAMES), *_SECRET_PARTS))


def _fallback(value: Any) -> str:
    return repr(value)


def _json_spelling(secret: str) -> str:
    """How `secret` reads inside a rendered JSON line (escaped when it holds a quote or a backslash)."""
    return orjson.dumps(secret)[1:-1].decode()


def _line_spellings(secret: str) -> set[str]:
    """How `secret` may appear in a rendered line: as is, or JSON-escaped."""
    return {secret, _json_spelling(secret)}


_REQUEST_SECRETS: ContextVar[tuple[str, ...]] = ContextVar("request_secrets", default=())
_REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_request_id(request_id: str | None) -> Token[str | None]:
    """Every line logged in this context (the request's task, and tasks it starts) carries `request_id`
    until the token is reset: a keep-alive connection serves its requests one after the other in one task.
    One variable of our own: structlog's bind_contextvars and unbind_contextvars cost 2 us a request."""
    return _REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def _add_request_id(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


class Redactor:
    """A structlog processor; `update()` swaps the known secret values atomically on config reload,
    `protect()` adds one for the current request only (a client's BYOK key).

    `render` is the final processor (JSON line out): one scan of the rendered line decides whether
    anything in it could be a secret — a hint of a pattern, a secret-named field, a known value in raw or
    JSON-escaped form. Nearly every line has none and is written as rendered; the rest is walked, rendered
    again and scrubbed as text, which also covers secrets inside the repr of a non-JSON value.
    """

    MIN_PROTECTED = 6  # shorter strings are no key, and replacing them would garble every line

    def __init__(self) -> None:
        self._secrets: re.Pattern[str] | None = None
        self._values: tuple[str, ...] = ()
        self._line_values: tuple[str, ...] = ()

    def protect(self, secret: str) -> None:
        """Redact `secret` from every line written in this context (the request's task) from now on."""
        if len(secret) >= self.MIN_PROTECTED:
            _REQUEST_SECRETS.set((*_REQUEST_SECRETS.get(), secret))

    def update(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._secrets = re.compile("|".join(map(re.escape, values))) if values else None
        self._values = tuple(values)
        # in a rendered line a secret appears as is, or JSON-escaped when it holds a quote or a backslash
        self._line_values = tuple(set().union(*map(_line_spellings, values)))

    def _suspect(self, text: str) -> bool:
        low = text.lower()
        return (any(h in low for h in _HINTS) or any(v in text for v in self._values)
                or any(v in text for v in _REQUEST_SECRETS.get()))

    def _suspect_line(self, line: bytes) -> bool:
        text = line.decode()
        low = text.lower()
        for hint in _LINE_HINTS:
            if hint in low:
                return True
        for value in self._line_values:
            if value in text:
                return True
        protected = _REQUEST_SECRETS.get()  # a client's own key: rare, so no generator for the rest
        return bool(protected) and any(s in text for v in protected for s in _line_spellings(v))

    def scrub(self, text: str) -> str:
        if not self._suspect(text):
            return text
        for secret in _REQUEST_SECRETS.get():
            text = text.replace(secret, REDACTED).replace(_json_spelling(secret), REDACTED)
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: REDACTED if v and isinstance(k, str) and _secret_named(k) else self._walk(v)
                    for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._walk(v) for v in value]
        return value

    def __call__(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
        return self._walk(dict(event))  # type: ignore[no-any-return]

    def render(self, _logger: Any, _name: str, event: MutableMapping[str, Any]) -> bytes:
        line = orjson.dumps(event, default=_fallback)
        if not self._suspect_line(line):
            return line
        text = orjson.dumps(self._walk(dict(event)), default=_fallback).decode()
        if self._secrets is not None:  # the JSON-escaped spelling of a known secret, or one inside a repr
            text = self._secrets.sub(REDACTED, text)
        return self.scrub(text).encode()


class Sink:
    """Where rendered lines go; tests point `target` at a buffer without reconfiguring structlog.

    A serving process batches info and debug lines (`batch()`): they wait up to `delay_s` and leave in
    one write. Every line used to cost a write(2) of its own to the journal's pipe, the dearest single
    step of a request after its network I/O; a warning or an error still goes out at once, after any
    lines waiting before it, so the journal keeps its order.
    """

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay_s = 0.0

    def write(self, data: bytes) -> None:
        if self._pending:
            self._drain()
        self.target.write(data)
        self.target.flush()  # a buffered stdout (no PYTHONUNBUFFERED) must not sit on lines either

    def write_later(self, data: bytes) -> None:
        if self._loop is None:
            self.write(data)
            return
        if not self._pending:
            self._loop.call_later(self._delay_s, self._drain)
        self._pending.append(data)

    def batch(self, loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
        """From now on, lines written through `write_later` on `loop` leave at most `delay_s` later."""
        self._loop, self._delay_s = loop, delay_s

    def unbatch(self) -> None:
        self._loop = None
        self.flush()

    def _drain(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self.write(data)

    def flush(self) -> None:
        self._drain()
        self.target.flush()


class _LineLogger:
    """structlog's last stop: one rendered line per call; info and debug may wait for the sink's batch."""

    def __init__(self, out: Sink) -> None:
        self._out = out

    def debug(self, message: bytes) -> None:
        self._out.write_later(message + b"\n")

    info = debug

    def msg(self, message: bytes) -> None:
        self._out.write(message + b"\n")

    warning = error = critical = fatal = exception = log = msg


redactor = Redactor()
sink = Sink(sys.stdout.buffer)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


_pid = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_new_pid)


_stamped = (-1, "")  # (second, its "YYYY-MM-DDTHH:MM:SS")


def utc_second(second: int) -> str:
    """A Unix second as "YYYY-MM-DDTHH:MM:SS" (UTC), formatted once for the many lines and records of one
    second: strftime for each cost more than rendering the rest of a log line."""
    global _stamped
    if second != _stamped[0]:
        _stamped = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return _stamped[1]


def _now_iso() -> str:
    """UTC now as structlog's TimeStamper(fmt="iso", utc=True) writes it."""
    now = time.time()
    second = int(now)
    return f"{utc_second(second)}.{int((now - second) * 1_000_000):06d}Z"


def _timestamp(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event["timestamp"] = _now_iso()
    return event


_threshold = logging.INFO


def access(request_id: str, fields: dict[str, Any]) -> None:
    """The one line per request, with the fields every line has (event, request_id, pid, level,
    timestamp), through the same redactor and sink, but not through structlog's processor chain: for the
    line every request writes that chain cost twice the rendering itself (bench/README.md)."""
    if _threshold > logging.INFO:
        return
    event = {"event": "request", **fields, "request_id": request_id, "pid": _pid, "level": "info",
             "timestamp": _now_iso()}
    sink.write_later(redactor.render(None, "info", event) + b"\n")


def _add_pid(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Which process wrote the line: with --workers N, N processes share one journal."""
    event.setdefault("pid", _pid)
    return event


def _scrubbing(factory: Any) -> Any:
    """A LogRecord factory whose records carry scrubbed text: stdlib loggers (aiohttp's, which quote a
    malformed request's header line, Authorization included) pass the same redactor as our own lines."""
    if getattr(factory, "scrubs", False):
        return factory

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            record.msg, record.args = redactor.scrub(record.getMessage()), None
        except Exception:  # a malformed call site: keep its record as it was
            return record  # type: ignore[no-any-return]
        if record.exc_info and not record.exc_text:
            record.exc_text = redactor.scrub("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return record  # type: ignore[no-any-return]

    make.scrubs = True  # type: ignore[attr-defined]
    return make


class _LevelBound(structlog.BoundLoggerBase):
    """A bound logger that reads the level at each call: structlog's filtering classes fix it when a
    logger is first used (loggers are cached), so a reload could not change `server.log_level`."""

    def debug(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("debug", event, **kw) if _threshold <= logging.DEBUG else None

    def info(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("info", event, **kw) if _threshold <= logging.INFO else None

    def warning(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("warning", event, **kw) if _threshold <= logging.WARNING else None

    def error(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("error", event, **kw)  # no level above error: always written

    def exception(self, event: str, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self.error(event, **kw)

    def critical(self, event: str, **kw: Any) -> Any:
        return self._proxy_to_logger("critical", event, **kw)

    warn = warning


def set_level(level: str) -> None:
    """The threshold every logger, cached or not, and the per-request line obey from now on."""
    global _threshold
    _threshold = _LEVELS[level]


def configure(level: str = "info") -> None:
    set_level(level)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,  # what an embedder binds (the gateway binds nothing)
            _add_request_id,
            _add_pid,
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            redactor.render,
        ],
        wrapper_class=_LevelBound,
        logger_factory=lambda *_args: _LineLogger(sink),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.setLogRecordFactory(_scrubbing(logging.getLogRecordFactory()))


def get_logger(name: str = "gateway") -> Any:
    return structlog.get_logger(name)
