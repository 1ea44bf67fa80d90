"""Redis failure modes an operator meets, each against a real redis-server of the test's own, through the
running gateway with the official openai SDK: a failover that left the gateway on a replica (-READONLY),
memory full under `noeviction` (-OOM), another client's long script (-BUSY), a rotated password
(-WRONGPASS on reconnect) and connections killed with replies in flight.

For each: the client gets 503 `store_unavailable` naming no secret, /readyz says 503 while it lasts and
whether Redis refuses writes (in its own words) or cannot be reached, the log says what happened without
the password, and once Redis is well again the gateway serves without a restart, with nothing charged
twice or lost (balance + usage == credits, no hold left, the audit ledger summing to the usage). A Redis
restart, NOSCRIPT and a stalled Redis are covered in test_faults_load.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
import secret_audit_plugin
from harness import Gateway
from jsonschema import Draft202012Validator
from redis.exceptions import BusyLoadingError
from redis_server import RedisServer
from test_faults_load import COST, MESSAGES, Load, ledger_is_exact

from gateway import openapi

PASSWORD = "rotate-me-" + uuid.uuid4().hex  # the Redis password: found in no answer and no log line
BODY = {"model": "fake/metered", "messages": MESSAGES, "max_tokens": 10}


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A password-protected redis-server of this test's own: its faults disturb no other test (DEBUG RELOAD
    makes it load its dataset as after a restart)."""
    secret_audit_plugin.register(PASSWORD)
    with RedisServer(password=PASSWORD, args=("--enable-debug-command", "yes")) as server:
        yield server


@pytest.fixture
async def admin(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(own_redis.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def gw(make_gateway: Any, own_redis: RedisServer) -> Gateway:
    # no key cache: every request reads its key from Redis too, as a gateway past its cache's life does
    gateway: Gateway = await make_gateway(store_url=own_redis.url, prefix=f"sf{uuid.uuid4().hex}:",
                                          billing={"key_cache_s": 0})
    return gateway


async def served(gw: Gateway) -> int:
    """One chat through the SDK, served: its cost as billed in the answer."""
    answer = await gw.openai().chat.completions.create(**BODY)  # type: ignore[call-overload]
    return round(answer.model_extra["billing"]["request_cost"] * 1e9)


async def refused(gw: Gateway) -> None:
    """One chat through the SDK: 503 store_unavailable, neither the password nor the Redis URL in it."""
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.openai().chat.completions.create(**BODY)  # type: ignore[call-overload]
    error = caught.value.response.json()["error"]
    assert caught.value.status_code == 503 and error["code"] == "store_unavailable", error
    assert PASSWORD not in caught.value.response.text and "redis://" not in caught.value.response.text


async def not_ready(gw: Gateway, store: str, redis_said: str | None) -> None:
    """/readyz: 503, the store check saying what is wrong, Redis's own words (which must start with
    `redis_said`) beside it when it answered, and neither the password nor the store's URL anywhere."""
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/readyz") as resp:
        text = await resp.text()
        body = await resp.json()
    assert resp.status == 503 and body["status"] == "not_ready", body
    assert body["checks"] == {"config": "ok", "store": store}, body
    if redis_said is None:
        assert "store_error" not in body, body
    else:
        assert body["store_error"].startswith(redis_said), body
    assert PASSWORD not in text and "redis://" not in text and "127.0.0.1" not in text, text
    documented = openapi.document([])["paths"]["/readyz"]["get"]["responses"]["503"]
    Draft202012Validator(documented["content"]["application/json"]["schema"]).validate(body)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


async def recovers(gw: Gateway) -> None:
    """Serving again without a restart, and ready."""
    async def serves() -> bool:
        try:
            await served(gw)
        except openai.APIStatusError:
            return False
        return True
    await eventually(serves)
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/readyz") as resp:
        assert resp.status == 200 and await resp.json() == {"status": "ready", "checks": {
            "config": "ok", "store": "ok"}, "config_age_s": (await resp.json())["config_age_s"]}


def no_secret_logged(lines: list[dict[str, Any]]) -> None:
    text = repr(lines)
    assert PASSWORD not in text


def logged(lines: list[dict[str, Any]], word: str) -> bool:
    """The line of a refused request says why the store failed (Redis's own error word)."""
    return any(word in line.get("store_error", "") for line in lines
               if line.get("event") == "request" and line.get("status") == 503)


# --- probes --------------------------------------------------------------------------------------------


async def test_readonly_replica_after_failover(gw: Gateway, own_redis: RedisServer, admin: aioredis.Redis,
                                               log_lines: Any) -> None:
    spent = await served(gw)
    with RedisServer(password=PASSWORD) as other:
        peer = aioredis.from_url(other.url, decode_responses=True)
        try:
            # the failover: `other` takes a copy and becomes the master, ours its replica
            await peer.config_set("masterauth", PASSWORD)
            await peer.replicaof("127.0.0.1", own_redis.port)
            await eventually(lambda: _linked(peer))
            await peer.execute_command("REPLICAOF", "NO", "ONE")
            await admin.config_set("masterauth", PASSWORD)
            await admin.replicaof("127.0.0.1", other.port)
            await eventually(lambda: _linked(admin))
            await refused(gw)
            await not_ready(gw, "refusing writes", "READONLY You can't write against a read only replica")
            await admin.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            await peer.aclose()
    await recovers(gw)
    spent += COST
    _, usage = await ledger_is_exact(gw, gw.key_id)
    assert usage == spent
    no_secret_logged(log_lines())
    assert logged(log_lines(), "READONLY")


async def _linked(client: aioredis.Redis) -> bool:
    return (await client.info("replication")).get("master_link_status") == "up"


async def test_oom_refuses_admissions_and_settles_what_was_served(gw: Gateway, admin: aioredis.Redis,
                                                                  log_lines: Any) -> None:
    await served(gw)
    gw.fake.delay_before_headers_s = 0.5
    in_flight = asyncio.ensure_future(served(gw))  # admitted before memory runs out, settled after
    await asyncio.sleep(0.2)
    await admin.config_set("maxmemory-policy", "noeviction")
    await admin.config_set("maxmemory", "1")
    try:
        assert await in_flight == COST  # the answer was served and billed
        gw.fake.delay_before_headers_s = 0
        await refused(gw)
        await not_ready(gw, "refusing writes", "OOM command not allowed when used memory > 'maxmemory'")
    finally:
        await admin.config_set("maxmemory", "0")
    await recovers(gw)
    _, usage = await ledger_is_exact(gw, gw.key_id)
    assert usage == 3 * COST  # the one served during the outage included, once
    no_secret_logged(log_lines())
    assert logged(log_lines(), "OOM")


async def test_busy_script_then_script_kill(gw: Gateway, own_redis: RedisServer, admin: aioredis.Redis,
                                            log_lines: Any) -> None:
    await served(gw)
    await admin.config_set("busy-reply-threshold", "50")
    hog = aioredis.from_url(own_redis.url)
    looping = asyncio.ensure_future(hog.eval("while true do end", 0))
    try:
        await asyncio.sleep(0.2)
        await refused(gw)
        await not_ready(gw, "refusing writes", "BUSY Redis is busy running a script")
    finally:
        await admin.script_kill()
        with contextlib.suppress(Exception):
            await looping
        await hog.aclose()
    await recovers(gw)
    _, usage = await ledger_is_exact(gw, gw.key_id)
    assert usage == 2 * COST
    no_secret_logged(log_lines())
    assert logged(log_lines(), "BUSY")


async def test_password_rotated_then_restored(gw: Gateway, admin: aioredis.Redis, log_lines: Any) -> None:
    await served(gw)
    rotated = "rotated-" + uuid.uuid4().hex
    secret_audit_plugin.register(rotated)
    await admin.config_set("requirepass", rotated)
    try:
        await admin.client_kill_filter(_type="normal", skipme=True)  # the gateway reconnects with the old one
        await refused(gw)
        # Redis answers, refusing the login: the password in the gateway's REDIS_URL is the one to fix
        await not_ready(gw, "refusing login", "WRONGPASS invalid username-password pair")
    finally:
        await admin.config_set("requirepass", PASSWORD)
    await recovers(gw)
    _, usage = await ledger_is_exact(gw, gw.key_id)
    assert usage == 2 * COST
    lines = log_lines()
    no_secret_logged(lines)
    assert rotated not in repr(lines)
    assert logged(lines, "invalid username-password pair")  # WRONGPASS, in redis-py's words or Redis's


async def test_loading_its_dataset_after_a_restart(gw: Gateway, own_redis: RedisServer, admin: aioredis.Redis,
                                                   log_lines: Any) -> None:
    """A Redis restarted with a large dataset answers -LOADING to every command until it has read it: a
    wait, not a fault to fix. /readyz says so apart from "unreachable" (a dead server)."""
    await served(gw)
    await admin.execute_command("DEBUG", "POPULATE", "3000", "filler")
    await admin.config_set("key-load-delay", "1000")  # µs per key: some 3 s of loading
    await admin.config_set("loading-process-events-interval-bytes", "1024")  # answer clients while loading
    probe = aioredis.from_url(own_redis.url)
    reload = asyncio.ensure_future(admin.execute_command("DEBUG", "RELOAD"))  # as a restart loads the RDB
    try:
        await eventually(lambda: _loading(probe))
        await refused(gw)
        await not_ready(gw, "loading", "LOADING Redis is loading the dataset in memory")
        assert not reload.done(), "the dataset loaded before the checks ran: raise key-load-delay"
    finally:
        await reload
        await admin.config_set("key-load-delay", "0")
        await probe.aclose()
    await recovers(gw)
    _, usage = await ledger_is_exact(gw, gw.key_id)
    assert usage == 2 * COST
    no_secret_logged(log_lines())
    assert logged(log_lines(), "loading")


async def _loading(client: aioredis.Redis) -> bool:
    try:
        await client.get("x")
    except BusyLoadingError:
        return True
    return False


async def test_connections_killed_mid_load(gw: Gateway, admin: aioredis.Redis) -> None:
    key, key_id = await gw.add_key("load", balance=1000 * COST)
    async with Load(gw, key, BODY, workers=6) as load:
        for _ in range(5):
            before = load.outcomes["200"]
            await load.until(lambda o, b=before: o["200"] >= b + 5)  # type: ignore[misc]
            await admin.client_kill_filter(_type="normal", skipme=True)
    assert set(load.outcomes) <= {"200", "503:store_unavailable"}, load.outcomes
    _, usage = await ledger_is_exact(gw, key_id)
    assert usage == sum(load.costs) == load.outcomes["200"] * COST
    assert len(gw.fake.requests) == load.outcomes["200"]  # every upstream call paid, exactly once
