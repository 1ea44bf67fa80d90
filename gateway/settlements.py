"""The process's settlements beside the requests: those the store could not take yet, retried in the
background and drained at shutdown, and the holds of the requests in flight, renewed while they run.

`metering` hands them work: a settlement that met a store outage (`retry`), a settlement's own task
(`track`), and each admitted request that holds money or a stream slot (`keep`, until it settles).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from gateway.logging import get_logger
from gateway.store.base import KeyMissing, Store, StoreError

log = get_logger("gateway.metering")
T = TypeVar("T")
RETRY_DELAYS_S = (0.2, 0.5, 1, 2, 5, 10, 30)  # then every 30 s


class Renewable(Protocol):
    """What renewal needs of an admitted request (`metering.Ticket`)."""

    generation_id: str
    due: float  # time.monotonic() of its next renewal
    owner: asyncio.Task[Any] | None  # the request's task: renewed only while it runs

    async def renew(self) -> None: ...


class Settlements:
    """Settlements the store could not take yet, retried in the background; drained at shutdown. And the
    holds of this process's requests in flight, renewed while they run (see `keep`)."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Task[None]] = set()
        self.live: dict[str, Renewable] = {}  # generation id -> an admitted request holding money or a slot
        self._timer: asyncio.TimerHandle | None = None  # fires at `_wake`, at or before the earliest renewal due
        self._wake = math.inf
        self._renewing: asyncio.Task[None] | None = None
        self.retrying = 0  # deferred settlements waiting out a back-off
        self._answered = asyncio.Event()  # set (and cleared) when the store answered a request again

    def keep(self, ticket: Renewable) -> None:
        """Renew the ticket's hold and stream slot every third of its TTL until it settles: a request that
        runs longer than `billing.hold_ttl_s` (a long reasoning stream, a slow client) would otherwise see its
        hold return to the balance, where other requests could spend it, and its settlement charge only what
        was left. Only a dead process's hold is meant to return by itself. One timer serves every ticket."""
        self.live[ticket.generation_id] = ticket
        if self._renewing is None and ticket.due < self._wake:
            self._arm(ticket.due)

    def _arm(self, when: float) -> None:
        """Wake at `when` (time.monotonic(), as every ticket's times: the loop's clock may be uvloop's own)."""
        if self._timer is not None:
            self._timer.cancel()
        self._wake = when
        self._timer = asyncio.get_running_loop().call_later(max(when - time.monotonic(), 0), self._fire)

    def _fire(self) -> None:
        self._timer, self._wake = None, math.inf
        self._renewing = asyncio.get_running_loop().create_task(self._renew_due())

    async def _renew_due(self) -> None:
        """Renew the tickets due (a long request is rare: most settle before their first renewal), then
        wait for the next one due."""
        try:
            now = time.monotonic()
            ready = [t for t in list(self.live.values()) if t.due <= now]
            for ticket in ready:
                if ticket.owner is not None and ticket.owner.done():
                    # its request ended without settling (a bug): renewing would hold its money for as long
                    # as this process lives; left alone, the hold returns to the balance at its TTL
                    log.error("a request ended without settling; its hold returns to the balance at its TTL",
                              generation_id=ticket.generation_id)
                    self.live.pop(ticket.generation_id, None)
            await asyncio.gather(*(t.renew() for t in ready if t.generation_id in self.live))
        finally:
            self._renewing = None
            if (due := min((t.due for t in self.live.values()), default=math.inf)) < math.inf:
                self._arm(due)

    def track(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run `coro` as a task that outlives its caller's cancellation and is awaited at shutdown."""
        task = asyncio.get_running_loop().create_task(coro)
        self.pending.add(task)  # type: ignore[arg-type]
        task.add_done_callback(self.pending.discard)  # type: ignore[arg-type]
        return task

    def retry(self, store: Store, args: tuple[Any, ...]) -> None:
        self.track(self._retry(store, args))

    def store_answered(self) -> None:
        """The store answered a request again: the deferred settlements go now rather than at the end of their
        back-off (up to 30 s), so that what they give back (the hold of an admission whose answer an outage
        lost, a settlement's change) is in the balance before the key's next requests are refused for it."""
        self._answered.set()
        self._answered.clear()  # the waiters are woken already; the next outage's wait for the next answer

    async def _retry(self, store: Store, args: tuple[Any, ...]) -> None:
        attempt = 0
        self.retrying += 1
        try:
            while True:
                with contextlib.suppress(TimeoutError):  # the back-off, or sooner once the store answers again
                    async with asyncio.timeout(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]):
                        await self._answered.wait()
                attempt += 1
                try:
                    await store.settle(*args)
                except StoreError:
                    continue
                except KeyMissing:
                    key_missing(args)
                    return
                log.info("deferred settlement done", generation_id=args[1], attempts=attempt)
                return
        finally:
            self.retrying -= 1

    async def drain(self, timeout_s: float) -> None:
        """Wait for every settlement, also the retries that settlements still in flight hand off meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and (left_s := deadline - loop.time()) > 0:
            await asyncio.wait(list(self.pending), timeout=left_s)
        for task in list(self.pending):
            log.error("settlement lost at shutdown; the hold returns to the balance at its TTL")
            task.cancel()
        for pending in (self._timer, self._renewing):
            if pending is not None:
                pending.cancel()


def key_missing(args: tuple[Any, ...]) -> None:
    log.error("settlement for a key the store no longer has (deleted, or the store lost its data); "
              "nothing charged", key_id=args[0], generation_id=args[1], cost=args[2])
