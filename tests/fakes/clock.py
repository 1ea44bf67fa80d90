"""A clock that moves only when a test says so, for the memory store's windows and hold expiry."""

from __future__ import annotations

T0 = 1_699_999_985.0  # 5 s into a minute, 6415 s before a UTC midnight


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
