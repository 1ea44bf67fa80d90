"""Admission and settlement of one request: the hold placed before the upstream call, settled exactly once.

`admit()` is the one store round trip on the way in (limits checked and counted, hold placed);
`Ticket.settle()` is the one on the way out. Settling runs as its own tracked task, so a cancelled
request (client gone, shutdown) still settles; a store that fails at that moment gets the settlement
retried in the background until it answers (settling is idempotent per generation id), so a Redis
outage never turns a served request into a free one.

The answer does not wait for that round trip when the bill is already certain: the store charges
min(cost, hold + balance), so a cost within a live hold is charged in full, and the balance left is
the one admission saw less this charge. The settlement is queued before the answer leaves, on the same
ordered connection the key's next admission will use. Only a cost above the hold, or a hold that may
have expired, waits for the store's word.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from gateway import billing, limits, metrics
from gateway.catalog import Price, Route
from gateway.config import TIER_FIELDS, Config, to_nano
from gateway.errors import Forbidden, InsufficientQuota, RateLimited, Unauthorized, Unavailable
from gateway.logging import get_logger, utc_second
from gateway.settlements import Settlements, key_missing
from gateway.store.base import Admission, AdmitResult, KeyMissing, KeyRecord, Store, StoreError
from gateway.store.memory import MAX_AMOUNT
from providers.types import Usage

log = get_logger("gateway.metering")
MAX_TOKENS = MAX_AMOUNT // 2  # a count the store takes, prompt + completion included


def new_generation_id() -> str:
    # random, not secrets/os.urandom: an id must be unique, not unguessable (a generation is readable only
    # by its own key), and os.urandom is a system call on every request
    return f"gen-{int(time.time())}-{random.randbytes(10).hex()}"


def store_unavailable(exc: StoreError) -> Unavailable:
    return Unavailable("The gateway's store is unavailable, so no request can be metered; retry shortly.",
                       code="store_unavailable")


@dataclass(slots=True)
class Outcome:
    """What happened upstream, as far as money and the generation record care."""

    usage: Usage = field(default_factory=Usage)
    estimated: bool = False
    cancelled: bool = False
    finish_reason: str | None = None
    status: int = 200
    upstream_id: str = ""
    first_token_at: float | None = None


@dataclass(slots=True)
class Ticket:
    """An admitted request: its hold, its limits' state, and its one settlement."""

    store: Store
    settlements: Settlements
    config: Config
    route: Route
    key: KeyRecord
    generation_id: str
    hold: int
    byok: bool
    admitted: AdmitResult
    streamed: bool
    endpoint: str = "chat"
    started: float = field(default_factory=time.time)
    egress: str = "direct"
    output_cap: int | None = None  # the most output tokens the upstream was allowed, when the request said
    # time.monotonic() of the admission or of the last renewal the store confirmed (-inf: the hold is gone),
    # and of the next renewal due: elapsed times on this process's monotonic clock, which a step of the wall
    # clock (or its skew against Redis's) cannot move
    renewed: float = 0.0
    due: float = math.inf
    owner: asyncio.Task[Any] | None = None  # the request's task: renewed only while it runs
    asked: Price | None = None  # the price of the processing tier(s) the request asked for, if not the standard
    asked_tier: str = ""  # their name ("flex", "fast+us")
    tier: str = ""  # the tier whose price the charge used, if not the standard: on the generation record
    _task: asyncio.Task[billing.Bill] | None = None
    _known: billing.Bill | None = None

    async def renew(self) -> None:
        """Keep the hold and stream slot another TTL; retried sooner after a store failure; a hold found
        gone (expired while the store or this process stalled) stays gone: the settlement charges what the
        balance covers."""
        ttl = self.config.billing.hold_ttl_s
        sent = time.monotonic()
        self.due = math.inf  # not due again while this renewal runs
        try:
            alive = await self.store.renew(self.key.id, self.generation_id, ttl)
        except StoreError:
            metrics.STORE_ERRORS.labels("renew").inc()
            self.due = time.monotonic() + ttl / 6
            return
        if not alive:
            if self._task is None:  # else it settled meanwhile: its hold is gone, as it should be
                log.warning("a hold expired while its request ran; its settlement charges what the balance covers",
                            generation_id=self.generation_id)
            self.renewed = -math.inf
            self.settlements.live.pop(self.generation_id, None)
            return
        self.renewed, self.due = sent, sent + ttl / 3

    def cost(self, usage: Usage) -> int:
        if self.byok:
            return to_nano(self.config.billing.byok_fee)
        if usage.service_tier or self.asked is not None:
            return self._tiered_cost(usage)
        return billing.token_cost(self.route.price, usage)

    def _tiered_cost(self, usage: Usage) -> int:
        """The cost at the processing tier that served the request: the one its answer names, when priced here
        (a priority request the provider served at the standard tier costs the standard price). An answer that
        names none (a stream cut before any chunk, a server that does not say, a route that never sent the
        field) confirms no discount: the dearer of the standard price and the tier asked for."""
        standard = self.route.price
        price, served, unpriced = standard.stacked(usage.service_tier)
        if unpriced:
            log.warning("an answer names a service tier this gateway has no price for: billed at the dearer of the "
                        "tiers priced and the tier asked for; price it under models.*.price.service_tiers",
                        model=self.route.model_id, service_tier=unpriced[:40])
        cost = billing.token_cost(price, usage)
        self.tier = "" if price is standard else served
        if (unpriced or not usage.service_tier) and self.asked is not None \
                and (asked := billing.token_cost(self.asked, usage)) > cost:
            self.tier, cost = self.asked_tier, asked
        return cost

    async def settle(self, outcome: Outcome, wait: bool = False) -> billing.Bill:
        """Settle once; later calls (and a cancelled caller) share the first settlement. The bill comes
        back at once when it is certain (see the module's docstring), else, or with `wait`, when the
        store has answered."""
        if self._task is None:
            self.settlements.live.pop(self.generation_id, None)
            _bound(outcome.usage)
            if outcome.estimated and self.output_cap is not None and outcome.usage.completion_tokens > self.output_cap:
                # a count of the text relayed errs high: it never bills more output than the upstream could make
                setattr(outcome.usage, "completion_tokens", self.output_cap)  # noqa: B010  (frozen to mypy only)
            cost = self._charge(outcome)
            # the record is taken now: what the caller does with `outcome` afterwards (a client gone during the
            # last write) cannot make the record, the metrics and the bill disagree with the charge
            now = time.time()
            record, usage, estimated = self._record(outcome, now), outcome.usage, outcome.estimated
            self._task = self.settlements.track(self._settle(record, usage, estimated, cost))
            if cost <= self.hold and time.monotonic() - self.renewed < self.config.billing.hold_ttl_s / 2:
                self._known = billing.Bill(cost, self._balance_after(cost), self.hold, self.byok, estimated)
                self._count(usage, cost)
        if self._known is not None and not wait:
            return self._known
        return await asyncio.shield(self._task)

    @property
    def settled(self) -> bool:
        return self._task is not None

    def _charge(self, outcome: Outcome) -> int:
        if outcome.status < 300 or outcome.usage.total_tokens:  # the store charges min(cost, hold + balance)
            return min(max(self.cost(outcome.usage), 0), MAX_AMOUNT)  # counts it takes: 0 .. MAX_AMOUNT
        return 0

    def _balance_after(self, cost: int) -> int:
        """The balance admission saw, the hold given back, `cost` charged: the store's figure when no other
        request of the key moved it meanwhile."""
        return max(self.admitted.balance + self.hold - cost, 0)

    async def _settle(self, record: dict[str, str], usage: Usage, estimated: bool, cost: int) -> billing.Bill:
        args = (self.key.id, self.generation_id, cost, usage.total_tokens, record, self.config.billing.generation_ttl_s)
        try:
            result = await self.store.settle(*args)
            charged, balance = result.charged, result.balance
            if charged < cost and not result.already_settled:  # the store recorded it as the shortfall
                log.warning("the balance did not cover the request's cost; the rest is recorded as its shortfall",
                            key_id=self.key.id, generation_id=self.generation_id, cost=cost, charged=charged)
        except StoreError as exc:
            metrics.STORE_ERRORS.labels("settle").inc()
            log.warning("store unavailable at settlement; retrying in the background",
                        generation_id=self.generation_id, reason=str(exc))
            self.settlements.retry(self.store, args)
            charged, balance = cost, self._balance_after(cost)
        except KeyMissing:  # the answer was served: the client gets it, the operator the error
            key_missing(args)
            charged, balance = 0, 0
        if self._known is None:  # else counted when the bill was known
            self._count(usage, charged)
        return billing.Bill(charged, balance, self.hold, self.byok, estimated)

    def _count(self, usage: Usage, charged: int) -> None:
        labels = (self.route.provider_name, self.route.model_id)
        metrics.child(metrics.TOKENS, *labels, "in").inc(usage.prompt_tokens)
        metrics.child(metrics.TOKENS, *labels, "out").inc(usage.completion_tokens)
        metrics.child(metrics.COST, *labels).inc(billing.nano_to_usd(charged))

    def _record(self, outcome: Outcome, now: float) -> dict[str, str]:
        first = outcome.first_token_at or now
        record = {
            "id": self.generation_id, "model": self.route.model_id, "provider_name": self.route.provider_name,
            "created_at": utc_second(int(self.started)) + "Z",
            "tokens_prompt": str(outcome.usage.prompt_tokens),
            "tokens_completion": str(outcome.usage.completion_tokens),
            "tokens_cached": str(outcome.usage.cached_tokens),
            "latency": str(round((first - self.started) * 1000)),
            "generation_time": str(round((now - first) * 1000)),
            "streamed": _flag(self.streamed), "cancelled": _flag(outcome.cancelled),
            "finish_reason": outcome.finish_reason or "", "is_byok": _flag(self.byok),
            "estimated": _flag(outcome.estimated), "status": str(outcome.status),
            "upstream_id": outcome.upstream_id, "egress": self.egress, "reserved": str(self.hold),
            "endpoint": self.endpoint, "images": str(outcome.usage.images),
        }
        if self.tier:
            record["service_tier"] = self.tier[:40]
        return record


def _bound(usage: Usage) -> None:
    """An upstream's counts as the store takes them (ints from 0 to MAX_TOKENS, else it refuses the settlement
    and the hold waits for its TTL): a negative count is none, an absurd one the most there can be. Changed in
    place, so the answer, the record, the log line and the metrics all state the counts billed."""
    if (0 <= usage.prompt_tokens <= MAX_TOKENS and 0 <= usage.completion_tokens <= MAX_TOKENS
            and 0 <= usage.cached_tokens <= MAX_TOKENS and 0 <= usage.cache_write_tokens <= MAX_TOKENS
            and 0 <= usage.reasoning_tokens <= MAX_TOKENS):
        return  # every sane answer: five comparisons
    for name in ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens", "reasoning_tokens"):
        setattr(usage, name, min(max(getattr(usage, name), 0), MAX_TOKENS))


def _asked_tier(route: Route, body: dict[str, Any], worst: Usage) -> tuple[str, Price, int] | None:
    """The processing tier the request asks for, unless the standard one: its name (several fields' tiers
    joined by "+", in `TIER_FIELDS` order: "fast+us"), its price (their premiums multiplied) and the most the
    worst case costs at it or at any one of them (the answer may name them all, some, or none). Validation
    refused a tier without a price; a model that drops the field serves the standard tier (or the account's).

    A request whose `service_tier` names no other tier (or is dropped before the upstream) is served the account's
    default tier (`Route.unasked`: OpenAI's project default, Anthropic's Priority Tier) when there is one, as if
    it had asked for it: held at it, and charged it unless the answer names another."""
    if not route.price.tiers:
        return None
    named = route.tiers_asked(body)
    if not named:  # nearly every request
        if route.unasked is None:
            return None
        name, price = route.unasked  # worked out at load
        return name, price, billing.token_cost(price, worst)
    tiers = {field: tier for field, tier, price in named if price is not None and price is not route.price}
    if route.unasked is not None and "service_tier" not in tiers:
        tiers["service_tier"] = route.unasked[0]
    asked = [tiers[field] for field in TIER_FIELDS if field in tiers]
    if not asked:
        return None
    name = "+".join(asked)
    prices = [route.price.stacked(tier)[0] for tier in (*asked, name)]
    return name, prices[-1], max(billing.token_cost(price, worst) for price in prices)


def _flag(value: bool) -> str:
    return "1" if value else "0"


async def admit(store: Store, settlements: Settlements, config: Config, route: Route, key: KeyRecord,
                body: dict[str, Any], byok: bool, streamed: bool, worst: Usage | None = None,
                endpoint: str = "chat") -> Ticket:
    """Check and count limits and place the worst-case hold in one atomic store step, or refuse.

    `worst` is the usage the hold must cover (the endpoint knows it); by default a chat request's.
    """
    if worst is None:
        worst = billing.worst_case_usage(body, route.model.max_output_tokens,
                                         config.billing.default_max_output_tokens)
    generation_id = new_generation_id()
    asked = None if byok else _asked_tier(route, body, worst)
    hold = to_nano(config.billing.byok_fee) if byok else billing.token_cost(route.price, worst)
    if asked is not None:  # a tier may cost more, or serve the request at the standard price
        hold = max(hold, asked[2])
    hold = min(hold, MAX_AMOUNT)  # no balance reaches it: refused as insufficient, not as a bad argument
    eff = limits.effective(route.model.limits, config.limits.default, key)
    streams = key.max_streams if streamed and key.max_streams else None
    admission = Admission(key.id, route.model_id, generation_id, hold, config.billing.hold_ttl_s,
                          eff.rpm, eff.rpd, eff.tpm, streams)
    try:
        result = await store.admit(admission)
    except StoreError as exc:
        metrics.STORE_ERRORS.labels("admit").inc()
        metrics.store_up(False)
        if exc.maybe_applied:  # the hold may be in place: give it back once the store answers again
            settlements.retry(store, _release_args(key.id, generation_id, route.model_id,
                                                   config.billing.generation_ttl_s))
        raise store_unavailable(exc) from exc
    except asyncio.CancelledError:
        # the script may still place the hold after we stopped waiting: give it straight back
        settlements.track(_release(store, settlements, key.id, generation_id, route.model_id,
                                   config.billing.generation_ttl_s))
        raise
    metrics.store_up(True)
    if settlements.retrying:
        settlements.store_answered()
    _refuse_unless_ok(result, hold, route.model_id, streams)
    cap = worst.completion_tokens if billing.requested_max_output(body) else None  # else unbounded upstream
    ticket = Ticket(store, settlements, config, route, key, generation_id, hold, byok, result, streamed,
                    endpoint, time.time(), route.provider.egress, cap, time.monotonic())
    if asked is not None:
        ticket.asked_tier, ticket.asked = asked[0], asked[1]
    if hold or streams:  # else it holds nothing that could expire
        ticket.due, ticket.owner = ticket.renewed + config.billing.hold_ttl_s / 3, asyncio.current_task()
        settlements.keep(ticket)
    return ticket


async def _release(store: Store, settlements: Settlements, key_id: str, generation_id: str, model_id: str,
                   ttl_s: int) -> None:
    """Settle an abandoned admission at zero: returns its hold if the script placed one (once the store
    answers again, if it fails now: else the hold and a stream slot would wait for the hold's TTL).

    The store runs a process's commands in the order they were sent, so this settle cannot overtake the
    admit it undoes; if that admit was refused or never ran, it only records a cancelled generation.
    """
    args = _release_args(key_id, generation_id, model_id, ttl_s)
    try:
        await store.settle(*args)
    except StoreError:
        settlements.retry(store, args)
    except KeyMissing:
        pass


def _release_args(key_id: str, generation_id: str, model_id: str, ttl_s: int) -> tuple[Any, ...]:
    """`store.settle` arguments that charge nothing and record the generation as abandoned."""
    record = {"id": generation_id, "model": model_id, "cancelled": "1", "status": "499"}
    return key_id, generation_id, 0, 0, record, ttl_s


def _refuse_unless_ok(result: AdmitResult, hold: int, model_id: str, streams: int | None) -> None:
    if result.outcome == "ok":
        return
    if result.outcome == "streams":
        raise RateLimited(f"This key may have at most {streams} streams open at once; wait for one to finish.",
                          code="too_many_streams", headers={"Retry-After": "1"})
    headers = limits.headers(result)
    if result.outcome == "rate_limited":
        metrics.RATE_LIMITED.labels(model_id).inc()
        window = {"rpm": "requests per minute", "rpd": "requests per day", "tpm": "tokens per minute"}
        raise RateLimited(f"Rate limit reached for this key and model ({window.get(result.limited_by, 'limit')}). "
                          f"Retry in {limits.retry_after(result)} s.",
                          headers={**headers, "Retry-After": limits.retry_after(result)})
    if result.outcome == "insufficient":
        metrics.INSUFFICIENT.labels(model_id).inc()
        raise InsufficientQuota(
            f"Insufficient balance: this request may cost up to ${billing.nano_to_usd(hold):.9f} and the key "
            f"has ${billing.nano_to_usd(result.balance):.9f} available. Top up the key or lower max_tokens.",
            headers=headers)
    if result.outcome == "disabled":
        raise Forbidden("This API key has been disabled by the gateway's operator.", code="key_disabled")
    raise Unauthorized("Incorrect API key provided.")


async def close(ticket: Ticket, outcome: Outcome) -> None:
    """Finally-clause helper: settle what was not settled yet, and wait for the store to take it (an
    attempt that ends here failed, and the retry or fallback that may follow must find its hold returned
    and its slot free). If the caller is cancelled meanwhile, the settlement still completes: it is a
    tracked task."""
    if not ticket.settled:
        await ticket.settle(outcome, wait=True)
