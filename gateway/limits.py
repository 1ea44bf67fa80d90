"""Rate limits per key × model: which limits apply, and how they read in OpenAI's headers.

The store checks and counts them atomically (`Store.admit`); this module only decides the numbers and
the wording. A model's own limits replace `limits.default` field by field; a key's rpm/rpd then cap them:
the tightest applies.
"""

from __future__ import annotations

import math

from gateway.config import LimitsConfig
from gateway.store.base import AdmitResult, KeyRecord, WindowState
from providers.types import record


@record
class Effective:
    rpm: int | None
    rpd: int | None
    tpm: int | None


def _tightest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def effective(model: LimitsConfig | None, default: LimitsConfig, key: KeyRecord) -> Effective:
    def pick(field: str) -> int | None:
        own = getattr(model, field) if model is not None else None
        return own if own is not None else getattr(default, field)

    return Effective(_tightest(pick("rpm"), key.rpm), _tightest(pick("rpd"), key.rpd), pick("tpm"))


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: Go durations such as "1s", "6m0s", "20ms"."""
    if seconds < 1:
        return f"{max(math.ceil(seconds * 1000), 1)}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _window_headers(kind: str, window: WindowState | None) -> dict[str, str]:
    if window is None:
        return {}
    return {f"x-ratelimit-limit-{kind}": str(window.limit),
            f"x-ratelimit-remaining-{kind}": str(max(window.remaining, 0)),
            f"x-ratelimit-reset-{kind}": go_duration(window.reset_s)}


def _requests_window(result: AdmitResult) -> WindowState | None:
    """The requests window that binds: the one with fewer requests left (rpm or rpd; on a tie the one that
    resets later), so a request the day refuses is not told that the minute has requests left."""
    minute, day = result.requests, result.day
    if day is None or minute is None:
        return minute or day
    left, day_left = max(minute.remaining, 0), max(day.remaining, 0)
    return day if day_left < left or (day_left == left and day.reset_s > minute.reset_s) else minute


def headers(result: AdmitResult) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the windows that apply."""
    return {**_window_headers("requests", _requests_window(result)), **_window_headers("tokens", result.tokens)}


def retry_after(result: AdmitResult) -> str:
    """Whole seconds, rounded up, never 0: a client that waits this long gets through."""
    return str(max(math.ceil(result.retry_after_s), 1))
