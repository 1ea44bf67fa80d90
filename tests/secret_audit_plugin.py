"""`GW_SECRET_AUDIT=1` (set by `make test`): the whole suite's traffic, logged at debug, searched for secrets.

Every line the gateway writes (its structlog sink, whichever buffer a test points it at) and every stdlib
log record (aiohttp's own, at DEBUG) is copied to one audit buffer for the whole session. At the end the
buffer is searched for every secret the suite used: the harness's provider key, every gateway key the
harness issued, and whatever a test registered with `register()`. Any hit fails the session and names
the secret and the first line it was found in.

`tests/test_secret_audit.py` runs the same search over a representative mix of traffic in every
`make test`; this plugin is the wider net over every test's traffic, also in `make test`.
"""

from __future__ import annotations

import io
import logging
import os
import types
from typing import Any

import pytest

from gateway.logging import sink

ENABLED = os.environ.get("GW_SECRET_AUDIT") == "1"
_buffer = io.BytesIO()
_secrets: set[str] = set()


def register(secret: str) -> None:
    """A secret the audit must not find anywhere (no-op unless the audit is on)."""
    if ENABLED and secret:
        _secrets.add(secret)


class _Records(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _buffer.write(self.format(record).encode(errors="replace") + b"\n")


def start() -> None:
    """Tee the gateway's sink and the stdlib loggers into the audit buffer."""
    write = sink.write

    def tee(self: Any, data: bytes) -> None:
        _buffer.write(data)
        write(data)

    sink.write = types.MethodType(tee, sink)  # type: ignore[method-assign]
    handler = _Records(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)


def finish(session: pytest.Session) -> None:
    text = _buffer.getvalue().decode(errors="replace")
    hits = {secret: next(line for line in text.splitlines() if secret in line)[:300]
            for secret in sorted(_secrets) if secret in text}
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    summary = (f"secret audit: {len(_secrets)} secrets searched in {len(text.splitlines())} log lines, "
               f"{len(hits)} found")
    if reporter is not None:
        reporter.write_line(summary)
        for secret, line in hits.items():
            reporter.write_line(f"  {secret[:6]}… found in: {line}")
    if hits:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
