"""Prometheus metrics of the running gateway: what they count, and that their label sets stay bounded."""

from __future__ import annotations

import math
import re
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from harness import Gateway
from redis_server import RedisServer

from gateway import metrics as metrics_mod
from gateway.handlers.health import STORE_CHECK_S

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


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop, freeze and start without disturbing the session's."""
    with RedisServer() as server:
        yield server


async def timed_scrape(gateway: Gateway) -> tuple[float, float]:
    """gateway_store_up of one scrape, and how long the scrape took."""
    started = time.monotonic()
    text = await scrape(gateway)
    return value_of(text, "gateway_store_up"), time.monotonic() - started


def value_of(text: str, name: str) -> float:
    """An unlabelled sample's value; NaN when absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return math.nan


async def test_a_scrape_asks_the_store_itself(make_gateway: Any, own_redis: RedisServer) -> None:
    """No request touches the store between the scrapes: each must find out on its own, within ~2 s."""
    gateway = await make_gateway(store_url=own_redis.url, prefix=f"t{uuid.uuid4().hex}:")
    metrics_mod.store_up(False)  # stale, as an idle gateway's gauge used to be
    assert (await timed_scrape(gateway))[0] == 1

    own_redis.stop()
    up, took = await timed_scrape(gateway)
    assert up == 0 and took < STORE_CHECK_S + 1

    own_redis.start()
    assert (await timed_scrape(gateway))[0] == 1

    assert own_redis._proc is not None
    own_redis._proc.send_signal(signal.SIGSTOP)  # the server holds connections but never answers
    try:
        up, took = await timed_scrape(gateway)
    finally:
        own_redis._proc.send_signal(signal.SIGCONT)
    assert up == 0 and STORE_CHECK_S - 0.5 < took < STORE_CHECK_S + 1
    assert (await timed_scrape(gateway))[0] == 1
