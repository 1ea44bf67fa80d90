"""Retry budget, full jitter, deadline, concurrency cap and the resend rule.

The budget and the jitter are tested on `gateway.resilience` / `gateway.routing` directly (a scripted
`serve` and no network, so the interleaving is exact); the rest through the running gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from fakes.openai_upstream import FakeOpenAI
from faultproxy import Fault, FaultProxy, at_start
from harness import Gateway, closed_port, gateway_config, gateway_config_text, start_gateway, validate
from yarl import URL

from egress.proxy import Progress, make_session, watching
from gateway import resilience, routing
from gateway.catalog import Catalog, Route
from gateway.config import RetriesConfig
from gateway.config_load import parse
from gateway.errors import InvalidRequest, UpstreamFailed
from gateway.relay import map_upstream_error
from gateway.state import RUNTIME
from providers.types import UpstreamHTTPError

MESSAGES = [{"role": "user", "content": "hi"}]


def _routes(*models: str) -> list[Route]:
    catalog = Catalog(gateway_config("http://127.0.0.1:9/v1"))
    return [catalog.routes[m] for m in models]


# --- retry budget and jitter, without a network -------------------------------------------------------


async def test_retry_budget_caps_concurrent_retries_per_provider() -> None:
    """Ten requests fail at once: with a 20 % budget (min 1) only two retry while those retries run."""
    cfg = RetriesConfig(max_retries=1, base_delay_s=0.001, max_delay_s=0.001, budget_ratio=0.2, budget_min=1)
    guard = resilience.Guard()
    route = _routes("fake/gpt-4o")[0]
    gate, release = asyncio.Event(), asyncio.Event()
    calls = {"first": 0, "retry": 0}
    retrying = asyncio.Event()

    async def serve(_route: Route) -> str:
        if resilience.attempt_time_left() is None:  # a first attempt has no request deadline of its own
            calls["first"] += 1
            await gate.wait()
            raise UpstreamFailed("upstream 500")
        calls["retry"] += 1
        if calls["retry"] == 2:
            retrying.set()
        await release.wait()
        return "served"

    tasks = [asyncio.ensure_future(resilience.serve_first(guard, cfg, [route], serve)) for _ in range(10)]
    while calls["first"] < 10:
        await asyncio.sleep(0)
    assert guard.active["fake"] == 10
    gate.set()  # all ten fail in the same loop step: two get a retry slot, eight find the budget spent
    await asyncio.wait_for(retrying.wait(), 5)
    assert guard.retrying["fake"] == 2
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(map(str, results)).count("served") == 2
    assert all(isinstance(r, UpstreamFailed) for r in results if r != "served")
    assert calls == {"first": 10, "retry": 2}
    assert not guard.active and not guard.retrying and not guard.in_flight  # nothing counted twice or left


async def test_budget_minimum_lets_a_lone_request_retry() -> None:
    cfg = RetriesConfig(max_retries=2, base_delay_s=0.001, max_delay_s=0.001)  # defaults: 20 %, at least 3
    attempts = []

    async def serve(_route: Route) -> str:
        attempts.append(resilience.attempt_time_left())
        if len(attempts) < 3:
            raise UpstreamFailed("upstream 503")
        return "served"

    assert await resilience.serve_first(resilience.Guard(), cfg, _routes("fake/gpt-4o"), serve) == "served"
    assert attempts[0] is None and all(0 < left <= cfg.deadline_s for left in attempts[1:])


async def test_not_retryable_errors_end_the_request_at_once() -> None:
    calls = 0

    async def serve(_route: Route) -> str:
        nonlocal calls
        calls += 1
        raise UpstreamFailed("lost after the body was sent", retryable=False)

    with pytest.raises(UpstreamFailed):
        await resilience.serve_first(resilience.Guard(), RetriesConfig(max_retries=3, base_delay_s=0.001),
                                     _routes("fake/gpt-4o", "fake/gpt-5"), serve)
    assert calls == 1  # neither retried nor handed to the fallback
    with pytest.raises(InvalidRequest):
        await resilience.serve_first(resilience.Guard(), RetriesConfig(), _routes("fake/gpt-4o"),
                                     _raise(InvalidRequest("bad")))


async def test_untranslatable_moves_on_at_once_and_is_the_answer_when_nothing_else_takes_it() -> None:
    """A request a model's kind cannot express stays so: no retry of that model, the next candidate at once."""
    cfg = RetriesConfig(max_retries=3, base_delay_s=5, max_delay_s=5)  # a retry would sleep past the test
    tried: list[str] = []

    def serve(takes: set[str]) -> Callable[[Route], Any]:
        async def attempt(route: Route) -> str:
            tried.append(route.model_id)
            if route.model_id not in takes:
                raise InvalidRequest("cannot", code="untranslatable", param="logprobs", retryable=True)
            return route.model_id
        return attempt

    routes = _routes("fake/gpt-4o", "fake/gpt-5")
    assert await asyncio.wait_for(resilience.serve_first(resilience.Guard(), cfg, routes, serve({"fake/gpt-5"})),
                                  1) == "fake/gpt-5"
    assert tried == ["fake/gpt-4o", "fake/gpt-5"]
    tried.clear()
    with pytest.raises(InvalidRequest) as info:
        await asyncio.wait_for(resilience.serve_first(resilience.Guard(), cfg, routes, serve(set())), 1)
    assert (info.value.status, info.value.code, info.value.param) == (400, "untranslatable", "logprobs")
    assert tried == ["fake/gpt-4o", "fake/gpt-5"]


async def test_a_redirecting_provider_is_not_retried_but_a_fallback_is_tried_at_once() -> None:
    """The same base URL redirects again: the next candidate straight away, no back-off on this one."""
    cfg = RetriesConfig(max_retries=3, base_delay_s=5, max_delay_s=5)  # a retry would sleep past the test
    tried: list[str] = []

    async def serve(route: Route) -> str:
        tried.append(route.model_id)
        if route.model_id == "fake/gpt-4o":
            raise map_upstream_error(UpstreamHTTPError(307, ""), "fake", False, str)
        return route.model_id

    routes = _routes("fake/gpt-4o", "fake/gpt-5")
    assert await asyncio.wait_for(resilience.serve_first(resilience.Guard(), cfg, routes, serve), 1) == "fake/gpt-5"
    assert tried == ["fake/gpt-4o", "fake/gpt-5"]


def _raise(exc: Exception) -> Callable[[Route], Any]:
    async def serve(_route: Route) -> str:
        raise exc
    return serve


def test_back_off_is_full_jitter() -> None:
    cfg = RetriesConfig(base_delay_s=1.0, max_delay_s=8.0)
    err = UpstreamFailed("x")
    for attempt, cap in ((0, 1.0), (2, 4.0), (6, 8.0)):
        delays = [routing.retry_delay(attempt, err, cfg) for _ in range(400)]
        assert all(d is not None and 0 <= d <= cap for d in delays)
        assert min(d for d in delays if d is not None) < cap * 0.1  # full jitter reaches down to zero
        assert max(d for d in delays if d is not None) > cap * 0.9


# --- the resend rule, at the connection ---------------------------------------------------------------


async def test_progress_tells_a_sent_body_from_a_refused_connection(aiohttp_server: Any) -> None:
    from aiohttp import web

    server = await aiohttp_server(web.Application())
    session = make_session()
    try:
        async with FaultProxy(server.port) as proxy:
            proxy.fault = Fault("reset", at=at_start)
            sent = Progress()
            with watching(sent), pytest.raises(aiohttp.ClientError):
                await session.post(proxy.url("/x"), data=b'{"a": 1}')
            assert sent.connected  # the upstream may have the request: never resend it
        refused = Progress()
        with watching(refused), pytest.raises(aiohttp.ClientConnectionError):
            await session.post(f"http://127.0.0.1:{closed_port()}/x", data=b"{}")
        assert not refused.connected  # nothing left: a retry is safe
    finally:
        await session.close()


async def test_new_connections_are_timed_and_reused_ones_are_not(aiohttp_server: Any) -> None:
    from aiohttp import web

    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/x", ok)
    server = await aiohttp_server(app)
    timed: list[float] = []
    session = make_session(on_connect=timed.append)
    try:
        for _ in range(3):
            progress = Progress()
            with watching(progress):
                async with session.post(f"http://127.0.0.1:{server.port}/x", data=b"{}") as resp:
                    assert await resp.text() == "ok"
            assert progress.connected
        outside = Progress()
        async with session.post(f"http://127.0.0.1:{server.port}/x", data=b"{}") as resp:  # nobody watching
            await resp.read()
        assert not outside.connected
    finally:
        await session.close()
    assert len(timed) == 1 and 0 < timed[0] < 5  # one new connection, then keep-alive reuse


async def test_refused_connection_is_retried(make_gateway: Any, log_lines: Callable[[], Any]) -> None:
    gw = await make_gateway(retries={"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.02})
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="dead/model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 502 and info.value.code == "upstream_unreachable"
    line = [x for x in log_lines() if x.get("event") == "request"][-1]
    assert line["attempts"] == 3  # the body never left: safe to try again, twice
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None and record.balance == record.credits  # every attempt's hold released


# --- deadline ------------------------------------------------------------------------------------------


@pytest.fixture
async def behind_proxy(aiohttp_server: Any, fake_openai: tuple[FakeOpenAI, str]) -> AsyncIterator[Any]:
    """Start a gateway whose providers reach the fake upstream through a FaultProxy: `await start(**cfg)`."""
    fake, url = fake_openai
    made: list[Gateway] = []
    async with FaultProxy(URL(url).port or 0) as proxy:
        async def start(edit: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> Gateway:
            doc = yaml.safe_load(gateway_config_text(proxy.url(), prefix=f"r{uuid.uuid4().hex}:", **options))
            if edit is not None:
                edit(doc)
            gw = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), fake)
            gw.extra["proxy"] = proxy
            made.append(gw)
            return gw

        yield start
        for gw in made:
            await gw.close()


async def test_deadline_bounds_a_fallbacks_wait_for_headers(behind_proxy: Any) -> None:
    gw = await behind_proxy(retries={"max_retries": 0, "deadline_s": 0.6})
    proxy: FaultProxy = gw.extra["proxy"]
    proxy.fault = Fault("black_hole")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:  # dead/model refuses at once, the fallback hangs
        await gw.openai().chat.completions.create(model="dead/model", messages=MESSAGES,  # type: ignore[arg-type]
                                                  extra_body={"models": ["fake/gpt-4o"]})
    elapsed = time.monotonic() - started
    assert info.value.status_code == 504 and info.value.code == "upstream_timeout"
    assert elapsed < 1.4  # the deadline (0.6 s), not the provider's connect + first byte (2.5 s)
    assert proxy.opened == 1
    await proxy.until(lambda: proxy.open == 0)


async def test_deadline_does_not_cut_the_first_attempt(behind_proxy: Any) -> None:
    gw = await behind_proxy(retries={"max_retries": 2, "deadline_s": 0.2})
    gw.fake.delay_before_headers_s = 0.5
    done = await gw.openai().chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert done.choices[0].message.content


# --- concurrency cap -----------------------------------------------------------------------------------


def _cap_fake_at_one(doc: dict[str, Any]) -> None:
    doc["providers"]["fake"]["max_concurrency"] = 1


async def test_provider_at_its_cap_answers_a_fast_503(behind_proxy: Any) -> None:
    gw = await behind_proxy(_cap_fake_at_one, retries={"max_retries": 2, "base_delay_s": 0.01})
    gw.fake.delay_between_chunks_s = 0.05
    client = gw.openai()
    first = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                 stream=True)
    chunks = [await first.__anext__()]  # the first stream holds the one slot while it runs
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, http.post(
            gw.url + "/v1/chat/completions", headers=gw.auth(),
            json={"model": "fake/gpt-4o", "messages": MESSAGES}) as r:
        payload = await r.json()
        assert r.status == 503 and r.headers["Retry-After"] == "1"
    assert time.monotonic() - started < 0.5  # no queueing, no retry of the same provider
    validate(payload, "ErrorResponse")
    assert payload["error"]["code"] == "provider_overloaded" and "max_concurrency" in payload["error"]["message"]
    assert len(gw.fake.requests) == 1
    fallback = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                    extra_body={"models": ["local/llama"]})
    assert fallback.model == "local/llama"  # another provider serves at once
    chunks += [c async for c in first]
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    assert not gw.app[RUNTIME].guard.in_flight  # the slot came back with the stream's end
    again = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert again.model == "fake/gpt-4o"
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None and record.balance + record.usage == record.credits  # the 503 held nothing
    text = json.dumps(payload)
    assert "127.0.0.1" not in text


def test_retry_after_as_an_http_date_is_honoured() -> None:
    """Retry-After may be an HTTP-date (RFC 9110) as well as seconds: a date 5 s ahead waits about 5 s, one
    past `honor_retry_after_up_to_s` moves on to the next model, instead of a retry at once."""
    import email.utils

    cfg = RetriesConfig(base_delay_s=0.001, max_delay_s=0.001, honor_retry_after_up_to_s=20)

    def limited(seconds: float) -> UpstreamFailed:
        date = email.utils.formatdate(time.time() + seconds, usegmt=True)
        return UpstreamFailed("x", headers={"Retry-After": date})

    delay = routing.retry_delay(0, limited(5), cfg)
    assert delay is not None and 3.5 <= delay <= 5.5
    assert routing.retry_delay(0, limited(60), cfg) is None
    unreadable = UpstreamFailed("x", headers={"Retry-After": "soon"})
    assert routing.retry_delay(0, unreadable, cfg) == pytest.approx(0, abs=0.01)
