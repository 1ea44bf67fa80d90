"""Per-key caps: concurrent streams (counted in the store, across processes), output tokens per request,
request body size — set with `keys create` or POST /admin/keys, enforced before anything is held."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from fakes.clock import FakeClock
from harness import Gateway, gateway_config_text, run_cli

from gateway import keys
from gateway.state import RUNTIME
from gateway.store import Store
from gateway.store.base import Admission

MESSAGES = [{"role": "user", "content": "hi"}]


# --- the store contract (both backends) -------------------------------------------------------------


async def _funded(store: Store, name: str) -> str:
    _, record = keys.new_record(name, 10_000_000_000)
    await store.create_key(record)
    return record.id


def _stream(key_id: str, generation_id: str, cap: int | None, ttl_s: int = 60) -> Admission:
    return Admission(key_id, "m/x", generation_id, hold=1000, hold_ttl_s=ttl_s, streams=cap)


async def _settle(store: Store, key_id: str, generation_id: str) -> None:
    await store.settle(key_id, generation_id, 0, 0, {"id": generation_id, "model": "m/x"}, 60)


async def test_stream_slots_count_to_the_cap_and_free_at_settlement(store: Store) -> None:
    a, b = await _funded(store, "a"), await _funded(store, "b")
    assert (await store.admit(_stream(a, "s1", 2))).outcome == "ok"
    assert (await store.admit(_stream(a, "s2", 2))).outcome == "ok"
    full = await store.admit(_stream(a, "s3", 2))
    assert full.outcome == "streams"
    assert (await store.admit(_stream(b, "s1", 2))).outcome == "ok"  # another key's slots are its own
    assert (await store.admit(_stream(a, "plain", None))).outcome == "ok"  # not a stream: not counted
    await _settle(store, a, "s1")
    assert (await store.admit(_stream(a, "s3", 2))).outcome == "ok"
    await _settle(store, a, "never-admitted")  # settling what holds no slot frees none
    assert (await store.admit(_stream(a, "s4", 2))).outcome == "streams"
    after = await store.get_key(a)
    assert after is not None  # s2, s3 and plain hold 1000 each; s1 settled at 0; the refused hold nothing
    assert after.balance == 10_000_000_000 - 1000 * 3


async def test_a_refused_stream_counts_nothing(store: Store) -> None:
    a = await _funded(store, "a")
    assert (await store.admit(_stream(a, "s1", 1))).outcome == "ok"
    before = await store.get_key(a)
    refused = await store.admit(Admission(a, "m/x", "s2", hold=1000, hold_ttl_s=60, rpm=1_000, streams=1))
    assert refused.outcome == "streams"
    assert await store.get_key(a) == before  # no hold placed
    allowed = await store.admit(Admission(a, "m/x", "s3", hold=0, hold_ttl_s=60, rpm=1_000))
    assert allowed.requests is not None and allowed.requests.remaining == 999  # the refusal was not counted


async def _past_a_second(clock: FakeClock | None) -> None:
    """Past a 1 s TTL: the memory store's clock moved, or Redis's own (TIME inside the script) waited for."""
    if clock is not None:
        clock.now += 1.5
    else:
        await asyncio.sleep(1.1)


async def test_a_slot_left_open_frees_itself_at_its_ttl(clocked_store: tuple[Store, FakeClock | None]) -> None:
    store, clock = clocked_store
    a = await _funded(store, "a")
    assert (await store.admit(_stream(a, "dead-process", 1, ttl_s=1))).outcome == "ok"
    assert (await store.admit(_stream(a, "s2", 1, ttl_s=1))).outcome == "streams"
    await _past_a_second(clock)
    assert (await store.admit(_stream(a, "s2", 1, ttl_s=1))).outcome == "ok"


async def test_a_shorter_streams_ttl_does_not_free_the_longer_open_slots(
        clocked_store: tuple[Store, FakeClock | None]) -> None:
    """A stream admitted with a short hold_ttl_s (lowered by a reload) after a long one: when the short one
    has expired, the long one is still open and still takes its slot. Redis used to PEXPIRE the key's whole
    set of open streams by the newest admission's TTL, so it vanished, long-lived slots and all."""
    store, clock = clocked_store
    a = await _funded(store, "a")
    assert (await store.admit(_stream(a, "long", 2, ttl_s=600))).outcome == "ok"
    assert (await store.admit(_stream(a, "short", 2, ttl_s=1))).outcome == "ok"
    await _past_a_second(clock)
    assert (await store.admit(_stream(a, "next", 2, ttl_s=600))).outcome == "ok"  # the short slot freed
    assert (await store.admit(_stream(a, "over", 2, ttl_s=600))).outcome == "streams"  # long + next open


# --- end to end -------------------------------------------------------------------------------------


async def test_a_capped_keys_stream_costs_one_round_trip_in_and_one_out(make_gateway: Any, redis_url: str) -> None:
    """The slot is taken by the admission script and freed by the settlement script: no command of its own."""
    import uuid

    import redis.asyncio as aioredis

    gw = await make_gateway(store_url=redis_url, prefix=f"t{uuid.uuid4().hex}:", billing={"key_cache_s": 60})
    capped, _ = await gw.add_key("capped", max_streams=1)
    client = gw.openai(api_key=capped)
    admin = aioredis.from_url(redis_url)

    async def one_stream() -> None:
        stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                      stream=True)
        async for _ in stream:
            pass
        await asyncio.sleep(0.05)  # its settlement leaves after the answer

    seen: list[str] = []

    async def watch(monitor: Any) -> None:
        async for item in monitor.listen():
            if item.get("client_type") != "lua":  # commands run inside the scripts are theirs, not trips
                seen.append(item["command"].split()[0].lower())

    try:
        await one_stream()  # key cached, scripts loaded
        async with admin.monitor() as monitor:
            watcher = asyncio.create_task(watch(monitor))
            await asyncio.sleep(0.1)
            for _ in range(3):
                await one_stream()  # with max_streams=1, each must have freed its slot for the next
            await asyncio.sleep(0.1)
            watcher.cancel()
    finally:
        await admin.aclose()
    assert sorted(seen) == ["evalsha"] * 6, seen


async def test_concurrent_streams_beyond_the_cap_are_429(gateway: Gateway) -> None:
    capped, _ = await gateway.add_key("capped", max_streams=1)
    gateway.fake.delay_between_chunks_s = 0.1
    client = gateway.openai(api_key=capped)
    first = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                 stream=True)
    chunks = first.__aiter__()
    await chunks.__anext__()  # the first stream is open and holds the key's only slot
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                             stream=True)
    assert info.value.code == "too_many_streams"
    assert info.value.response.headers["Retry-After"] == "1"  # the README's promise for every 429
    gateway.fake.delay_between_chunks_s = 0  # (read at every chunk: the first stream now runs out quickly)
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    other = gateway.openai()  # another key is not affected
    async for _ in await other.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                       stream=True):
        pass
    async for _ in chunks:
        pass
    async for _ in await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                        stream=True):
        pass  # the slot came back when the first stream ended


async def test_a_client_gone_mid_stream_gives_its_slot_back(gateway: Gateway) -> None:
    capped, _ = await gateway.add_key("capped", max_streams=1)
    gateway.fake.delay_between_chunks_s = 0.2
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", headers=gateway.auth(capped),
                             json={"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}) as r:
            await r.content.readline()
        # the response was closed mid-stream: the gateway notices at its next write and releases the slot
        await asyncio.wait_for(gateway.fake.client_disconnected.wait(), 10)
    gateway.fake.delay_between_chunks_s = 0
    for _ in range(50):
        async with aiohttp.ClientSession() as http, http.post(
                gateway.url + "/v1/chat/completions", headers=gateway.auth(capped),
                json={"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}) as r:
            await r.read()
            if r.status == 200:
                return
        await asyncio.sleep(0.05)  # the relay's finally may still be running: poll, bounded
    pytest.fail("the stream slot was never released")


async def test_max_tokens_cap_refuses_more_and_fills_in_when_absent(gateway: Gateway) -> None:
    capped, _ = await gateway.add_key("capped", max_tokens=50)
    client = gateway.openai(api_key=capped)
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                             max_tokens=51)
    assert info.value.param == "max_tokens" and "at most 50" in info.value.message
    assert gateway.fake.requests == []
    answer = await client.chat.completions.create(model="fake/metered", messages=MESSAGES)  # type: ignore[arg-type]
    assert gateway.fake.last.body["max_tokens"] == 50
    assert round(answer.model_extra["billing"]["reserved"] * 1e9) == 50 * 10_000  # type: ignore[index]
    await client.chat.completions.create(model="fake/gpt-5", messages=MESSAGES)  # type: ignore[arg-type]
    assert gateway.fake.last.body["max_completion_tokens"] == 50  # renamed for the model, as a client's would be
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                         max_tokens=20)
    assert gateway.fake.last.body["max_tokens"] == 20


async def test_body_size_cap_is_413_for_that_key_only(gateway: Gateway) -> None:
    capped, _ = await gateway.add_key("capped", max_body_bytes=1000)
    body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "x" * 2000}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth(capped)) as r:
            payload = await r.json()
            assert r.status == 413 and payload["error"]["code"] == "request_too_large"
            assert "1000" in payload["error"]["message"]
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth()) as r:
            assert r.status == 200
    record = await gateway.app[RUNTIME].store.get_key(gateway.key_id)
    assert record is not None


# --- how caps are set -------------------------------------------------------------------------------


def test_cli_sets_caps_and_refuses_zero(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1", redis_url, prefix="capscli:"))
    made = run_cli("keys", "create", "--config", str(path), "--name", "c", "--balance", "1", "--max-streams", "2",
                   "--max-tokens", "300", "--max-body-bytes", "4096", "--json")
    assert made.returncode == 0, made.stderr
    shown = json.loads(made.stdout)
    assert (shown["max_streams"], shown["max_tokens"], shown["max_body_bytes"]) == (2, 300, 4096)
    listed = json.loads(run_cli("keys", "list", "--config", str(path), "--json").stdout)
    assert [k["max_streams"] for k in listed if k["id"] == shown["id"]] == [2]
    refused = run_cli("keys", "create", "--config", str(path), "--name", "c", "--balance", "1", "--max-streams", "0")
    assert refused.returncode == 2 and ">= 1" in refused.stderr


async def test_admin_api_sets_caps(make_gateway: Any) -> None:
    admin = "admin-token-for-caps-0123456789"
    gw = await make_gateway(admin_token=admin)
    headers = {"Authorization": f"Bearer {admin}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/admin/keys", headers=headers,
                             json={"name": "c", "balance": 1, "max_streams": 3, "max_tokens": 10}) as r:
            made = await r.json()
            assert r.status == 201
            assert (made["max_streams"], made["max_tokens"], made["max_body_bytes"]) == (3, 10, None)
        async with http.post(gw.url + "/admin/keys", headers=headers,
                             json={"name": "c", "balance": 1, "max_body_bytes": 0}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "max_body_bytes"
    record = await gw.app[RUNTIME].store.get_key(made["id"])
    assert record is not None and record.max_streams == 3 and record.max_tokens == 10
