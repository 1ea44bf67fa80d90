"""The egress pool end to end: real SOCKS/HTTP proxy servers between the gateway and a fake upstream."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import trustme
import yaml
from fakes.openai_upstream import FakeOpenAI
from harness import Gateway, closed_port
from prometheus_client import REGISTRY
from proxies import BlackHole, Dante, Microsocks, PProxy, Tinyproxy

from egress import health
from egress.pool import Egress, PoolSpec
from egress.proxy import ProxySpec
from gateway import streaming
from gateway.app import reload_config
from gateway.config_load import parse
from gateway.errors import GatewayError
from gateway.relay import open_upstream
from gateway.state import RUNTIME
from providers.types import UpstreamRequest

ADMIN = "admin-token-for-tests-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
PROXY_PASSWORD = "pr0xy-s3cret-pw"


def config(upstream_url: str, proxies: list[dict[str, Any]], **pool: Any) -> Any:
    return parse(yaml.safe_dump(config_doc(upstream_url, proxies, **pool)), {})


def config_doc(upstream_url: str, proxies: list[dict[str, Any]], first_byte_s: float = 5, **pool: Any) -> Any:
    health = {"interval_s": 0.3, "timeout_s": 1, "eject_after_failures": 2, "restore_after_successes": 1,
              **pool.pop("health", {})}
    return {
        "server": {"admin_token": ADMIN, "sse_keepalive_s": 0.5},
        "egress": {"pools": {"p": {"proxies": proxies, "health": health, **pool}}},
        "providers": {
            "viapool": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-provider-key-000000000000",
                        "egress": "p",
                        "timeouts": {"connect_s": 1, "first_byte_s": first_byte_s, "between_chunks_s": 5}},
            "direct": {"kind": "openai", "base_url": upstream_url, "api_key": "sk-provider-key-000000000000"},
        },
        "models": {"viapool/gpt": {"upstream": "gpt-4o"}, "direct/gpt": {"upstream": "gpt-4o"}},
    }


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    """A fake upstream that only serves connections from 127.0.0.2/127.0.0.3, where our proxies exit."""
    from fakes.openai_upstream import make_app

    fake = FakeOpenAI()
    server = await aiohttp_server(make_app(fake), host="127.0.0.1")
    fake.allowed_peers = {"127.0.0.2", "127.0.0.3"}
    yield fake, str(server.make_url("/v1"))


@pytest.fixture
def socks_pair() -> Iterator[tuple[Microsocks, Microsocks]]:
    """Two authenticated SOCKS5 proxies with distinct exit addresses."""
    with Microsocks(user="u", password=PROXY_PASSWORD, bind_out="127.0.0.2") as a, \
            Microsocks(user="u", password=PROXY_PASSWORD, bind_out="127.0.0.3") as b:
        yield a, b


async def admin_egress(gw: Gateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(
            gw.url + "/admin/egress", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
        assert r.status == 200
        return (await r.json())["pools"]["p"]


async def chat(gw: Gateway, model: str = "viapool/gpt", **kwargs: Any) -> Any:
    return await gw.openai().chat.completions.create(model=model, messages=MESSAGES, **kwargs)  # type: ignore[arg-type]


async def test_blocked_upstream_is_reached_only_through_the_pool(upstream: Any, socks_pair: Any,
                                                                 started: Any) -> None:
    fake, url = upstream
    a, _ = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}]), fake)
    done = await chat(gw)
    assert done.choices[0].message.content
    assert fake.last.peer == "127.0.0.2"  # the upstream saw the proxy's exit, not the gateway
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw, "direct/gpt")  # the same upstream without the pool refuses us
    assert info.value.status_code == 451
    assert [r.peer for r in fake.requests] == ["127.0.0.2", "127.0.0.1"]


@pytest.mark.parametrize("kind", ["microsocks-auth", "pproxy-socks5", "pproxy-socks5-auth", "pproxy-socks4",
                                  "pproxy-http", "tinyproxy-connect", "dante-socks5"])
async def test_each_proxy_kind_carries_chat_and_streams(kind: str, aiohttp_server: Any, started: Any) -> None:
    from fakes.openai_upstream import make_app

    fake = FakeOpenAI()
    server = await aiohttp_server(make_app(fake))
    factories = {
        "microsocks-auth": lambda: Microsocks(user="u", password=PROXY_PASSWORD),
        "pproxy-socks5": lambda: PProxy("socks5"),
        "pproxy-socks5-auth": lambda: PProxy("socks5", user="u", password=PROXY_PASSWORD),
        "pproxy-socks4": lambda: PProxy("socks4"),
        "pproxy-http": lambda: PProxy("http"),
        "tinyproxy-connect": Tinyproxy,
        "dante-socks5": Dante,
    }
    with factories[kind]() as proxy:
        # socks5h: name the upstream by host name; the proxy resolves it
        url = str(server.make_url("/v1")).replace("127.0.0.1", "localhost")
        proxy_url = proxy.url.replace("socks5://", "socks5h://")
        gw = await started(config(url, [{"name": "only", "url": proxy_url}]), fake)
        assert (await chat(gw)).choices[0].message.content
        stream = await chat(gw, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert len(text) > 20
        assert proxy.tunnels() >= 1
        if kind != "dante-socks5" and not kind.endswith("socks4"):  # dante logs resolved addresses only
            # socks5h and CONNECT hand the name to the proxy: no DNS query from the gateway
            assert any(t.startswith("localhost") for t in proxy.targets()), proxy.targets()


async def test_killing_one_proxy_fails_no_request(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], affinity=False),
                       fake)
    results = []
    for i in range(40):
        if i == 10:
            a.stop()
        if i == 30:
            a.start()
        results.append(await chat(gw))
        await asyncio.sleep(0.02)
    assert len(results) == 40  # every request was served
    state = await _wait_state(gw, "a", "up", timeout=5)
    assert state["ejections"] >= 1
    assert state["requests"].get("connect_error", 0) + state["requests"].get("timeout", 0) >= 1


async def test_dead_proxy_is_ejected_then_restored(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}]), fake)
    a.stop()
    await _wait_state(gw, "a", "ejected", timeout=5)  # by the active probes alone
    assert {r.peer for r in fake.requests} <= {"127.0.0.3"}
    await chat(gw)
    assert fake.last.peer == "127.0.0.3"
    a.start()
    await _wait_state(gw, "a", "up", timeout=5)


async def test_all_proxies_dead_is_a_prompt_503(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}]), fake)
    a.stop()
    b.stop()
    started_at = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    assert time.monotonic() - started_at < 3  # two connect attempts of at most 1 s each
    assert info.value.status_code == 503 and info.value.code == "egress_unavailable"
    assert "'p'" in info.value.message
    await _wait_state(gw, "a", "ejected", timeout=5)
    await _wait_state(gw, "b", "ejected", timeout=5)
    started_at = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    assert time.monotonic() - started_at < 0.5 and info.value.code == "egress_unavailable"


async def test_black_hole_proxy_fails_over_within_the_connect_timeout(upstream: Any, socks_pair: Any,
                                                                      started: Any) -> None:
    fake, url = upstream
    _, b = socks_pair
    with BlackHole() as hole:
        cfg = config(url, [{"name": "hole", "url": f"socks5://127.0.0.1:{hole.port}"}, {"name": "b", "url": b.url}],
                     affinity=False, strategy="round_robin", health={"interval_s": 60})
        gw = await started(cfg, fake)
        for _ in range(4):
            started_at = time.monotonic()
            await chat(gw)
            assert time.monotonic() - started_at < 2.5  # connect_s is 1
        assert fake.last.peer == "127.0.0.3"


async def test_upstream_errors_eject_no_proxy(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], affinity=False),
                       fake)
    for status in (400, 500):
        fake.status = status
        for _ in range(15):
            with pytest.raises(openai.APIStatusError):
                await chat(gw)
    pool = await admin_egress(gw)
    assert [p["state"] for p in pool["proxies"]] == ["up", "up"]
    assert all(p["ejections"] == 0 for p in pool["proxies"])


async def test_key_affinity_keeps_a_key_on_one_exit(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}]), fake)
    exits: dict[str, set[str]] = {}
    for i in range(6):
        own = f"sk-byok-key-number-{i}-000000000"
        for _ in range(4):
            await chat(gw, extra_body={"provider_api_key": own})
            exits.setdefault(own, set()).add(fake.last.peer)
    assert all(len(peers) == 1 for peers in exits.values())
    assert len({next(iter(p)) for p in exits.values()}) == 2  # and the keys spread over both proxies


async def test_thousand_requests_reuse_a_handful_of_tunnels(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, _ = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}], health={"interval_s": 60}), fake)
    fds_before = len(os.listdir("/proc/self/fd"))
    async with aiohttp.ClientSession() as http:
        for _ in range(1000):
            async with http.post(gw.url + "/v1/chat/completions", headers=gw.auth(),
                                 json={"model": "viapool/gpt", "messages": MESSAGES}) as r:
                assert r.status == 200
                await r.read()
    assert a.tunnels() <= 5
    assert len(fake.requests) == 1000
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 5


async def test_no_credential_in_admin_metrics_errors_or_logs(upstream: Any, socks_pair: Any, started: Any,
                                                             log_lines: Any) -> None:
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}]), fake)
    await chat(gw)
    a.stop()
    b.stop()
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/metrics") as r:
            metrics_text = await r.text()
        pool = await admin_egress(gw)
    assert 'gateway_egress_proxy_up{pool="p",proxy="a"}' in metrics_text
    everything = json.dumps([info.value.body, pool, log_lines()]) + metrics_text
    assert PROXY_PASSWORD not in everything


@pytest.mark.parametrize("kind", ["microsocks", "tinyproxy", "pproxy-http"])
async def test_a_proxy_refusing_the_configured_credentials_is_told_apart_from_a_dead_one(
        kind: str, upstream: Any, started: Any, log_lines: Any) -> None:
    """A wrong proxy password in the config (a rotated one) was counted as `connect_error`, as a proxy that is down:
    nothing in /metrics or /admin/egress told the operator that the fix is the password, not the proxy. It is
    `auth_error` now (a SOCKS5 authentication failure, an HTTP proxy's 407 or 401); the client still gets a prompt
    503 naming the pool, and the password is nowhere."""
    fake, url = upstream
    factories = {"microsocks": lambda: Microsocks(user="u", password=PROXY_PASSWORD),
                 "tinyproxy": lambda: Tinyproxy(user="u", password=PROXY_PASSWORD),
                 "pproxy-http": lambda: PProxy("http", user="u", password=PROXY_PASSWORD)}
    with factories[kind]() as proxy:
        rotated = "wrong-" + PROXY_PASSWORD
        gw = await started(config(url, [{"name": "a", "url": proxy.url_for(password=rotated)}],
                                  health={"interval_s": 60}), fake)
        before = REGISTRY.get_sample_value("gateway_egress_requests_total",
                                           {"pool": "p", "proxy": "a", "outcome": "auth_error"}) or 0.0
        with pytest.raises(openai.APIStatusError) as info:
            await chat(gw)
        assert info.value.status_code == 503 and info.value.code == "egress_unavailable", info.value.body
        proxies = (await admin_egress(gw))["proxies"]
        async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as r:
            metrics_text = await r.text()
    assert proxies[0]["requests"] == {"auth_error": 1}, proxies
    assert REGISTRY.get_sample_value("gateway_egress_requests_total",
                                     {"pool": "p", "proxy": "a", "outcome": "auth_error"}) == before + 1
    everything = json.dumps([info.value.body, proxies, log_lines()]) + metrics_text
    assert PROXY_PASSWORD not in everything and fake.requests == []


@pytest.mark.parametrize("kind", ["microsocks", "pproxy-http"])
async def test_a_password_with_url_special_characters_reaches_the_proxy_and_nowhere_else(
        kind: str, upstream: Any, started: Any, log_lines: Any) -> None:
    """`@ : % / ? #` percent-encoded in the config reach the proxy decoded (it lets the request through),
    and neither spelling shows in logs, /metrics or /admin/egress."""
    fake, url = upstream
    fake.allowed_peers = None
    password = "p@ss:w%rd/x?#-" + PROXY_PASSWORD
    factories = {"microsocks": lambda: Microsocks(user="u", password=password),
                 "pproxy-http": lambda: PProxy("http", user="u", password=password)}
    with factories[kind]() as proxy:
        assert "%40" in proxy.url and "%25" in proxy.url
        gw = await started(config(url, [{"name": "a", "url": proxy.url}], health={"interval_s": 60}), fake)
        assert (await chat(gw)).choices[0].message.content
        assert len([c async for c in await chat(gw, stream=True)]) > 3
        assert proxy.tunnels() >= 1
        async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as r:
            metrics_text = await r.text()
        everything = json.dumps([await admin_egress(gw), log_lines()]) + metrics_text
    assert PROXY_PASSWORD not in everything  # the tail both spellings share


async def test_admin_routes_need_the_admin_token(upstream: Any, socks_pair: Any, started: Any) -> None:
    fake, url = upstream
    a, _ = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}]), fake)
    async with aiohttp.ClientSession() as http:
        for headers in ({}, gw.auth(), {"Authorization": "Bearer wrong"}):
            async with http.get(gw.url + "/admin/egress", headers=headers) as r:
                assert r.status == 401


async def test_a_slow_upstream_ejects_no_proxy(upstream: Any, socks_pair: Any, started: Any) -> None:
    """Waiting past first_byte_s for a model that thinks is the upstream's slowness, not the proxy's failure:
    counted against the proxy, a client sending slow requests would move every key to another exit."""
    fake, url = upstream
    a, b = socks_pair
    quiet = {"interval_s": 60}  # no health check restores what the requests would eject
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], first_byte_s=0.3,
                              health=quiet), fake)
    fake.delay_before_headers_s = 2.0
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as info:
            await chat(gw)
        assert info.value.status_code == 504
    pool = await admin_egress(gw)
    assert [(p["name"], p["state"], p["ejections"]) for p in pool["proxies"]] == [("a", "up", 0), ("b", "up", 0)]


async def test_a_reload_removing_a_proxy_lets_its_streams_finish(upstream: Any, socks_pair: Any, started: Any,
                                                                 tmp_path: Path) -> None:
    """A request in flight finishes on the config it started with: the removed proxy's session (a rotated
    password is a removal too) closes once nothing uses it, not under a stream's feet."""
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}]), fake)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_doc(url, [{"name": "b", "url": b.url}])))
    gw.app[RUNTIME].config_path = str(path)
    fake.delay_between_chunks_s = 0.1
    stream = await chat(gw, stream=True)
    parts, finish, reloaded = [], None, False
    async for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if len(parts) == 2 and not reloaded:
            reloaded = await reload_config(gw.app)
            assert reloaded
    assert finish == "stop" and len(parts) > 5  # the stream that started on proxy a ran to its end
    await chat(gw)  # the next request leaves through the new proxy
    assert fake.last.peer == "127.0.0.3"


async def test_a_reload_with_an_unusable_proxy_url_keeps_the_config_in_force(upstream: Any, socks_pair: Any,
                                                                          started: Any, tmp_path: Path) -> None:
    fake, url = upstream
    a, _ = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}]), fake)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_doc(url, [{"name": "a", "url": a.url},
                                                    {"name": "bad", "url": "socks5h://u:pw@127.0.0.1:99999"}])))
    gw.app[RUNTIME].config_path = str(path)
    assert await reload_config(gw.app) is False
    assert (await chat(gw)).choices[0].message.content


async def test_an_unexpected_failure_mid_stream_ends_it_with_an_error_event(
        upstream: Any, socks_pair: Any, started: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever breaks inside a stream whose headers went out, the client gets an SSE error event its SDK
    raises, never a second HTTP response written into the open body."""
    fake, url = upstream
    a, _ = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}]), fake)
    real, calls = streaming.next_data, []

    async def flaky(*args: Any) -> bytes:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("Connection closed.")
        return await real(*args)

    monkeypatch.setattr(streaming, "next_data", flaky)
    fake.delay_between_chunks_s = 0.05
    stream = await chat(gw, stream=True)
    ids = set()
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            ids.add(chunk.id)
    assert not isinstance(info.value, openai.APIConnectionError), info.value
    assert "upstream_stream_error" in str(info.value.body)
    await gw.app[RUNTIME].settlements.drain(5)
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, ids.pop())
    assert record is not None and record["status"] == "502" and int(record["tokens_completion"]) > 0  # billed


async def _wait_state(gw: Gateway, name: str, state: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        proxies = {p["name"]: p for p in (await admin_egress(gw))["proxies"]}
        if proxies[name]["state"] == state:
            return proxies[name]
        if time.monotonic() > deadline:
            raise AssertionError(f"proxy {name} never became {state}: {proxies[name]}")
        await asyncio.sleep(0.1)


async def test_a_direct_connect_timeout_is_a_504(upstream: Any, started: Any) -> None:
    """A direct route whose upstream never completes the connection (TLS to a silent host) is the README's
    "upstream connect timeout": 504 `upstream_timeout`, not 502 `upstream_unreachable` (a refused connection)."""
    fake, url = upstream
    with BlackHole() as hole:
        doc = config_doc(url, [{"name": "unused", "url": "socks5://127.0.0.1:9"}])
        doc["providers"]["direct"].update(base_url=f"https://127.0.0.1:{hole.port}/v1", timeouts={"connect_s": 0.3})
        doc["retries"] = {"max_retries": 0}
        gw = await started(parse(yaml.safe_dump(doc), {}), fake)
        with pytest.raises(openai.APIStatusError) as info:
            await gw.openai().chat.completions.create(model="direct/gpt", messages=MESSAGES)
        assert info.value.status_code == 504, info.value.body
        assert info.value.code == "upstream_timeout"
        assert hole.accepted() >= 1


async def test_an_https_proxy_whose_certificate_fails_is_failed_over(upstream: Any, socks_pair: Any, started: Any,
                                                                     tmp_path: Path) -> None:
    """An `https://` proxy presenting a certificate the gateway does not trust is a proxy that failed its
    handshake: the request fails over to the next proxy and the failure counts against that proxy. It is not
    the upstream's certificate (a 502 `upstream_tls_error` naming the provider, counted as the proxy's success)."""
    fake, url = upstream
    _, b = socks_pair
    leaf = trustme.CA().issue_cert("127.0.0.1")  # a CA the gateway does not trust
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    with PProxy("https", tls_files=(str(cert), str(key))) as untrusted:
        cfg = config(url, [{"name": "bad", "url": untrusted.url}, {"name": "b", "url": b.url}], affinity=False,
                     health={"interval_s": 60})
        gw = await started(cfg, fake)
        for _ in range(4):  # round robin: half of them start on the untrusted proxy
            assert (await chat(gw)).choices[0].message.content
            assert fake.last.peer == "127.0.0.3"
    bad = next(p for p in (await admin_egress(gw))["proxies"] if p["name"] == "bad")
    assert bad["requests"].get("connect_error", 0) >= 1 and "ok" not in bad["requests"], bad


async def test_an_unreadable_answer_is_the_upstreams_fault_not_the_proxys(upstream: Any, socks_pair: Any,
                                                                          started: Any) -> None:
    """An upstream 500 whose head aiohttp cannot parse (a header over its 8 KB line limit) came back through
    the tunnel: a 502 `upstream_bad_response` (an unreadable answer), no connection that "broke", and no
    failure of the proxy, which upstream 5xx answers never eject."""
    fake, url = upstream
    a, b = socks_pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], affinity=False,
                              health={"interval_s": 60}), fake)
    fake.status = 500
    fake.error_headers = {"X-Debug": "x" * 9000}
    for _ in range(6):
        with pytest.raises(openai.APIStatusError) as info:
            await chat(gw)
        assert info.value.status_code == 502 and info.value.code == "upstream_bad_response", info.value.body
    pool = await admin_egress(gw)
    assert [(p["state"], p["ejections"], p["consecutive_failures"]) for p in pool["proxies"]] == [("up", 0, 0)] * 2


async def test_each_pool_is_probed_at_its_own_interval(upstream: Any, socks_pair: Any) -> None:
    """`health.interval_s` is per pool: a pool that asks for a probe a minute is not probed as often as a
    neighbour that asks for one every 0.2 s."""
    _, url = upstream
    a, _ = socks_pair
    target = "tcp://" + url.split("//")[1].split("/")[0]
    egress = Egress()
    await egress.configure({
        "fast": PoolSpec("fast", (ProxySpec("f1", a.url),), interval_s=0.2, probe=target),
        "slow": PoolSpec("slow", (ProxySpec("s1", a.url),), interval_s=60, probe=target)})

    def probes(pool: str, name: str) -> float:
        return REGISTRY.get_sample_value("gateway_egress_probes_total",
                                         {"pool": pool, "proxy": name, "result": "ok"}) or 0.0

    fast, slow = probes("fast", "f1"), probes("slow", "s1")
    prober = asyncio.create_task(health.run(egress))
    await asyncio.sleep(1.5)
    prober.cancel()
    await asyncio.gather(prober, return_exceptions=True)
    await egress.close()
    assert probes("fast", "f1") - fast >= 4
    assert probes("slow", "s1") - slow == 1


async def test_fallback_direct_takes_a_request_whose_proxies_all_fail_at_the_proxy(
        upstream: Any, socks_pair: Any, started: Any, log_lines: Any) -> None:
    """With `fallback_direct: true`, a request whose every proxy failed before reaching the upstream goes
    direct in the same request, not only once the health checks ejected them all; an upstream's own error
    through a working proxy never sends the request direct."""
    fake, url = upstream
    a, b = socks_pair
    doc = config_doc(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], affinity=False,
                     fallback_direct=True, health={"interval_s": 60})  # no probe ejects them during the test
    doc["retries"] = {"max_retries": 0}
    gw = await started(parse(yaml.safe_dump(doc), {}), fake)
    fake.status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    assert info.value.status_code == 502
    assert {r.peer for r in fake.requests} <= {"127.0.0.2", "127.0.0.3"}  # the upstream failed: not sent again
    fake.status, fake.allowed_peers = 200, None
    a.stop()
    b.stop()
    went_direct = REGISTRY.get_sample_value("gateway_egress_direct_total", {"pool": "p"}) or 0.0
    done = await chat(gw)
    assert done.choices[0].message.content
    assert fake.last.peer == "127.0.0.1"  # left directly
    assert REGISTRY.get_sample_value("gateway_egress_direct_total", {"pool": "p"}) == went_direct + 1
    proxies = {p["name"]: p for p in (await admin_egress(gw))["proxies"]}
    assert all(p["requests"].get("connect_error", 0) == 1 for p in proxies.values()), proxies
    line = [x for x in log_lines() if x.get("event") == "request"][-1]
    assert line["egress"] == "direct" and line["status"] == 200
    await gw.app[RUNTIME].settlements.drain(5)
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, done.id)
    assert record is not None and record["egress"] == "direct"


async def test_a_deadline_running_out_mid_connect_is_not_the_proxys_failure(upstream: Any, socks_pair: Any,
                                                                           started: Any) -> None:
    """A fallback whose request deadline (`retries.deadline_s`) ends while its proxy is still connecting
    gets a 504 at the deadline; the proxy, whose own connect timeout had not run out, is not blamed (nor
    is the next proxy, which had no time at all)."""
    fake, url = upstream
    _, b = socks_pair
    with BlackHole() as hole:
        doc = config_doc(url, [{"name": "hole", "url": f"socks5://127.0.0.1:{hole.port}"}, {"name": "b", "url": b.url}],
                         affinity=False, health={"interval_s": 60, "timeout_s": 30, "eject_after_failures": 1},
                         max_ejected_share=1.0)
        doc["providers"]["viapool"]["timeouts"]["connect_s"] = 5
        doc["providers"]["direct"]["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"  # refused at once
        doc["models"]["direct/gpt"]["fallbacks"] = ["viapool/gpt"]
        doc["retries"] = {"max_retries": 0, "deadline_s": 0.5}
        gw = await started(parse(yaml.safe_dump(doc), {}), fake)
        gw.app[RUNTIME].egress.pools["p"]._turn = itertools.count(0)  # round robin: the black hole first
        started_at = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await chat(gw, "direct/gpt")
        assert time.monotonic() - started_at < 2  # the deadline, not the proxy's 5 s connect timeout
        assert info.value.status_code == 504 and info.value.code == "upstream_timeout", info.value.body
        pool = await admin_egress(gw)  # the start-up probe of the black hole is still waiting
    assert [(p["name"], p["state"], p["consecutive_failures"], p["requests"]) for p in pool["proxies"]] == [
        ("hole", "up", 0, {}), ("b", "up", 0, {})]


async def test_a_flapping_proxy_waits_longer_each_time_it_is_readmitted(upstream: Any, socks_pair: Any) -> None:
    """A proxy that passes its probes but fails the requests (it cannot reach the provider) is not put back
    at its first good probe each time: every ejection soon after a readmission doubles the good probes it needs."""
    _, url = upstream
    a, _ = socks_pair
    target = "tcp://" + url.split("//")[1].split("/")[0]  # the probe's destination is reachable ...
    egress = Egress()
    await egress.configure({"p": PoolSpec("p", (ProxySpec("a", a.url),), interval_s=0.05, probe=target,
                                          eject_after_failures=1, restore_after_successes=1, max_ejected_share=1.0)})
    pool = egress.pools["p"]
    state = pool.states[0]
    refused = UpstreamRequest("POST", f"http://127.0.0.1:{closed_port()}/v1/chat/completions", {}, b"{}", False)
    needed = []
    try:
        for _ in range(4):
            with pytest.raises(GatewayError):  # ... the provider is not: the proxy refuses the tunnel
                await open_upstream(egress, "p", None, frozenset(), refused, 1, 1, "viapool")
            assert not state.up
            probes = 0
            while not state.up:
                await asyncio.sleep(max(state.next_probe_at - time.monotonic(), 0))
                assert await health.probe_once(egress, pool, state)
                probes += 1
            needed.append(probes)
    finally:
        await egress.close()
    assert needed == [1, 2, 4, 8]
    assert state.ejections == 4


@pytest.mark.parametrize("probe", ["tcp", "http"])
async def test_probes_are_not_in_the_request_connect_histogram(probe: str, upstream: Any, socks_pair: Any) -> None:
    """`gateway_egress_connect_seconds` is what requests wait to connect; probes (counted by
    `gateway_egress_probes_total`) must not skew it, while a request's new connection still counts."""
    _, url = upstream
    a, _ = socks_pair
    host = url.split("//")[1].split("/")[0]
    target = f"tcp://{host}" if probe == "tcp" else f"http://{host}/v1/models"
    egress = Egress()
    await egress.configure({"hp": PoolSpec("hp", (ProxySpec(probe, a.url),), probe=target)})
    labels = {"pool": "hp", "proxy": probe}

    def connects() -> float:
        return REGISTRY.get_sample_value("gateway_egress_connect_seconds_count", labels) or 0.0

    req = UpstreamRequest("POST", url + "/chat/completions",  # not kept alive: the http probe opens its own
                          {"Authorization": "Bearer sk-test-000000000000", "Connection": "close"},
                          json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode(), False)
    try:
        before = connects()
        resp, _ = await open_upstream(egress, "hp", None, frozenset(), req, 1, 5, "viapool")
        resp.close()
        assert connects() == before + 1  # a request's new connection counts
        state = egress.pools["hp"].states[0]
        state.latency_s = None
        for _ in range(3):
            await health.check_all_once(egress)
        assert REGISTRY.get_sample_value("gateway_egress_probes_total", {**labels, "result": "ok"}) == 3
        assert connects() == before + 1  # the probes' do not
        assert state.latency_s is not None  # though probes still feed least_latency
    finally:
        await egress.close()


class Gate:
    """A TCP forwarder in front of a real proxy that can stop taking new connections while the ones it
    relays go on (a proxy at its connection limit, or one whose new logins fail): the network, not a fake proxy."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def close_door(self) -> None:
        assert self.server is not None
        self.server.close()  # the listening socket only: relays in progress carry on

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except ConnectionError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_an_http_probe_opens_its_own_tunnel(upstream: Any, socks_pair: Any) -> None:
    """An `http(s)://` probe went out on the proxy's pooled session, so with a kept-alive tunnel to the probe's
    host it reused that and passed while the proxy took no new connection: every request that needed one
    failed, and the probes kept the proxy in service."""
    _, url = upstream
    a, _ = socks_pair
    gate = Gate(a.port)
    await gate.start()
    host = url.split("//")[1].split("/")[0]
    spec = ProxySpec("gated", a.url_for().replace(f":{a.port}", f":{gate.port}"))
    egress = Egress()
    await egress.configure({"g": PoolSpec("g", (spec,), probe=f"http://{host}/v1/models")})
    req = UpstreamRequest("POST", url + "/chat/completions", {"Authorization": "Bearer sk-test-000000000000"},
                          json.dumps({"model": "gpt-4o", "messages": MESSAGES}).encode(), False)
    try:
        resp, _ = await open_upstream(egress, "g", None, frozenset(), req, 1, 5, "viagate")
        await resp.read()  # the tunnel stays in the session's pool, kept alive
        resp.release()
        pool = egress.pools["g"]
        assert await health.probe_once(egress, pool, pool.states[0])  # the door is open: a new tunnel passes
        gate.close_door()
        assert not await health.probe_once(egress, pool, pool.states[0])
    finally:
        await egress.close()
