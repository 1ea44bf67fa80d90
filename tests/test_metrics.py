"""Prometheus metrics of the running gateway: what they count, and that their label sets stay bounded."""

from __future__ import annotations

import re
import uuid

import aiohttp
import openai
import pytest
from harness import Gateway

MESSAGES = [{"role": "user", "content": "hi"}]


async def scrape(gateway: Gateway) -> str:
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


def value(text: str, name: str, **labels: str) -> float:
    """The sample of `name` whose labels include `labels` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def series(text: str, name: str) -> int:
    return sum(1 for line in text.splitlines() if line.startswith(name + "{"))


async def test_requests_tokens_cost_and_streams_are_counted(gateway: Gateway) -> None:
    before = await scrape(gateway)
    client = gateway.openai()
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    async for _ in stream:
        pass
    after = await scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v1/chat/completions"
    assert delta("gateway_requests_total", route=route, model="fake/gpt-4o", status_class="2xx") == 2
    assert delta("gateway_request_duration_seconds_count", route=route, model="fake/gpt-4o") == 2
    assert delta("gateway_upstream_duration_seconds_count", model="fake/gpt-4o") == 2
    assert delta("gateway_time_to_first_token_seconds_count", model="fake/gpt-4o") == 1
    assert delta("gateway_tokens_total", model="fake/gpt-4o", direction="in") > 0
    assert delta("gateway_tokens_total", model="fake/gpt-4o", direction="out") > 0
    assert delta("gateway_cost_dollars_total", model="fake/gpt-4o") > 0
    assert value(after, "gateway_active_streams") == 0
    assert "gateway_config_age_seconds" in after


async def test_refusals_are_counted(gateway: Gateway) -> None:
    before = await scrape(gateway)
    poor, _ = await gateway.add_key("poor", balance=1)
    with pytest.raises(openai.APIStatusError):
        await gateway.openai(api_key=poor).chat.completions.create(model="fake/gpt-4o",  # type: ignore[arg-type]
                                                                   messages=MESSAGES)
    after = await scrape(gateway)
    assert (value(after, "gateway_insufficient_balance_total", model="fake/gpt-4o")
            - value(before, "gateway_insufficient_balance_total", model="fake/gpt-4o")) == 1


async def test_random_model_names_do_not_grow_the_series(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async def ask(model: str) -> None:
            async with http.post(gateway.url + "/v1/chat/completions", headers=gateway.auth(),
                                 json={"model": model, "messages": MESSAGES}) as r:
                assert r.status == 404

        await ask("warm/up")
        before = await scrape(gateway)
        for _ in range(1000):
            await ask(f"attacker/{uuid.uuid4().hex}")
    after = await scrape(gateway)
    for name in ("gateway_requests_total", "gateway_request_duration_seconds_bucket"):
        assert series(after, name) == series(before, name)
    assert "attacker/" not in after
    assert value(after, "gateway_requests_total", model="unknown", status_class="4xx") >= 1000


async def test_metrics_need_no_key_and_show_no_secret(gateway: Gateway) -> None:
    text = await scrape(gateway)
    assert gateway.key not in text and "sk-fake-provider-key" not in text
