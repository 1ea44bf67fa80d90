"""Every place the gateway states a request's money agrees, to the nano-dollar and the token, on both stores:
the answer's bill, the generation record, the key's ledger (/v1/credits), the audit (usage export) and the
Prometheus counters, for a mix of requests: chat streamed and not, /v1/messages, embeddings, images,
completions, moderations, an upstream error, a client that hangs up, an estimate, BYOK with its fee, a retry
then success and a fallback."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from apis_config import Upstreams, config_doc
from harness import Gateway, start_gateway
from test_billing_e2e import key_state, nano, settled
from test_metrics import scrape, value

from gateway.__main__ import _usage_row
from gateway.config_load import parse
from gateway.state import RUNTIME

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
BYOK_FEE_NANO = 1_000_000  # $0.001


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def money_gateway(request: pytest.FixtureRequest, aiohttp_server: Any,
                        all_upstreams: Upstreams) -> Any:
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    doc = config_doc(all_upstreams.urls, store_url, f"t{uuid.uuid4().hex}:")
    doc["billing"] = {"byok_fee": BYOK_FEE_NANO / 1e9}
    doc["retries"] = {"max_retries": 1, "base_delay_s": 0.01, "max_delay_s": 0.02}
    doc["models"]["oai/fallible"] = {"upstream": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10},
                                     "fallbacks": ["google/flash"]}
    gateway = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
    gateway.extra.update(upstreams=all_upstreams, doc=doc)
    yield gateway
    await gateway.close()


async def _usage_rows(gateway: Gateway, key_id: str) -> list[dict[str, Any]]:
    return [_usage_row(e) async for e in gateway.app[RUNTIME].store.iter_usage(0) if e["key_id"] == key_id]


async def _get(gateway: Gateway, path: str, **params: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + path, params=params,
                                                         headers=gateway.auth()) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["data"]


async def _cut_stream(gateway: Gateway) -> None:
    fake = gateway.extra["upstreams"].openai
    fake.stall_after_chunks = 3
    async with aiohttp.ClientSession() as http:
        r = await http.post(gateway.url + "/v1/chat/completions", headers=gateway.auth(),
                            json={"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True})
        await r.content.readuntil(b"\n\n")
        await r.content.readuntil(b"\n\n")
        r.close()
    await asyncio.wait_for(fake.client_disconnected.wait(), timeout=5)
    fake.stall_after_chunks = None


async def test_every_statement_of_money_agrees(money_gateway: Gateway) -> None:
    gw = money_gateway
    ups: Upstreams = gw.extra["upstreams"]
    before_metrics = await scrape(gw)
    client = gw.openai()
    claude = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    bills: dict[str, dict[str, Any]] = {}

    done = await client.chat.completions.create(model="oai/gpt-4o", messages=MESSAGES)
    bills[done.id] = (done.model_extra or {})["billing"]
    stream = await client.chat.completions.create(model="oai/gpt-4o", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        if (chunk.model_extra or {}).get("billing") and not chunk.choices:
            bills[chunk.id] = chunk.model_extra["billing"]  # type: ignore[index]
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES)
    bills[message.id] = (message.model_extra or {})["billing"]
    async with claude.messages.stream(model="google/flash", max_tokens=100, messages=MESSAGES) as s:
        async for event in s:
            if event.type == "message_delta":
                delta_bill = (event.model_extra or {})["billing"]
        bills[(await s.get_final_message()).id] = delta_bill
    emb = await client.embeddings.with_raw_response.create(model="google/embedding", input="hello there")
    body = json.loads(emb.content)
    bills[body["id"]] = body["billing"]
    img = json.loads((await client.images.with_raw_response.generate(prompt="otter")).content)
    bills[img["id"]] = img["billing"]
    comp = json.loads((await client.completions.with_raw_response.create(
        model="oai/gpt-3.5-turbo-instruct", prompt="Say this", max_tokens=7)).content)
    bills[comp["id"]] = comp["billing"]
    mod = json.loads((await client.moderations.with_raw_response.create(input="x")).content)
    bills[mod["id"]] = mod["billing"]
    # BYOK with its fee
    own = json.loads((await client.chat.completions.with_raw_response.create(
        model="oai/gpt-4o", messages=MESSAGES, extra_body={"provider_api_key": "sk-own-000000000000000"})).content)
    bills[own["id"]] = own["billing"]
    assert nano(own["billing"]["request_cost"]) == BYOK_FEE_NANO
    # an upstream error (no retry for a 400)
    ups.openai.status, ups.openai.fail_times = 400, 1
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="oai/gpt-4o", messages=MESSAGES)
    # a retry then success
    ups.openai.status, ups.openai.fail_times = 500, 1
    retried = await client.chat.completions.create(model="oai/gpt-4o", messages=MESSAGES)
    bills[retried.id] = (retried.model_extra or {})["billing"]
    # a fallback: both attempts at OpenAI fail, Gemini serves
    ups.openai.status, ups.openai.fail_times = 500, 2
    fell = await client.chat.completions.create(model="oai/fallible", messages=MESSAGES)
    assert fell.model == "google/flash"
    bills[fell.id] = (fell.model_extra or {})["billing"]
    ups.openai.status, ups.openai.fail_times = 200, None
    await _cut_stream(gw)
    await settled(gw)
    await claude.close()

    after_metrics = await scrape(gw)
    rows = await _usage_rows(gw, gw.key_id)
    records = {row["generation_id"]: await _get(gw, "/v1/generation", id=row["generation_id"]) for row in rows}
    balance, usage, credits = await key_state(gw)
    credits_json = await _get(gw, "/v1/credits")

    charged = sum(row["charged_nano"] for row in rows)
    assert charged == usage == credits - balance
    assert nano(credits_json["total_usage"]) == usage and nano(credits_json["balance"]) == balance
    for row in rows:
        rec = records[row["generation_id"]]
        assert nano(rec["total_cost"]) == row["charged_nano"], (row, rec)
        for name in ("model", "provider_name", "endpoint"):
            assert rec.get(name) == row.get(name), (name, row, rec)
        for name in ("tokens_prompt", "tokens_completion", "status", "images"):
            assert str(rec.get(name, "")) == str(row.get(name, "")), (name, row, rec)
        for name in ("streamed", "cancelled", "is_byok", "estimated"):
            assert rec[name] == (row.get(name) == "1"), (name, row, rec)
    for gen_id, bill in bills.items():
        assert gen_id in records, gen_id
        assert nano(bill["request_cost"]) == nano(records[gen_id]["total_cost"]), (gen_id, bill, records[gen_id])
        assert bill["estimated"] == records[gen_id]["estimated"]
        assert bill["using_own_key"] == records[gen_id]["is_byok"]

    def delta(name: str, want: float, within: float = 0, **labels: str) -> None:
        """The counters' growth is `want`, to the precision of floats of their size: the registry is the test
        process's, and earlier tests' counts (bounded absurd usage, ~2^52 tokens) make its steps coarse."""
        after = value(after_metrics, name, **labels)
        assert abs(after - value(before_metrics, name, **labels) - want) <= max(within, 4 * math.ulp(after)), name

    delta("gateway_cost_dollars_total", charged / 1e9, within=0.5e-9)  # to the nano-dollar
    delta("gateway_tokens_total", sum(int(r.get("tokens_prompt") or 0) for r in rows), direction="in")
    delta("gateway_tokens_total", sum(int(r.get("tokens_completion") or 0) for r in rows), direction="out")
