"""Redis-specific guarantees of the money path: one limit across processes, outages, round trips, export."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from harness import GatewayProcess, clear_of_minute_boundary, gateway_config, gateway_config_text, run_cli
from redis_server import RedisServer

from gateway import keys
from gateway.state import RUNTIME
from gateway.store import RedisStore
from gateway.store.base import Admission, AdmitResult

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, so killing it disturbs nobody."""
    with RedisServer() as server:
        yield server


async def _create_key(url: str, prefix: str, balance: int = 10_000_000_000, **kwargs: Any) -> tuple[str, str]:
    store = RedisStore(url, prefix=prefix)
    try:
        plain, record = keys.new_record("t", balance, **kwargs)
        await store.create_key(record)
        return plain, record.id
    finally:
        await store.close()


async def test_two_gateway_processes_enforce_one_limit(tmp_path: Path, redis_url: str,
                                                       fake_openai: tuple[Any, str]) -> None:
    prefix = f"two{uuid.uuid4().hex}:"
    config = tmp_path / "gw.yaml"
    config.write_text(gateway_config_text(fake_openai[1], redis_url, prefix))
    key, _ = await _create_key(redis_url, prefix)
    with GatewayProcess(config) as a, GatewayProcess(config) as b:
        await clear_of_minute_boundary()
        statuses = []
        async with aiohttp.ClientSession() as http:
            for gw in (a, b, a, b):
                async with http.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                     json={"model": "fake/limited", "messages": MESSAGES}) as r:
                    statuses.append((r.status, r.headers.get("Retry-After")))
    assert [s for s, _ in statuses] == [200, 200, 429, 429]
    assert all(1 <= int(retry) <= 60 for _, retry in statuses[2:] if retry)
    assert statuses[2][1] is not None
    assert len(fake_openai[0].requests) == 2


async def test_redis_outage_gives_503s_not_free_requests(make_gateway: Any, own_redis: RedisServer) -> None:
    gw = await make_gateway(store_url=own_redis.url, prefix="out:")
    fake = gw.fake
    client = gw.openai()
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    served_before = len(fake.requests)

    probe = aioredis.from_url(own_redis.url)
    await probe.save()  # the keys survive the restart below, as they would with the operator's persistence
    await probe.aclose()
    own_redis.stop()
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        assert info.value.status_code == 503
        assert info.value.code == "store_unavailable"
    assert len(fake.requests) == served_before  # nothing went upstream unmetered
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/readyz") as r:
        assert r.status == 503 and (await r.json())["checks"]["store"] == "unreachable"

    own_redis.start()
    done = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert (done.model_extra or {})["billing"]["request_cost"] > 0
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/readyz") as r:
        assert r.status == 200


class Monitor:
    """Redis MONITOR on a raw connection: the commands clients send (script internals are tagged `lua`)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lines: list[str] = []

    async def __aenter__(self) -> Monitor:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(b"MONITOR\r\n")
        assert (await self.reader.readline()).startswith(b"+OK")
        self.task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        while line := await self.reader.readline():
            self.lines.append(line.decode(errors="replace"))

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.1)  # let the last lines arrive
        self.task.cancel()
        self.writer.close()

    def client_commands(self) -> list[str]:
        return [line.split('"')[1].lower() for line in self.lines if '"' in line and " lua]" not in line]

    def script_commands(self) -> list[str]:
        return [line.split('"')[1].lower() for line in self.lines if '"' in line and " lua]" in line]


async def test_hot_path_is_one_round_trip_in_and_one_out(make_gateway: Any, own_redis: RedisServer) -> None:
    gw = await make_gateway(store_url=own_redis.url, prefix="rt:")
    client = gw.openai()
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]  # warms the key cache
    async with Monitor(own_redis.port) as monitor:
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                      stream=True)
        async for _ in stream:
            pass
    assert monitor.client_commands() == ["evalsha"] * 4  # per request: admit on the way in, settle on the way out


async def test_a_redis_unix_socket_carries_the_whole_money_path(make_gateway: Any, own_redis: RedisServer) -> None:
    """deploy/README.md offers a local Redis over its unix socket (cheaper round trips than TCP loopback):
    keys, admission, settlement and the generation record all go through it."""
    gw = await make_gateway(store_url=f"unix://{own_redis.socket_path}", prefix="ux:")
    client = gw.openai()
    done = await client.chat.completions.with_raw_response.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    answer = done.parse()
    async with aiohttp.ClientSession() as http, http.get(
            gw.url + "/v1/generation", params={"id": answer.id}, headers={"Authorization": f"Bearer {gw.key}"}) as r:
        record = await r.json()
    assert r.status == 200 and record["data"]["id"] == answer.id
    assert record["data"]["total_cost"] > 0
    direct = aioredis.Redis(unix_socket_path=str(own_redis.socket_path), decode_responses=True)
    try:
        assert [k async for k in direct.scan_iter("ux:*")]  # the store wrote through the socket
    finally:
        await direct.aclose()


async def test_open_holds_are_read_only_once_one_may_have_expired(own_redis: RedisServer) -> None:
    """With many requests of one key in flight, admit and settle used to read (and parse) every open hold
    of the key, each time: the key keeps the earliest time one may expire, and the holds hash is read
    only once that time has come."""
    store = RedisStore(own_redis.url, prefix="sweep:")
    _, record = keys.new_record("t", 10_000_000_000)

    async def admit(gen: str, ttl: int) -> AdmitResult:
        return await store.admit(Admission(record.id, "fake/gpt-4o", gen, 1_000_000, ttl))

    try:
        await store.create_key(record)
        for i in range(20):
            assert (await admit(f"gen-open-{i}", 60)).outcome == "ok"
        async with Monitor(own_redis.port) as monitor:
            for i in range(5):
                assert (await admit(f"gen-{i}", 60)).outcome == "ok"
                await store.settle(record.id, f"gen-{i}", 500_000, 10, {"model": "fake/gpt-4o"}, 60)
            assert (await admit("gen-short", 1)).outcome == "ok"
        assert monitor.client_commands() == ["evalsha"] * 11
        assert "hgetall" not in monitor.script_commands()

        await asyncio.sleep(1.1)
        async with Monitor(own_redis.port) as monitor:
            after = await admit("gen-late", 60)  # sweeps: the short hold is back, the 20 others stay held
        assert monitor.script_commands().count("hgetall") == 1
        expected = 10_000_000_000 - 5 * 500_000 - 20 * 1_000_000 - 1_000_000
        assert (after.outcome, after.balance) == ("ok", expected)
    finally:
        await store.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_cancellation_at_any_point_leaves_no_hold(aiohttp_server: Any, redis_url: str,
                                                         fake_openai: tuple[Any, str], stream: bool) -> None:
    """Cancel the request task after 0, 1, 2, ... loop steps and at growing delays; every hold settles."""
    fake, url = fake_openai
    fake.delay_between_chunks_s = 0.005
    plan: dict[str, Any] = {}

    from aiohttp import web

    @web.middleware
    async def cancel_probe(request: web.Request, handler: Any) -> web.StreamResponse:
        task = asyncio.ensure_future(handler(request))
        for _ in range(plan["steps"]):
            if task.done():
                break
            await asyncio.sleep(0)
        if plan["delay"]:
            await asyncio.wait([task], timeout=plan["delay"])
        task.cancel()
        return await task  # a cancelled handler ends the connection, as aiohttp's handler_cancellation does

    from gateway.app import create_app

    app = create_app(gateway_config(url, redis_url, prefix=f"cx{uuid.uuid4().hex}:"),
                     extra_middlewares=[cancel_probe])
    server = await aiohttp_server(app)
    store = app[RUNTIME].store
    key, key_id = await _create_key_in(store)
    cases = [{"steps": s, "delay": 0.0} for s in range(0, 40, 2)]
    cases += [{"steps": 0, "delay": d} for d in (0.001, 0.003, 0.006, 0.01, 0.02, 0.04, 0.08, 0.16)]
    async with aiohttp.ClientSession() as http:
        for case in cases:
            plan.update(case)
            try:
                async with asyncio.timeout(10), http.post(
                        str(server.make_url("/v1/chat/completions")), headers={"Authorization": f"Bearer {key}"},
                        json={"model": "fake/gpt-4o", "messages": MESSAGES, "stream": stream}) as r:
                    await r.read()
            except aiohttp.ClientError:
                pass  # the connection ended with the cancelled handler
            pending = app[RUNTIME].settlements.pending
            while pending:
                await asyncio.wait(list(pending))
            record = await store.get_key(key_id)
            assert record is not None
            assert record.balance + record.usage == record.credits, case  # no orphan hold


async def _create_key_in(store: Any) -> tuple[str, str]:
    plain, record = keys.new_record("cx", 10_000_000_000)
    await store.create_key(record)
    return plain, record.id


async def test_usage_export(tmp_path: Path, redis_url: str, make_gateway: Any,
                            fake_openai: tuple[Any, str]) -> None:
    url = fake_openai[1]
    prefix = f"ex{uuid.uuid4().hex}:"
    gw = await make_gateway(store_url=redis_url, prefix=prefix)
    client = gw.openai()
    ids = [(await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)).id  # type: ignore[arg-type]
           for _ in range(3)]
    config = tmp_path / "gw.yaml"
    config.write_text(gateway_config_text(url, "${REDIS_URL}", prefix))
    out = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config), env={"REDIS_URL": redis_url})
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["generation_id"] for r in rows] == ids
    assert all(r["key_id"] == gw.key_id and r["model"] == "fake/gpt-4o" and r["charged_nano"] > 0 for r in rows)
    csv_out = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config), "--format", "csv",
                                      "--since", "2000-01-01", env={"REDIS_URL": redis_url})
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0].startswith("ts,generation_id,key_id,model") and len(lines) == 4
    future = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config), "--since",
                                     "2999-01-01T00:00:00Z", env={"REDIS_URL": redis_url})
    assert future.stdout == ""
    until = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config), "--until",
                                    rows[2]["ts"], env={"REDIS_URL": redis_url})  # exclusive
    assert until.returncode == 0, until.stderr
    before = [json.loads(line)["generation_id"] for line in until.stdout.splitlines()]
    assert before == [r["generation_id"] for r in rows if r["ts"] < rows[2]["ts"]] and ids[0] in before
