"""Faults under concurrent load: Redis restarted, a proxy dying, a black-hole proxy.

At the end of each: no balance below zero, no hold left, every charge in the audit ledger and in the
balance exactly once, and the gateway serving again without a restart of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from fakes.openai_upstream import FakeOpenAI, make_app
from faultproxy import Fault, FaultProxy
from harness import Gateway, start_gateway
from proxies import Microsocks
from redis_server import RedisServer

from gateway.config_load import parse
from gateway.state import RUNTIME

MESSAGES = [{"role": "user", "content": "hi"}]
COST = 10 * 10_000  # fake/metered: 10 completion tokens at 10 USD/Mtok, input free; with max_tokens 10, hold == cost


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (the session's is shared): restarting it disturbs nobody."""
    with RedisServer() as server:
        yield server


class Load:
    """`workers` clients sending requests back to back until stopped; outcomes counted as they come."""

    def __init__(self, gw: Gateway, key: str, body: dict[str, Any], workers: int) -> None:
        self.gw, self.key, self.body, self.workers = gw, key, body, workers
        self.outcomes: Counter[str] = Counter()
        self.costs: list[int] = []
        self.changed = asyncio.Condition()
        self._stop = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Load:
        self._http = aiohttp.ClientSession()
        self._tasks = [asyncio.ensure_future(self._worker()) for _ in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)
        await self._http.close()

    async def until(self, predicate: Callable[[Counter[str]], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: predicate(self.outcomes))

    async def _worker(self) -> None:
        while not self._stop:
            outcome = await self._one()
            async with self.changed:
                self.outcomes[outcome] += 1
                self.changed.notify_all()

    async def _one(self) -> str:
        try:
            async with self._http.post(self.gw.url + "/v1/chat/completions", json=self.body,
                                       headers={"Authorization": f"Bearer {self.key}"}) as r:
                raw = await r.read()
        except aiohttp.ClientError as exc:
            return f"client-error:{type(exc).__name__}"
        if r.status != 200:
            return f"{r.status}:{json.loads(raw)['error']['code']}"
        if self.body.get("stream"):
            return _stream_outcome(raw, self.costs)
        self.costs.append(round(json.loads(raw)["billing"]["request_cost"] * 1e9))
        return "200"


def _stream_outcome(raw: bytes, costs: list[int]) -> str:
    events = [json.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
    errors = [e["error"]["code"] for e in events if "error" in e]
    if errors:
        return f"200+error:{errors[0]}"
    billed = [e["billing"]["request_cost"] for e in events if "billing" in e]
    costs.append(round(billed[-1] * 1e9))
    return "200"


async def settled(gw: Gateway) -> None:
    pending = gw.app[RUNTIME].settlements.pending
    async with asyncio.timeout(20):
        while pending:
            await asyncio.wait(list(pending))


async def ledger_is_exact(gw: Gateway, key_id: str) -> tuple[int, int]:
    """Balance, usage — after checking no hold is open and the audit ledger sums to the usage."""
    await settled(gw)
    store = gw.app[RUNTIME].store
    record = await store.get_key(key_id)
    assert record is not None
    assert record.balance >= 0
    assert record.balance + record.usage == record.credits  # no open hold
    charged = [int(row["charged"]) async for row in store.iter_usage() if row.get("key_id") == key_id]
    assert sum(charged) == record.usage  # every charge in the ledger once, nothing charged outside it
    return record.balance, record.usage


# --- Redis restarted under load ------------------------------------------------------------------------


async def test_redis_restart_under_load(make_gateway: Any, own_redis: RedisServer) -> None:
    gw = await make_gateway(store_url=own_redis.url, prefix=f"rr{uuid.uuid4().hex}:", billing={"key_cache_s": 0})
    funded = 40  # under the key's 60 requests a minute: every refusal left is for money
    key, key_id = await gw.add_key("load", balance=funded * COST + COST // 2)
    body = {"model": "fake/metered", "messages": MESSAGES, "max_tokens": 10}
    async with Load(gw, key, body, workers=6) as load:
        await load.until(lambda o: o["200"] >= 10)
        admin = aioredis.from_url(own_redis.url)
        with contextlib.suppress(Exception):
            await admin.shutdown(save=True)  # an operator's restart: what was acknowledged is kept
        await admin.aclose()
        await asyncio.to_thread(own_redis.stop)
        down = load.outcomes["503:store_unavailable"]
        await load.until(lambda o: o["503:store_unavailable"] >= down + 5)
        # Read while Redis is down and nothing can be served: the load may spend the rest of the money
        # before start() returns. Back without restarting the gateway means admissions answered by the
        # store again: served, or refused for money when the requests before the shutdown had spent it.
        answered = load.outcomes["200"] + load.outcomes["402:insufficient_quota"]
        await asyncio.to_thread(own_redis.start)
        await load.until(lambda o: o["200"] + o["402:insufficient_quota"] >= answered + 5)
        await load.until(lambda o: o["402:insufficient_quota"] >= 3)  # and on until the money runs out
    unexpected = {k: v for k, v in load.outcomes.items()
                  if k not in ("200", "503:store_unavailable", "402:insufficient_quota")}
    assert not unexpected, load.outcomes
    balance, usage = await ledger_is_exact(gw, key_id)
    assert load.outcomes["200"] == funded == len(gw.fake.requests)  # every upstream call paid, exactly once
    assert usage == sum(load.costs) == funded * COST and balance == COST // 2


# --- a proxy dying under load, and a black-hole proxy -------------------------------------------------


def _pool_config(upstream_url: str, proxies: list[dict[str, Any]]) -> Any:
    doc = {
        "server": {"sse_keepalive_s": 0.5},
        "retries": {"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.05},
        "egress": {"pools": {"p": {"proxies": proxies, "affinity": False, "health": {
            "interval_s": 0.3, "timeout_s": 1, "eject_after_failures": 2, "restore_after_successes": 1}}}},
        "providers": {"viapool": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-provider-000000000000",
                                  "egress": "p", "timeouts": {"connect_s": 0.5, "first_byte_s": 2,
                                                              "between_chunks_s": 2}}},
        "models": {"viapool/metered": {"upstream": "gpt-4o", "price": {"output_per_mtok": 10}}},
    }
    return parse(yaml.safe_dump(doc), {})


async def _start(aiohttp_server: Any, proxies: list[dict[str, Any]],
                 fake: FakeOpenAI) -> tuple[Gateway, Callable[[], Awaitable[None]]]:
    server = await aiohttp_server(make_app(fake))
    gw = await start_gateway(aiohttp_server, _pool_config(str(server.make_url("/v1")), proxies), fake)
    return gw, gw.close


async def test_proxy_dying_under_load(aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    fake.delay_between_chunks_s = 0.01  # streams in flight through the proxy when it dies
    with Microsocks() as a, Microsocks() as b:
        gw, close = await _start(aiohttp_server, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], fake)
        try:
            key, key_id = await gw.add_key("load", balance=10_000 * COST)
            body = {"model": "viapool/metered", "messages": MESSAGES, "max_tokens": 10, "stream": True}
            async with Load(gw, key, body, workers=6) as load:
                await load.until(lambda o: o["200"] >= 10)
                await asyncio.to_thread(a.stop)
                before = load.outcomes["200"]
                await load.until(lambda o: o["200"] >= before + 20)
            # cut mid-stream: an error event; cut before the answer: a clear 502; never a hang or a 500
            allowed = ("200", "200+error:upstream_stream_error", "502:upstream_disconnected")
            assert set(load.outcomes) <= set(allowed), load.outcomes
            _, usage = await ledger_is_exact(gw, key_id)
            # what clean streams billed to their clients plus what broken ones charged for their delivered part
            assert usage == sum(load.costs) + await _charged_for_broken_streams(gw, key_id)
            dead = next(p for p in gw.app[RUNTIME].egress.snapshot()["p"]["proxies"] if p["name"] == "a")
            assert dead["state"] == "ejected" and dead["ejections"] >= 1, dead
        finally:
            await close()


async def _charged_for_broken_streams(gw: Gateway, key_id: str) -> int:
    """What the records of streams that broke mid-way charged (estimated from what they delivered)."""
    total = 0
    async for row in gw.app[RUNTIME].store.iter_usage():
        if row.get("key_id") == key_id and row.get("status") not in (None, "200"):
            total += int(row["charged"])
    return total


async def test_black_hole_proxy_is_a_prompt_503_and_holds_nothing(aiohttp_server: Any) -> None:
    fake = FakeOpenAI()
    upstream = await aiohttp_server(make_app(fake))
    async with FaultProxy(upstream.port) as hole:
        hole.fault = Fault("black_hole")
        cfg = _pool_config(str(upstream.make_url("/v1")), [{"name": "hole", "url": f"socks5://127.0.0.1:{hole.port}"}])
        gw = await start_gateway(aiohttp_server, cfg, fake)
        try:
            key, key_id = await gw.add_key("load", balance=100 * COST)
            body = {"model": "viapool/metered", "messages": MESSAGES, "max_tokens": 10}
            async with Load(gw, key, body, workers=4) as load:
                await load.until(lambda o: sum(o.values()) >= 8, timeout=30)
            assert set(load.outcomes) == {"503:egress_unavailable"}, load.outcomes
            assert fake.requests == []
            balance, usage = await ledger_is_exact(gw, key_id)
            assert usage == 0 and balance == 100 * COST
            await hole.until(lambda: hole.open == 0)  # every handshake the gateway gave up on was closed
        finally:
            await gw.close()


async def test_an_admit_whose_reply_is_lost_gives_its_hold_back(make_gateway: Any, own_redis: RedisServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis ran the admit (the hold is placed) but its reply never came back: the client gets a 503 and
    the hold is returned as soon as Redis answers again — not when its TTL ends, minutes later."""
    monkeypatch.setattr("gateway.store.redis.SOCKET_TIMEOUT_S", 0.5)
    async with FaultProxy(own_redis.port) as proxy:
        gw = await make_gateway(store_url=f"redis://127.0.0.1:{proxy.port}/0", prefix=f"rl{uuid.uuid4().hex}:",
                                billing={"key_cache_s": 30})
        async with aiohttp.ClientSession() as http:
            body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
            url = gw.url + "/v1/chat/completions"
            async with http.post(url, json=body, headers=gw.auth()) as resp:
                assert resp.status == 200  # key cached, scripts loaded, the store's connections open
            admin = aioredis.from_url(own_redis.url)
            await admin.client_kill_filter(_type="normal", skipme=True)  # the next admit opens a new connection
            await proxy.until(lambda: proxy.open == 0)
            proxy.fault = Fault("stall", times=1)  # ... whose replies never come back
            async with http.post(url, json=body, headers=gw.auth()) as resp:
                answer = await resp.json()
                assert resp.status == 503 and answer["error"]["code"] == "store_unavailable", answer
            assert proxy.faults_fired == 1
            store = gw.app[RUNTIME].store
            prefix = gw.app[RUNTIME].snapshot.config.store.prefix
            holds_key = f"{prefix}holds:{{{gw.key_id}}}"
            for _ in range(100):
                record = await store.get_key(gw.key_id)
                assert record is not None
                if await admin.hlen(holds_key) == 0 and record.balance + record.usage == record.credits:
                    break
                await asyncio.sleep(0.05)
            assert await admin.hlen(holds_key) == 0
            assert record.balance + record.usage == record.credits
            await admin.aclose()
