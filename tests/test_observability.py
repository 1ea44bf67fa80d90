"""What operators observe (metrics, logs) where the other tests do not reach: workers that die, reloads,
shutdown, store outages outside the request path."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import GatewayProcess, funded_key, gateway_config_text
from prometheus_client import multiprocess

MESSAGES = [{"role": "user", "content": "hi"}]


def _in_worker(multiproc_dir: Path, code: str) -> str:
    """Run `code` in a fresh process sharing the supervisor's PROMETHEUS_MULTIPROC_DIR (as a worker does)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout


def _sample(text: str, name: str, **labels: str) -> list[float]:
    found = []
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(got.get(k) == v for k, v in labels.items()):
            found.append(float(line.rsplit(" ", 1)[1]))
    return found


def test_a_dead_workers_ejected_proxy_does_not_stay_down_for_ever(tmp_path: Path) -> None:
    """Worker A ejected proxy p/a, then crashed; the supervisor marks it dead (as Supervisor._replace_dead
    does) and its replacement B finds the proxy healthy. /metrics must say the proxy is up: with
    multiprocess_mode="min" the dead worker's 0 is kept for ever (mark_process_dead only deletes live*
    files), so LLMGatewayEgressPoolDown / ...ProxyEjected fire until the next restart."""
    mp = tmp_path / "metrics"
    mp.mkdir()
    dead_pid = int(_in_worker(mp, """
        import os
        from egress import metrics
        metrics.UP.labels("p", "a").set(0)
        print(os.getpid())
    """))
    multiprocess.mark_process_dead(dead_pid, str(mp))
    text = _in_worker(mp, """
        import sys
        from egress import metrics
        from gateway import metrics as gm
        metrics.UP.labels("p", "a").set(1)
        sys.stdout.write(gm.render().decode())
    """)
    assert _sample(text, "gateway_egress_proxy_up", pool="p", proxy="a") == [1.0]


def test_a_dead_workers_config_age_does_not_outlive_it(tmp_path: Path) -> None:
    """gateway_config_age_seconds (multiprocess_mode="max"): a crashed worker's last age stays in the max
    for ever, so after a reload the gauge never drops back (Grafana's "config age" panel, max(...))."""
    mp = tmp_path / "metrics"
    mp.mkdir()
    dead_pid = int(_in_worker(mp, """
        import os
        from gateway import metrics
        metrics.CONFIG_AGE.set(86400)  # its config was a day old when it crashed
        print(os.getpid())
    """))
    multiprocess.mark_process_dead(dead_pid, str(mp))
    text = _in_worker(mp, """
        import sys
        from gateway import metrics
        metrics.CONFIG_AGE.set(5)  # the replacement, freshly (re)loaded
        sys.stdout.write(metrics.render().decode())
    """)
    assert _sample(text, "gateway_config_age_seconds") == [5.0]


async def test_a_stream_cut_by_the_shutdown_grace_is_logged_and_counted_as_499(
        tmp_path: Path, redis_url: str, fake_openai: tuple[Any, str]) -> None:
    """A stream still running when server.shutdown_grace_s ends is cancelled: the generation record says
    499/cancelled (pipeline's CancelledError branch), but request_context's finally still holds its initial
    `status = 500`, so the access line says 500 and gateway_requests_total counts a 5xx (paging
    LLMGatewayHighErrorRatio on every deploy with long streams)."""
    fake = fake_openai[0]
    fake.delay_between_chunks_s = 0.4  # ~8 s of stream, far past the 1 s grace
    prefix = f"obs{uuid.uuid4().hex}:"
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(fake_openai[1], redis_url, prefix, shutdown_grace_s=1))
    key, _ = await funded_key(redis_url, prefix)
    with GatewayProcess(path) as gw:
        async with aiohttp.ClientSession() as http, http.post(
                gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                json={"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}) as r:
            await r.content.readuntil(b"\n\n")
            gw.signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientError):
                await r.read()
        await asyncio.to_thread(gw.proc.wait, 20)  # type: ignore[union-attr]
        lines = [e for e in gw.log() if e.get("event") == "request"]
    assert len(lines) == 1, gw.stdout()[-3000:]
    assert lines[0]["status"] == 499, lines[0]


async def test_store_failures_of_credits_and_generation_are_counted(make_gateway: Any) -> None:
    """gateway_store_errors_total counts failed store operations (alert LLMGatewayStoreErrors), but a
    /v1/credits or /v1/generation that gets 503 store_unavailable counts nothing (nor do admin routes)."""
    from prometheus_client import REGISTRY
    from redis_server import RedisServer

    def errors() -> float:
        return sum(s.value for m in REGISTRY.collect() if m.name == "gateway_store_errors"
                   for s in m.samples if s.name == "gateway_store_errors_total")

    with RedisServer() as redis:
        gw = await make_gateway(store_url=redis.url, prefix=f"t{uuid.uuid4().hex}:", billing={"key_cache_s": 60})
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.url + "/v1/credits", headers=gw.auth()) as r:
                assert r.status == 200  # the key is now in the auth cache
            redis.stop()
            before = errors()
            async with http.get(gw.url + "/v1/credits", headers=gw.auth()) as r:
                assert r.status == 503 and (await r.json())["error"]["code"] == "store_unavailable"
            async with http.get(gw.url + "/v1/generation?id=gen-1-x", headers=gw.auth()) as r:
                assert r.status == 503
    assert errors() - before == 2



def test_a_proxy_removed_by_a_reload_is_not_left_down_with_workers(tmp_path: Path) -> None:
    """egress.metrics.forget() (a reload removed an ejected proxy) relies on .remove(), which
    prometheus-client does not implement in multiprocess mode (it only warns): with --workers the
    series stays on /metrics at 0 until a restart, so LLMGatewayEgressProxyEjected keeps firing although
    its own runbook says "remove it from the config and reload"."""
    mp = tmp_path / "metrics"
    mp.mkdir()
    text = _in_worker(mp, """
        import sys, warnings
        warnings.simplefilter("ignore")
        from egress import metrics
        from gateway import metrics as gm
        metrics.UP.labels("p", "a").set(0)   # ejected
        metrics.forget("p", "a")             # then removed from the config by a reload
        sys.stdout.write(gm.render().decode())
    """)
    assert 0.0 not in _sample(text, "gateway_egress_proxy_up", pool="p", proxy="a")
