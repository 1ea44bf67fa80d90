"""What egress tells the operator: one log line per ejection, restoration and pool outage (never one per request),
and a `Retry-After` on every 503 `egress_unavailable`: when the pool probes its way out again, or 1 s while proxies
that failed the request are still in service.

Real SOCKS proxies (tests/proxies.py) between the gateway and a fake upstream, the openai SDK as the client,
the gateway's own JSON lines as an operator's journal holds them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import secret_audit_plugin
import yaml
from fakes.openai_upstream import FakeOpenAI
from harness import GatewayProcess, closed_port, gateway_config_text
from proxies import BlackHole, Microsocks
from test_egress_e2e import _wait_state, admin_egress, chat, config

PASSWORD = "egress-l0g-s3cret-pw"
EJECTED, RESTORED = "egress proxy ejected", "egress proxy restored"
POOL_OUT, POOL_BACK = "egress pool has no proxy in service", "egress pool back in service"


@pytest.fixture(autouse=True)
def _audited() -> None:
    secret_audit_plugin.register(PASSWORD)


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    from fakes.openai_upstream import make_app

    fake = FakeOpenAI()
    server = await aiohttp_server(make_app(fake), host="127.0.0.1")
    yield fake, str(server.make_url("/v1"))


@pytest.fixture
def pair() -> Iterator[tuple[Microsocks, Microsocks]]:
    with Microsocks(user="u", password=PASSWORD) as a, Microsocks(user="u", password=PASSWORD) as b:
        yield a, b


def events(lines: list[dict[str, Any]], event: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in lines if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]


def no_secret(lines: list[dict[str, Any]], *proxies: Any) -> None:
    """Neither the password nor the proxy's address (its URL's host:port) in any egress line."""
    text = json.dumps([e for e in lines if e["event"].startswith("egress")])
    assert PASSWORD not in text
    for proxy in proxies:
        assert f"127.0.0.1:{proxy.port}" not in text and "socks5" not in text


@pytest.mark.parametrize(("kind", "outcome"), [("stopped", "connect_error"), ("black_hole", "timeout"),
                                               ("rotated_password", "auth_error")])
async def test_a_proxy_the_probes_eject_logs_it_once_with_why(kind: str, outcome: str, upstream: Any, pair: Any,
                                                              started: Any, log_lines: Any) -> None:
    fake, url = upstream
    a, b = pair
    with BlackHole() as hole:
        first = {"stopped": a.url, "black_hole": f"socks5h://u:{PASSWORD}@127.0.0.1:{hole.port}",
                 "rotated_password": a.url_for(password="rotated-" + PASSWORD)}[kind]
        if kind == "stopped":
            a.stop()
        gw = await started(config(url, [{"name": "a", "url": first}, {"name": "b", "url": b.url}],
                                  health={"timeout_s": 0.5}), fake)
        await _wait_state(gw, "a", "ejected", timeout=5)
        for _ in range(4):  # requests and more failed probes of the ejected proxy write no line
            await chat(gw)
            await asyncio.sleep(0.3)
        if kind == "stopped":
            a.start()
            await _wait_state(gw, "a", "up", timeout=10)
            await asyncio.sleep(0.2)
    lines = log_lines()
    ejected = events(lines, EJECTED, proxy="a")
    assert len(ejected) == 1, ejected
    assert ejected[0] | {"timestamp": None, "pid": None, "next_probe_in_s": None} == {
        "event": EJECTED, "level": "warning", "pool": "p", "proxy": "a", "why": "probes", "outcome": outcome,
        "consecutive_failures": 2, "ejections": 1, "probes_to_restore": 1, "next_probe_in_s": None,
        "timestamp": None, "pid": None}
    assert 0 < ejected[0]["next_probe_in_s"] <= 0.3
    restored = events(lines, RESTORED, proxy="a")
    if kind == "stopped":
        assert len(restored) == 1 and restored[0]["level"] == "info" and restored[0]["pool"] == "p", restored
        assert restored[0]["good_probes"] == 1 and restored[0]["ejected_s"] > 0
    else:
        assert restored == []
    assert events(lines, EJECTED, proxy="b") == [] and events(lines, POOL_OUT) == []  # b carried the requests
    no_secret(lines, a, b, hole)


async def test_a_proxy_live_failures_eject_logs_it_once(upstream: Any, pair: Any, started: Any,
                                                        log_lines: Any) -> None:
    fake, url = upstream
    a, b = pair
    quiet = {"interval_s": 60}  # the startup round only: what ejects `a` is the requests
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}], affinity=False,
                              health=quiet), fake)
    await chat(gw)
    await chat(gw)  # both proxies carried a request: the startup probes are behind us
    a.stop()
    for _ in range(12):
        await chat(gw)  # every one answered: failover to b
    lines = log_lines()
    ejected = events(lines, EJECTED, proxy="a")
    assert len(ejected) == 1, ejected
    assert (ejected[0]["why"], ejected[0]["outcome"], ejected[0]["consecutive_failures"]) == (
        "live_failures", "connect_error", 2)
    assert events(lines, POOL_OUT) == []
    no_secret(lines, a, b)


async def test_a_pool_with_no_way_out_says_so_once_and_when_to_retry(upstream: Any, pair: Any, started: Any,
                                                                     log_lines: Any) -> None:
    fake, url = upstream
    a, b = pair
    interval = 2.0
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}],
                              health={"interval_s": interval, "eject_after_failures": 1}), fake)
    a.stop()
    b.stop()
    await _wait_state(gw, "a", "ejected", timeout=2 * interval + 2)
    await _wait_state(gw, "b", "ejected", timeout=2 * interval + 2)
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    assert info.value.status_code == 503 and info.value.code == "egress_unavailable"
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= interval  # the first probe of an ejected proxy comes one interval after its ejection
    for _ in range(3):  # a pool that stays out writes no more lines, however many requests it refuses
        with pytest.raises(openai.APIStatusError):
            await chat(gw)
    a.start()
    await _wait_state(gw, "a", "up", timeout=4 * interval + 2)  # the back-off may have doubled once or twice
    assert (await chat(gw)).choices[0].message.content
    await asyncio.sleep(0.2)
    lines = log_lines()
    out = events(lines, POOL_OUT, pool="p")
    assert len(out) == 1 and out[0]["level"] == "warning", out
    assert out[0]["proxies"] == 2 and out[0]["fallback_direct"] is False
    back = events(lines, POOL_BACK, pool="p")
    assert len(back) == 1 and back[0]["level"] == "info" and back[0]["proxy"] == "a", back
    assert back[0]["out_s"] > 0
    assert lines.index(out[0]) < lines.index(back[0])
    no_secret(lines, a, b)


async def test_proxies_still_in_service_that_all_failed_a_request_ask_for_a_short_retry(
        upstream: Any, pair: Any, started: Any) -> None:
    """Every proxy tried failed to connect, none failed often enough to be ejected: the next request may well
    pass (a proxy's blip, a restart), so the 503 says `Retry-After: 1`, which the SDK waits for, rather than
    nothing (the SDK's own first wait is under half a second) or an ejected pool's next probe."""
    fake, url = upstream
    a, b = pair
    gw = await started(config(url, [{"name": "a", "url": a.url}, {"name": "b", "url": b.url}],
                              health={"interval_s": 60, "eject_after_failures": 5}), fake)
    a.stop()
    b.stop()
    with pytest.raises(openai.APIStatusError) as info:
        await chat(gw)
    assert info.value.status_code == 503 and info.value.code == "egress_unavailable", info.value.body
    assert info.value.response.headers.get("retry-after") == "1"
    assert {p["name"]: p["state"] for p in (await admin_egress(gw))["proxies"]} == {"a": "up", "b": "up"}

    started_at = time.monotonic()
    retrying = asyncio.ensure_future(gw.openai(max_retries=1).chat.completions.create(
        model="viapool/gpt", messages=[{"role": "user", "content": "hi"}]))
    await asyncio.sleep(0.3)  # the first attempt was refused; the SDK waits out the Retry-After
    a.start()
    assert (await retrying).choices[0].message.content
    assert time.monotonic() - started_at >= 1.0


def test_worker_processes_write_egress_lines_as_json_through_the_redactor(
        tmp_path: Path, redis_url: str, fake_openai: tuple[Any, str]) -> None:
    """`egress` logs with structlog's get_logger, never through `gateway`: the lines of `serve --workers N`
    processes come out as the gateway's own JSON (pid, level, timestamp), each worker's its own."""
    doc = yaml.safe_load(gateway_config_text(fake_openai[1], redis_url, f"egl{uuid.uuid4().hex}:"))
    dead = f"socks5h://u:{PASSWORD}@127.0.0.1:{closed_port()}"
    doc["egress"] = {"pools": {"p": {"proxies": [{"name": "gone", "url": dead}], "fallback_direct": True,
                                     "health": {"interval_s": 0.3, "timeout_s": 0.5, "eject_after_failures": 2}}}}
    doc["providers"]["fake"]["egress"] = "p"
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    gw = GatewayProcess(path)
    gw.extra_args = ["--workers", "2"]
    with gw:
        deadline = time.monotonic() + 20
        while len(events(gw.log(), EJECTED)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        lines = gw.log()
    workers = {e["pid"] for e in events(lines, "worker started")}
    ejected = events(lines, EJECTED, pool="p", proxy="gone")
    assert len(workers) == 2 and {e["pid"] for e in ejected} == workers and len(ejected) == 2, ejected
    assert all(e["level"] == "warning" and e["timestamp"].endswith("Z") for e in ejected)
    assert {e["pid"] for e in events(lines, POOL_OUT, pool="p", fallback_direct=True)} == workers
    assert PASSWORD not in gw.stdout() + gw.stderr()
