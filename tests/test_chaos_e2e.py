"""Chaos: a few hundred concurrent requests of every kind while upstreams, a proxy, Redis and the config
fail and change under them; then the money and recovery invariants the gateway promises.

The gateway is the real app on a loopback port, with the Redis store on a redis-server of this test's own
(paused with SIGSTOP and restarted as an operator does, `SHUTDOWN SAVE`: the session's server is shared),
leaving through an egress pool of a microsocks and a pproxy (the microsocks killed and restarted), in front
of a fake OpenAI and a fake Anthropic upstream (failing, slow, cutting streams). Clients are the official
openai and anthropic SDKs, on keys with small balances, a tight rpm and a stream cap; some hang up
mid-stream. Faults follow a seeded schedule; which request meets which fault is up to timing, so the
assertions are invariants that hold whatever met what:

- per key: balance + usage == credits, balance >= 0, no hold left (right after the settlements drained:
  the gateway process never died, so no hold may wait for its TTL), the audit ledger sums to usage with one
  entry per generation;
- every bill a client was told (the `billing` block of a 200 answer) is what its generation was charged
  (or charged + shortfall, for a bill the store could not confirm: see "Balances" in the README), so the
  sum told equals the usage charged for them; every other charge belongs to a request whose client got no
  bill (it hung up, or its stream ended with an error event) and is recorded as such (cancelled, or its
  error status), and no bill told is missing from the ledger;
- no 500, ever; every error in OpenAI's shape (Anthropic's on /v1/messages), its code one the README lists;
- /readyz is 200 again, both proxies are back in the pool, and a fresh request succeeds.

`GW_CHAOS_SEED=N` runs another schedule (the default is fixed, so a failure replays with its seed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import redis.asyncio as aioredis
import secret_audit_plugin
import yaml
from apis_config import ANTHROPIC_KEY, OPENAI_KEY
from fakes.anthropic_upstream import FakeAnthropic
from fakes.anthropic_upstream import make_app as anthropic_app
from fakes.openai_upstream import WIRE as OPENAI_WIRE
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as openai_app
from proxies import Microsocks, PProxy
from redis_server import RedisServer

from gateway import keys
from gateway.app import create_app, reload_config
from gateway.config_load import parse
from gateway.state import RUNTIME

SEED = int(os.environ.get("GW_CHAOS_SEED", "20261203"))  # another seed, another schedule: a longer hunt
WORKERS = 16
HOLD_TTL_S = 6
NANO = 1_000_000_000
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
RATE_LIMIT_BODY = json.loads((OPENAI_WIRE / "error-429-rate-limit-exceeded.json").read_text())["body"]
KEYS = {  # name: (dollars, caps)
    "rich-1": (2.0, {}), "rich-2": (2.0, {}), "rich-3": (2.0, {}),
    "poor-1": (0.06, {}), "poor-2": (0.06, {}),
    "tight": (2.0, {"rpm": 6, "max_streams": 1}),
}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own: pausing and restarting it disturbs no other test."""
    with RedisServer() as server:
        yield server


def config_doc(urls: dict[str, str], redis_url: str, prefix: str, proxies: list[Any], rpm: int) -> dict[str, Any]:
    timeouts = {"connect_s": 1, "first_byte_s": 1.5, "between_chunks_s": 1.5}
    price = {"input_per_mtok": 0.1, "output_per_mtok": 100}  # a request costs ~$0.003, holds $0.005-$0.03
    return {
        "server": {"max_body_bytes": 65536, "sse_keepalive_s": 0.5},
        "store": {"url": redis_url, "prefix": prefix},
        "billing": {"hold_ttl_s": HOLD_TTL_S, "key_cache_s": 1},
        "retries": {"max_retries": 1, "base_delay_s": 0.01, "max_delay_s": 0.05, "deadline_s": 10,
                    "honor_retry_after_up_to_s": 1},
        "limits": {"default": {"rpm": rpm, "rpd": 100000}},
        "egress": {"pools": {"p": {
            "proxies": [{"name": f"p{i}", "url": p.url} for i, p in enumerate(proxies)], "affinity": False,
            "health": {"interval_s": 0.3, "timeout_s": 1, "eject_after_failures": 2, "restore_after_successes": 1},
        }}},
        "providers": {
            "oai": {"kind": "openai", "base_url": urls["openai"], "api_key": OPENAI_KEY, "egress": "p",
                    "timeouts": timeouts},
            "claude": {"kind": "anthropic", "base_url": urls["anthropic"], "api_key": ANTHROPIC_KEY, "egress": "p",
                       "timeouts": timeouts},
        },
        "models": {
            "oai/gpt-4o": {"price": price, "max_output_tokens": 300},
            "claude/sonnet": {"upstream": "claude-sonnet-4-5", "price": price, "max_output_tokens": 300},
        },
    }


@dataclass
class Outcome:
    """One request as its client saw it."""

    kind: str
    key: str
    status: int = 200  # of the answer; 200 with `code` set: the stream ended with an error event
    code: str | None = None
    generation_id: str = ""
    told: int | None = None  # nano-dollars the billing block said, when the client got one
    hung_up: bool = False


class Chaos:
    """The clients, the fault schedule and what every request saw."""

    def __init__(self, url: str, plain: dict[str, str], ups: dict[str, Any]) -> None:
        self.url, self.plain, self.ups = url, plain, ups
        self.outcomes: list[Outcome] = []
        self.problems: list[str] = []
        self.faults: Counter[str] = Counter()
        self._oai = {k: openai.AsyncOpenAI(base_url=url + "/v1", api_key=v, max_retries=0, timeout=30)
                     for k, v in plain.items()}
        self._claude = {k: anthropic.AsyncAnthropic(base_url=url, api_key=v, max_retries=0, timeout=30)
                        for k, v in plain.items()}

    async def close(self) -> None:
        for client in [*self._oai.values(), *self._claude.values()]:
            await client.close()

    # --- clients -------------------------------------------------------------------------------------

    async def worker(self, rng: random.Random, done: asyncio.Event) -> None:
        while not done.is_set():
            key = rng.choice(list(self.plain))
            kind = rng.choices(["chat", "chat-stream", "chat-hangup", "msg", "msg-stream", "msg-hangup"],
                               weights=[25, 20, 10, 20, 15, 10])[0]
            model = rng.choice(["oai/gpt-4o", "claude/sonnet"])
            outcome = Outcome(f"{kind}:{model}", key)
            try:
                async with asyncio.timeout(30):
                    if kind.startswith("chat"):
                        await self.chat(outcome, model, kind, rng)
                    else:
                        await self.messages(outcome, model, kind, rng)
            except (openai.APIStatusError, anthropic.APIStatusError) as exc:
                if exc.status_code == 200:  # the Anthropic SDK raises an error event as its stream's status
                    self.stream_error(outcome, exc.body)
                else:
                    self.error_answer(outcome, exc.status_code, exc.response)
            except openai.APIError as exc:  # an error event inside a 200 stream
                self.stream_error(outcome, exc.body)
            except anthropic.APIError as exc:
                self.stream_error(outcome, exc.body)
            except Exception as exc:  # a hang, a dropped connection: never expected
                self.problems.append(f"{outcome.kind} on {key}: {type(exc).__name__}: {exc}")
            self.outcomes.append(outcome)
            await asyncio.sleep(rng.uniform(0.1, 0.6))

    async def chat(self, outcome: Outcome, model: str, kind: str, rng: random.Random) -> None:
        client = self._oai[outcome.key]
        body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello."}]}
        if rng.random() < 0.6:  # 20: below what the fake answers with (30 tokens streamed), a cost above the hold
            body["max_tokens"] = rng.choice([20, 50])
        if kind == "chat":
            answer = await client.chat.completions.create(**body)
            outcome.generation_id, outcome.told = answer.id, _nano(answer.model_extra["billing"])
            return
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
        stream = await client.chat.completions.create(**body, stream=True)
        leave_after = rng.randint(1, 3) if kind == "chat-hangup" else None
        async with stream:
            async for n, chunk in _numbered(stream):
                outcome.generation_id = chunk.id
                if (bill := (chunk.model_extra or {}).get("billing")) is not None:
                    outcome.told = _nano(bill)  # the usage chunk repeats the finish chunk's bill
                if n == leave_after:
                    outcome.hung_up = True
                    return

    async def messages(self, outcome: Outcome, model: str, kind: str, rng: random.Random) -> None:
        client = self._claude[outcome.key]
        body: dict[str, Any] = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
        if kind == "msg":
            answer = await client.messages.create(**body)
            outcome.generation_id, outcome.told = answer.id, _nano(answer.model_extra["billing"])
            return
        leave_after = rng.randint(1, 3) if kind == "msg-hangup" else None
        async with client.messages.stream(**body) as stream:
            n = 0
            async for event in stream:
                n += 1
                if event.type == "message_start":
                    outcome.generation_id = event.message.id
                if event.type == "message_delta" and (bill := (event.model_extra or {}).get("billing")):
                    outcome.told = _nano(bill)
                if n == leave_after:
                    outcome.hung_up = True
                    return

    def error_answer(self, outcome: Outcome, status: int, response: Any) -> None:
        outcome.status = status
        try:
            body = response.json()
        except ValueError:
            self.problems.append(f"{outcome.kind}: {status} without a JSON body: {response.text[:200]}")
            return
        anthropic_shape = outcome.kind.startswith("msg")
        error = body.get("error") if isinstance(body, dict) else None
        wanted = {"type", "message", "code"} if anthropic_shape else {"message", "type", "param", "code"}
        if not isinstance(error, dict) or set(error) != wanted or (anthropic_shape and body.get("type") != "error"):
            self.problems.append(f"{outcome.kind}: {status} not in the {'Anthropic' if anthropic_shape else 'OpenAI'} "
                                 f"error shape: {body}")
            return
        outcome.code = error.get("code")

    def stream_error(self, outcome: Outcome, body: Any) -> None:
        """An error event after the stream's headers: the OpenAI SDK hands its `error` object over, the
        Anthropic SDK the whole event."""
        error = body.get("error", body) if isinstance(body, dict) else None
        if not isinstance(error, dict) or "message" not in error:
            self.problems.append(f"{outcome.kind}: a stream error event not in the error shape: {body!r}")
            return
        outcome.code = error.get("code") or f"(no code: {error})"

    # --- faults --------------------------------------------------------------------------------------

    async def inject(self, rng: random.Random, done: asyncio.Event, redis_server: RedisServer, flappy: Microsocks,
                     app: Any, config_path: Path, doc: dict[str, Any]) -> None:
        """Faults one after another, each at a random moment and for a random while, in seeded order; the load
        goes on for a while after the last."""
        oai, claude = self.ups["openai"], self.ups["anthropic"]
        faults = ["oai-500", "oai-429", "oai-cut", "oai-slow-headers", "oai-silent", "claude-529", "claude-500",
                  "claude-error-event", "claude-slow", "proxy-kill", "redis-pause", "redis-restart", "reload"]
        rng.shuffle(faults)
        await asyncio.sleep(1.0)  # a calm start: every key and script cached once
        for fault in faults:
            await asyncio.sleep(rng.uniform(0.0, 0.4))
            self.faults[fault] += 1
            hold_s = rng.uniform(0.6, 1.2)
            if fault == "proxy-kill":
                await flappy.astop()
                await asyncio.sleep(hold_s)
                await flappy.astart()
            elif fault == "redis-pause":
                redis_server.pause()
                await asyncio.sleep(hold_s)
                redis_server.resume()
            elif fault == "redis-restart":
                await _restart(redis_server)
            elif fault == "reload":
                doc["limits"]["default"]["rpm"] += 1  # any change: the point is the swap under load
                config_path.write_text(yaml.safe_dump(doc))
                assert await reload_config(app)
            else:
                fake = oai if fault.startswith("oai") else claude
                _set_fault(fake, fault)
                await asyncio.sleep(hold_s)
                _calm(fake)
        await asyncio.sleep(1.0)
        done.set()


def _calm(fake: Any) -> None:
    """No fault; streams paced so that clients can hang up in the middle of one."""
    fake.reset()
    if isinstance(fake, FakeOpenAI):
        fake.delay_between_chunks_s = 0.02
    else:
        fake.delay_between_events_s = 0.02


def _set_fault(fake: Any, fault: str) -> None:
    if fault == "oai-500":
        fake.status = 500
    elif fault == "oai-429":
        fake.status, fake.error_body, fake.error_headers = 429, RATE_LIMIT_BODY, {"Retry-After": "0"}
    elif fault == "oai-cut":
        fake.close_mid_stream_after = 2
    elif fault == "oai-slow-headers":
        fake.delay_before_headers_s = 3.0  # past connect_s + first_byte_s: a 504
    elif fault == "oai-silent":
        fake.silence_s_before_first_chunk = 2.0  # headers, then silence past between_chunks_s
    elif fault == "claude-529":
        fake.status, fake.error_body = 529, FakeAnthropic.overloaded_body()
    elif fault == "claude-500":
        fake.status = 500
    elif fault == "claude-error-event":
        fake.error_event_after = 3
    elif fault == "claude-slow":
        fake.delay_before_headers_s = 3.0


async def _restart(server: RedisServer) -> None:
    """An operator's restart: what Redis acknowledged is saved and loaded again."""
    admin = aioredis.from_url(server.url)
    with contextlib.suppress(Exception):
        await admin.shutdown(save=True)
    await admin.aclose()
    await asyncio.to_thread(server.stop)
    await asyncio.to_thread(server.start)


async def _numbered(stream: Any) -> Any:
    n = 0
    async for item in stream:
        n += 1
        yield n, item


def _nano(bill: dict[str, Any]) -> int:
    return round(bill["request_cost"] * NANO)


def _readme_lists(code: str | None) -> bool:
    return code is not None and re.search(rf"`{re.escape(code)}`", README) is not None


# --- the test --------------------------------------------------------------------------------------------


async def test_chaos_keeps_money_exact_and_recovers(aiohttp_server: Any, own_redis: RedisServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.store.redis.SOCKET_TIMEOUT_S", 0.5)  # a paused Redis fails requests, not hangs
    monkeypatch.setattr("gateway.store.redis.CONNECT_TIMEOUT_S", 0.5)
    ups = {"openai": FakeOpenAI(), "anthropic": FakeAnthropic()}
    for fake in ups.values():
        _calm(fake)
    urls = {"openai": str((await aiohttp_server(openai_app(ups["openai"]))).make_url("/v1")),
            "anthropic": str((await aiohttp_server(anthropic_app(ups["anthropic"]))).make_url("")).rstrip("/")}
    prefix = f"chaos{uuid.uuid4().hex[:8]}:"
    with Microsocks() as flappy, PProxy() as steady:
        doc = config_doc(urls, own_redis.url, prefix, [flappy, steady], rpm=60)
        config_path = tmp_path / "chaos.yaml"
        config_path.write_text(yaml.safe_dump(doc))
        app = create_app(parse(config_path.read_text(), {}), config_path=str(config_path))
        url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
        plain, ids = await _make_keys(app)
        chaos = Chaos(url, plain, ups)
        try:
            done = asyncio.Event()
            rng = random.Random(SEED)
            workers = [chaos.worker(random.Random(rng.random()), done) for _ in range(WORKERS)]
            await asyncio.gather(chaos.inject(random.Random(rng.random()), done, own_redis, flappy, app,
                                              config_path, doc), *workers)
            for fake in ups.values():
                _calm(fake)
            await _drained(app)
            await _check_answers(chaos)
            await _check_ledger(app, own_redis.url, prefix, ids, chaos.outcomes)
            await _check_recovered(app, url, plain["rich-1"])
        finally:
            await chaos.close()


async def _make_keys(app: Any) -> tuple[dict[str, str], dict[str, str]]:
    plain, ids = {}, {}
    for name, (dollars, caps) in KEYS.items():
        secret, record = keys.new_record(name, round(dollars * NANO), **caps)
        secret_audit_plugin.register(secret)
        await app[RUNTIME].store.create_key(record)
        plain[name], ids[name] = secret, record.id
    return plain, ids


async def _drained(app: Any) -> None:
    """Every settlement (deferred ones included) has reached the store."""
    pending = app[RUNTIME].settlements.pending
    async with asyncio.timeout(30):
        while pending:
            await asyncio.wait(list(pending))


async def _check_answers(chaos: Chaos) -> None:
    outcomes = chaos.outcomes
    summary = Counter(f"{o.status}:{o.code}" if o.code else str(o.status) for o in outcomes)
    print(f"chaos seed {SEED}: {len(outcomes)} requests, {sum(o.hung_up for o in outcomes)} hung up; "
          f"faults {dict(chaos.faults)}; answers {dict(summary)}")
    assert not chaos.problems, (chaos.problems[:10], summary)
    assert len(outcomes) >= 250, summary  # a few hundred requests
    assert len(chaos.faults) == 13, chaos.faults
    assert 500 not in {o.status for o in outcomes}, summary
    unlisted = {o.code for o in outcomes if o.code is not None and not _readme_lists(o.code)}
    assert not unlisted, (unlisted, summary)
    assert summary["200"] >= len(outcomes) // 3, summary  # faults are the exception, not the rule
    for wanted in ("402:insufficient_quota", "429:rate_limit_exceeded", "503:store_unavailable"):
        assert summary[wanted], (wanted, summary)
    told = [o for o in outcomes if o.status == 200 and o.code is None and not o.hung_up]
    assert all(o.told is not None and o.generation_id for o in told), [o for o in told if o.told is None][:5]


async def _check_ledger(app: Any, redis_url: str, prefix: str, ids: dict[str, str], outcomes: list[Outcome]) -> None:
    admin = aioredis.from_url(redis_url, decode_responses=True)
    try:
        told = {o.generation_id: o.told for o in outcomes if o.told is not None}
        unbilled = {o.generation_id for o in outcomes if o.told is None and o.generation_id}
        seen: set[str] = set()
        untold: Counter[str] = Counter()
        shortfalls = 0
        for name, key_id in ids.items():
            fields = await admin.hgetall(f"{prefix}key:{{{key_id}}}")
            balance, usage, credits = (int(fields[f]) for f in ("balance", "usage", "credits"))
            holds = await admin.hgetall(f"{prefix}holds:{{{key_id}}}")
            assert not holds, (name, holds)  # the process never died: nothing waits for its TTL
            assert balance >= 0 and balance + usage == credits, (name, balance, usage, credits)
            entries = [e for _, e in await admin.xrange(f"{prefix}audit:{{{key_id}}}")]
            generations = [e["generation_id"] for e in entries]
            assert len(set(generations)) == len(generations), (name, Counter(generations).most_common(3))
            assert sum(int(e["charged"]) for e in entries) == usage, name
            seen.update(generations)
            for entry in entries:
                charged, gen = int(entry["charged"]), entry["generation_id"]
                shortfalls += int(entry.get("shortfall", 0)) > 0
                if gen in told:  # (a bill the store could not confirm states the cost; what the balance could
                    # not cover of it then is the recorded shortfall, README "Balances")
                    assert told[gen] in (charged, charged + int(entry.get("shortfall", 0))), (name, entry, told[gen])
                elif charged:  # charged without a bill: its client left, or its stream broke
                    untold[f"{entry.get('status')}/cancelled={entry.get('cancelled')}"] += 1
                    assert entry.get("cancelled") == "1" or entry.get("status") != "200", entry
                    assert gen in unbilled or entry.get("status") != "200", entry
        print(f"ledger: {len(seen)} generations settled, {len(told)} bills told, untold charges by status "
              f"{dict(untold)}, shortfalls {shortfalls}")
        free = [gen for gen in told if gen not in seen]
        assert not free, free[:5]  # every bill a client was told is in the ledger
    finally:
        await admin.aclose()


async def _check_recovered(app: Any, url: str, key: str) -> None:
    """Ready again, both proxies back in the pool, and a fresh request served: no restart of anything."""
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(20):
            while True:
                async with http.get(url + "/readyz") as resp:
                    ready = resp.status == 200
                states = {p["state"] for p in app[RUNTIME].egress.snapshot()["p"]["proxies"]}
                if ready and states == {"up"}:
                    break
                await asyncio.sleep(0.2)
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        try:
            answer = await client.chat.completions.create(
                model="oai/gpt-4o", max_tokens=50, messages=[{"role": "user", "content": "still there?"}])
            assert answer.choices[0].message.content and answer.model_extra["billing"]["request_cost"] > 0
        finally:
            await client.close()
