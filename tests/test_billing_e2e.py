"""The money path through the running gateway, on both stores: holds, settlement, billing in responses."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import openai
import pytest
from harness import Gateway, clear_of_minute_boundary, validate

from gateway.state import RUNTIME

MESSAGES = [{"role": "user", "content": "What's the weather like in San Francisco?"}]
# the fake upstream's usage: 19 prompt + 10 completion tokens non-streamed (docs-chat-default.response.json)
GPT5_COST = 19 * 1_250 + 10 * 10_000  # nano-dollars at 1.25 / 10 USD per million tokens


async def key_state(gateway: Gateway, key_id: str | None = None) -> tuple[int, int, int]:
    record = await gateway.app[RUNTIME].store.get_key(key_id or gateway.key_id)
    assert record is not None
    return record.balance, record.usage, record.credits


async def settled(gateway: Gateway) -> None:
    """Wait until every settlement task of the gateway has finished."""
    pending = gateway.app[RUNTIME].settlements.pending
    while pending:
        await asyncio.wait(list(pending))


def nano(usd: float) -> int:
    return round(usd * 1_000_000_000)


async def test_non_streamed_response_carries_its_bill(gateway: Gateway) -> None:
    before, _, _ = await key_state(gateway)
    client = gateway.openai()
    raw = await client.chat.completions.with_raw_response.create(model="fake/gpt-5", messages=MESSAGES,  # type: ignore[arg-type]
                                                                  max_tokens=100)
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    billing = body["billing"]
    assert nano(billing["request_cost"]) == GPT5_COST
    assert nano(body["usage"]["cost"]) == GPT5_COST
    assert billing["using_own_key"] is False and billing["estimated"] is False
    after, usage, credits = await key_state(gateway)
    assert nano(billing["balance_remaining"]) == after == before - GPT5_COST
    assert after + usage == credits  # no hold left behind
    assert body["id"].startswith("gen-")
    assert raw.headers["x-ratelimit-limit-requests"] == "60"
    assert raw.headers["x-ratelimit-remaining-requests"] == "59"


async def test_generation_record_and_credits(gateway: Gateway) -> None:
    client = gateway.openai()
    completion = await client.chat.completions.create(model="fake/gpt-5", messages=MESSAGES)  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/generation", params={"id": completion.id},
                            headers=gateway.auth()) as r:
            assert r.status == 200
            record = (await r.json())["data"]
        other, _ = await gateway.add_key("other")
        async with http.get(gateway.url + "/v1/generation", params={"id": completion.id},
                            headers=gateway.auth(other)) as r:
            assert r.status == 404  # only the key that made the request may read it
        async with http.get(gateway.url + "/v1/credits", headers=gateway.auth()) as r:
            credits = (await r.json())["data"]
    assert record["id"] == completion.id and record["model"] == "fake/gpt-5"
    assert record["provider_name"] == "fake"
    assert (record["tokens_prompt"], record["tokens_completion"]) == (19, 10)
    assert nano(record["total_cost"]) == GPT5_COST
    assert record["streamed"] is False and record["cancelled"] is False and record["is_byok"] is False
    assert record["finish_reason"] == "stop" and record["egress"] == "direct"
    assert nano(credits["total_credits"]) == 10_000_000_000
    assert nano(credits["total_usage"]) == GPT5_COST


async def test_default_stream_is_safe_for_the_plain_sdk_loop(gateway: Gateway) -> None:
    client = gateway.openai()
    stream = await client.chat.completions.create(model="fake/gpt-5", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    bills = []
    async for chunk in stream:
        choice = chunk.choices[0]  # the loop every tutorial writes: must never crash
        if choice.finish_reason:
            bills.append((chunk.model_extra or {}).get("billing"))
    assert len(bills) == 1 and bills[0] is not None
    assert bills[0]["request_cost"] > 0 and bills[0]["using_own_key"] is False
    balance, usage, credits = await key_state(gateway)
    assert nano(bills[0]["request_cost"]) == usage and balance + usage == credits
    assert nano(bills[0]["balance_remaining"]) == balance


async def _raw_stream(gateway: Gateway, body: dict[str, Any], headers: dict[str, str] | None = None) -> bytes:
    async with aiohttp.ClientSession() as http, http.post(
            gateway.url + "/v1/chat/completions", json={"model": "fake/gpt-5", "messages": MESSAGES, "stream": True,
                                                        **body}, headers={**gateway.auth(), **(headers or {})}) as r:
        assert r.status == 200
        return await r.read()


async def test_usage_chunk_carries_billing_when_asked(gateway: Gateway) -> None:
    raw = await _raw_stream(gateway, {"stream_options": {"include_usage": True}})
    events = [json.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
    usage_chunk = events[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["billing"]["request_cost"] == usage_chunk["usage"]["cost"]
    finish = events[-2]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["billing"] == usage_chunk["billing"]
    for event in events:
        validate(event, "CreateChatCompletionStreamResponse")
    assert b"billing_update" not in raw


async def test_opt_in_billing_event_exactly_as_the_seed_shows(gateway: Gateway) -> None:
    raw = await _raw_stream(gateway, {}, {"X-Billing-Event": "true"})
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert blocks[-1] == b"data: [DONE]"
    event_line, data_line = blocks[-2].split(b"\n")
    assert event_line == b"event: billing_update"
    payload = json.loads(data_line.removeprefix(b"data: "))
    assert set(payload) == {"billing"}
    assert {"request_cost", "balance_remaining", "using_own_key"} <= set(payload["billing"])
    # the official SDK hands that event over as an extra chunk without choices
    client = gateway.openai(default_headers={"X-Billing-Event": "true"})
    stream = await client.chat.completions.create(model="fake/gpt-5", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    chunks = [c async for c in stream]
    assert any(not c.choices and (c.model_extra or {}).get("billing") for c in chunks)


async def test_operator_can_turn_the_billing_event_on(make_gateway: Any) -> None:
    gw = await make_gateway(billing={"stream_billing_event": True})
    raw = await _raw_stream(gw, {})
    assert b"event: billing_update\ndata: {\"billing\":" in raw


async def test_insufficient_balance_is_402_and_calls_nothing(gateway: Gateway) -> None:
    poor, poor_id = await gateway.add_key("poor", balance=1000)
    client = gateway.openai(api_key=poor)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="fake/gpt-5", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_quota"
    assert gateway.fake.requests == []
    assert await key_state(gateway, poor_id) == (1000, 0, 1000)


async def test_byok_is_not_charged_but_recorded(gateway: Gateway) -> None:
    before = await key_state(gateway)
    client = gateway.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="fake/gpt-5", messages=MESSAGES, extra_body={"provider_api_key": "sk-own-000000000000000"})  # type: ignore[arg-type]
    body = json.loads(raw.content)
    assert body["billing"]["using_own_key"] is True and body["billing"]["request_cost"] == 0
    assert await key_state(gateway) == before
    assert raw.headers["x-ratelimit-remaining-requests"] == "59"  # counted like any other request
    record = await gateway.app[RUNTIME].store.get_generation(gateway.key_id, body["id"])
    assert record is not None and record["is_byok"] == "1"


async def test_rate_limit_third_request_in_the_minute_is_429(gateway: Gateway) -> None:
    await clear_of_minute_boundary()
    client = gateway.openai()
    for _ in range(2):
        await client.chat.completions.create(model="fake/limited", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="fake/limited", messages=MESSAGES)  # type: ignore[arg-type]
    headers = info.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "2" and headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.code == "rate_limit_exceeded"
    assert len(gateway.fake.requests) == 2
    # another model of the same key has its own window
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]


async def test_client_cut_stream_is_billed_and_marked_cancelled(gateway: Gateway) -> None:
    gateway.fake.stall_after_chunks = 5
    async with aiohttp.ClientSession() as http:
        body = {"model": "fake/gpt-5", "messages": MESSAGES, "stream": True}
        r = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth())
        first = json.loads((await r.content.readuntil(b"\n\n"))[6:])
        await r.content.readuntil(b"\n\n")
        r.close()
    await asyncio.wait_for(gateway.fake.client_disconnected.wait(), timeout=5)
    await settled(gateway)
    record = await gateway.app[RUNTIME].store.get_generation(gateway.key_id, first["id"])
    assert record is not None
    assert record["cancelled"] == "1" and record["estimated"] == "1" and record["streamed"] == "1"
    assert int(record["charged"]) > 0 and int(record["tokens_completion"]) > 0
    balance, usage, credits = await key_state(gateway)
    assert usage == int(record["charged"]) and balance + usage == credits


async def test_concurrent_requests_never_overspend(gateway: Gateway) -> None:
    cost = 10 * 10_000  # fake/metered: 10 completion tokens at 10 USD/Mtok, input free; hold == cost
    key, key_id = await gateway.add_key("burst", balance=20 * cost + cost // 2)
    client = gateway.openai(api_key=key)

    async def one() -> float | None:
        try:
            done = await client.chat.completions.create(model="fake/metered", messages=MESSAGES,  # type: ignore[arg-type]
                                                        max_tokens=10)
        except openai.APIStatusError as exc:
            assert exc.status_code == 402, exc
            return None
        return float((done.model_extra or {})["billing"]["request_cost"])

    results = await asyncio.gather(*(one() for _ in range(200)))
    served = [c for c in results if c is not None]
    assert len(served) == 20
    assert len(gateway.fake.requests) == 20
    balance, usage, credits = await key_state(gateway, key_id)
    assert balance == cost // 2 and balance >= 0
    assert sum(nano(c) for c in served) == usage == credits - balance


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_request_outliving_the_hold_ttl_keeps_its_hold_and_its_stream_slot(
        make_gateway: Any, request: pytest.FixtureRequest, backend: str) -> None:
    """A stream that runs longer than `billing.hold_ttl_s` (a long reasoning answer, a slow client): its hold
    used to expire while it ran, its money went back to the balance, another request spent it, and the
    stream's settlement could charge only what was left (part of it free); its stream slot expired too,
    letting a stream past the key's cap. The gateway renews both while the request is alive."""
    store_url = request.getfixturevalue("redis_url") if backend == "redis" else ""
    gateway = await make_gateway(store_url=store_url, prefix=f"t{uuid.uuid4().hex}:", billing={"hold_ttl_s": 1})
    cost = 30 * 10_000  # fake/metered, input free: the recorded stream's 30 completion tokens; hold == cost
    key, key_id = await gateway.add_key("long", balance=cost + cost // 2, max_streams=1)
    gateway.fake.delay_between_chunks_s = 0.08  # 34 events: about 2.7 s, well past the 1 s TTL
    body = {"model": "fake/metered", "messages": MESSAGES, "stream": True, "max_tokens": 30}
    async with aiohttp.ClientSession() as http:
        stream = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth(key))
        assert stream.status == 200
        await stream.content.readuntil(b"\n\n")
        await asyncio.sleep(1.6)  # the admission's TTL has passed; the stream runs on
        other = {**body, "stream": False}
        spend = await http.post(gateway.url + "/v1/chat/completions", json=other, headers=gateway.auth(key))
        assert spend.status == 402, await spend.text()  # the stream's money is still held
        second = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth(key))
        assert second.status == 429 and (await second.json())["error"]["code"] == "too_many_streams"
        raw = await stream.read()
    assert b"data: [DONE]" in raw
    await settled(gateway)
    balance, usage, credits = await key_state(gateway, key_id)
    assert (balance, usage, credits) == (cost // 2, cost, cost + cost // 2)  # charged in full, nothing held
    assert not gateway.app[RUNTIME].settlements.live
