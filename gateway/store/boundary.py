"""Where the Redis store's lower layers end: their failures become `StoreError`, named by a redacted
address with every spelling of the URL's password scrubbed, and a cancellation redis-py swallowed is
handed back.

redis-py's own messages name host and port only, but scrubbing costs nothing and keeps the rule ("secrets
never appear in logs or error bodies") from resting on another library's habits.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import RedisError

from gateway.store.base import StoreError
from gateway.store.multiplex import ReplyLost

_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def redacted_address(url: str) -> str:
    """The URL without credentials, query or fragment ("redis://127.0.0.1:6379/0"), fit for messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "redis (unparsable url)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def url_secrets(url: str) -> tuple[str, ...]:
    """Every spelling of the URL's password (userinfo or ``?password=``, raw and percent-decoded)."""
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
    except ValueError:
        return ()
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) == "password":
            found.append(value)
    spellings = {s for raw in found for s in (raw, unquote(raw)) if s}
    return tuple(sorted(spellings, key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with every secret replaced by "***" (longest first, so no fragment of one survives)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class Boundary:
    """`RedisStore._boundary`: a plain context manager (it wraps awaits fine), two of which run per request.
    It keeps nothing of a call, so one per operation serves every call (a subclass that does must not)."""

    __slots__ = ("_address", "_op", "_secrets")

    def __init__(self, op: str, address: str, secrets: tuple[str, ...]) -> None:
        self._op, self._address, self._secrets = op, address, secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if exc is not None and isinstance(exc, _ERRORS):
            detail = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            raise StoreError(f"redis {self._op} failed at {self._address}: {detail}",
                             maybe_applied=isinstance(exc, ReplyLost)) from exc


class RedisPyBoundary(Boundary):
    """`RedisStore._redis_py`: also hands back a cancellation that redis-py swallowed.

    On Python 3.11, `asyncio.wait_for` (which redis-py uses to write while it sets a connection up)
    returns the awaited result when that step finishes in the same loop turn as the task's cancellation,
    and the cancellation is lost: the cancelled task carries on (a shutdown waiting for it hangs; a
    deadline around it passes unnoticed). A task whose cancellation count rose during the call was
    cancelled, whatever the call returned or raised, and leaves cancelled. The multiplexed commands
    (admit, settle) await plain futures and need no such check.
    """

    __slots__ = ("_cancelling", "_task")

    def __enter__(self) -> None:
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling() if self._task is not None else 0

    def __exit__(self, _type: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if (not isinstance(exc, asyncio.CancelledError) and self._task is not None
                and self._task.cancelling() > self._cancelling):
            raise asyncio.CancelledError(f"redis {self._op} was cancelled") from exc
        super().__exit__(_type, exc, _tb)
