"""The measurements beside the table: paired rounds, SOCKS5 tunnels, open streams, `--workers 2`, Redis
round trips and the py-spy profile."""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import procs
from procs import quiet
from rig import BENCH, CHAT, CHAT_ONLY, GATEWAY_ENV, PROMPT, PY, RESULTS, ROOT, Bench, Variant, post, wrk

# --- the extra measurements ------------------------------------------------------------------------


def paired(bench: Bench, reference: str, variant: Variant, concurrency: int, rounds: int,
           seconds: int, target: str = "gateway") -> dict[str, Any]:
    """The reference and the target (the gateway; the pass-through at c=1 for the floor under the latency
    target; `floor.py`, the least a metered gateway runs) measured alternately, `rounds` times, with the same
    body and concurrency. The target's figures keep the `gateway_*` names whatever it is: `report.py` and earlier
    results read them by those names.

    On a shared VM the machine's speed drifts by tens of percent between runs minutes apart (the same commit
    measured four times gave 499-900 us of CPU per request); a ratio of two runs seconds apart, taken as the
    median over several rounds, is what such drift leaves standing.
    """
    body = bench.bodies[variant.name]
    pairs = []
    for _ in range(rounds):
        quiet(probe_s=0.25)
        ref = wrk(bench.servers[reference].port, body, bench.key, concurrency, bench.settings.threads, seconds)
        gw = wrk(bench.servers[target].port, body, bench.key, concurrency, bench.settings.threads, seconds,
                 CHAT if target in CHAT_ONLY else variant.path)
        pairs.append({"reference_rps": ref["requests"] / (ref["duration_us"] / 1e6),
                      "gateway_rps": gw["requests"] / (gw["duration_us"] / 1e6),
                      "reference_p50_ms": ref["latency_us"]["p50"] / 1000,
                      "gateway_p50_ms": gw["latency_us"]["p50"] / 1000,
                      "reference_p99_ms": ref["latency_us"]["p99"] / 1000,
                      "gateway_p99_ms": gw["latency_us"]["p99"] / 1000,
                      "errors": ref["non2xx"] + gw["non2xx"]})
    ratios = sorted(p["gateway_rps"] / p["reference_rps"] for p in pairs)
    added_p50 = sorted(p["gateway_p50_ms"] - p["reference_p50_ms"] for p in pairs)
    added_p99 = sorted(p["gateway_p99_ms"] - p["reference_p99_ms"] for p in pairs)
    return {"reference": reference, "target": target, "variant": variant.name, "concurrency": concurrency,
            "rounds": pairs,
            "median_ratio": round(statistics.median(ratios), 3),
            "median_added_p50_ms": round(statistics.median(added_p50), 3),
            "median_added_p99_ms": round(statistics.median(added_p99), 3)}

def store_round_trip(bench: Bench) -> dict[str, Any]:
    """One admission's round trip to the benchmark's Redis, timed by `store_rtt.py` in a process of its own."""
    out = subprocess.run([PY, str(BENCH / "store_rtt.py"), "--port", str(bench.servers["redis"].port)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def count_tunnels(bench: Bench, n: int) -> dict[str, Any]:
    """`n` sequential requests over one keep-alive client connection; tunnels the proxy opened meanwhile."""
    server = bench.servers["gateway_socks"]
    body = bench.bodies["json"].read_bytes()
    time.sleep(0.3)
    before = bench.tunnels()
    conn = http.client.HTTPConnection(procs.HOST, server.port, timeout=30)
    bad = 0
    started = time.monotonic()
    try:
        for _ in range(n):
            status, _ = post(server.port, body, bench.key, conn)
            bad += status != 200
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    time.sleep(0.3)
    return {"requests": n, "non200": bad, "tunnels": bench.tunnels() - before, "elapsed_s": round(elapsed, 2),
            "note": "fresh gateway (no pooled tunnel yet); health probes every 3600 s, so none in the window"}


def open_streams(bench: Bench, config: Path, models: list[str], label: str) -> dict[str, Any]:
    """A fresh gateway process holding `streams` slow streams: RSS and descriptors before, during, after."""
    s = bench.settings
    name = f"gateway_streams_{label}"
    server = bench.start_gateway(name, config)
    pid = server.pid
    # one request first, so lazily made things (sessions, Redis connections) exist in the baseline
    post(server.port, json.dumps({"model": models[0], "stream": True, "messages": PROMPT}).encode(), bench.key)
    time.sleep(0.5)
    peers = {"redis": {bench.servers["redis"].port},
             "upstream": {srv.port for name, srv in bench.servers.items() if name.startswith("upstream")}}

    def classes() -> dict[str, int]:
        return procs.fd_classes(pid, server.port, peers)

    before = {"rss_mb": procs.rss_kb([pid]) / 1024, "fds": procs.fd_count([pid]), "classes": classes()}
    procs.reset_hwm([pid])
    samples: list[tuple[float, float, int, dict[str, int]]] = []
    stop = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            fds = classes()
            samples.append((time.monotonic() - t0, procs.rss_kb([pid]) / 1024, sum(fds.values()), fds))
            stop.wait(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cmd = [PY, str(BENCH / "open_streams.py"), "--url", f"http://127.0.0.1:{server.port}{CHAT}",
           "--key", bench.key, "--models", ",".join(models), "--streams", str(s.open_streams),
           "--timeout", str(s.slow_stream_s + 120)]
    client = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=s.slow_stream_s + 180)
    closed_at = time.monotonic()
    line = next((ln for ln in client.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        stop.set()
        raise RuntimeError(f"open_streams printed no result:\n{client.stdout[-2000:]}\n{client.stderr[-2000:]}")
    result = json.loads(line.removeprefix("RESULT "))
    # descriptors after close: immediately, then until back at the baseline (idle pooled upstream
    # connections are closed by aiohttp's keep-alive timeout, 15 s by default)
    after_now = classes()
    back_after: float | None = None
    deadline = closed_at + 30

    def settled(fds: dict[str, int]) -> bool:
        """Client and upstream connections back to the baseline (Redis pool connections are kept by
        redis-py, bounded by the store's pool size, and reported separately)."""
        return all(fds.get(k, 0) <= before["classes"].get(k, 0) for k in ("clients", "upstream", "other tcp"))

    while time.monotonic() < deadline:
        if settled(classes()):
            back_after = time.monotonic() - closed_at
            break
        time.sleep(0.25)
    stop.set()
    sampler.join()
    after = classes()
    peak_sample = max(samples, key=lambda x: x[2]) if samples else (0.0, 0.0, 0, {})
    out = {
        "label": label, "models": models, "client": result,
        "rss_mb_before": round(before["rss_mb"], 1),
        "rss_mb_during_max": round(max((x[1] for x in samples), default=0.0), 1),
        "peak_rss_mb": round(procs.hwm_kb([pid]) / 1024, 1),
        "fds_before": before["fds"], "fds_during_max": peak_sample[2],
        "fds_right_after_close": sum(after_now.values()), "fds_after": sum(after.values()),
        "fd_classes": {"before": before["classes"], "peak": peak_sample[3], "right_after_close": after_now,
                       "after": after},
        "fds_back_to_baseline_after_s": None if back_after is None else round(back_after, 1),
    }
    server.stop()
    del bench.servers[name]
    return out


def run_workers_case(bench: Bench, config: Path) -> dict[str, Any]:
    """Start `serve --workers 2`; a refusal (not implemented yet) is recorded, not fatal."""
    port = procs.free_port()
    cmd = [PY, "-m", "gateway", "serve", "--config", str(config), "--port", str(port), "--workers", "2"]
    server = procs.start("gateway_w2", cmd, port, bench.dir, env=GATEWAY_ENV, cwd=ROOT)
    try:
        procs.wait_http_ok(server, "/readyz", timeout=30)
    except (RuntimeError, TimeoutError) as exc:
        server.stop()
        tail = server.err_tail(5).strip() or str(exc)
        return {"status": f"skipped: {tail}"}
    bench.servers["gateway_w2"] = server
    time.sleep(1.0)  # let every worker finish starting
    return {"status": "ok", "processes": len(server.pids())}


def redis_round_trips(bench: Bench, target: str, variant: Variant, n: int) -> dict[str, Any]:
    """Commands the gateway itself sends to Redis per request (MONITOR; those run inside scripts excluded)."""
    import redis

    port = bench.servers["redis"].port
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()

    def watch() -> None:
        client = redis.Redis(port=port)
        with client.monitor() as monitor:
            for cmd in monitor.listen():
                text = str(cmd.get("command", ""))
                if text == "ECHO bench-monitor-start":
                    ready.set()
                elif text == "ECHO bench-monitor-stop":
                    break
                elif ready.is_set() and cmd.get("client_type") != "lua" and cmd.get("client_address") != "lua":
                    seen.append(text.split(" ", 1)[0].lower())
        client.close()
        done.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    control = redis.Redis(port=port)
    while not ready.is_set():
        control.echo("bench-monitor-start")
        ready.wait(0.1)
    server = bench.servers[target]
    body = bench.bodies[variant.name].read_bytes()
    conn = http.client.HTTPConnection(procs.HOST, server.port, timeout=30)
    try:
        bad = sum(post(server.port, body, bench.key, conn)[0] != 200 for _ in range(n))
    finally:
        conn.close()
    time.sleep(0.2)  # settlements are awaited before the answer, but be generous
    control.echo("bench-monitor-stop")
    done.wait(10)
    control.close()
    counts: dict[str, int] = {}
    for name in seen:
        counts[name] = counts.get(name, 0) + 1
    return {"target": target, "variant": variant.name, "requests": n, "non200": bad,
            "per_request": round(len(seen) / n, 3), "commands": counts,
            "note": "sequential requests; key lookups (GET + HGETALL) recur once per billing.key_cache_s"}


# --- profile ----------------------------------------------------------------------------------------

def profile(bench: Bench, seconds: int) -> dict[str, Any]:
    """py-spy the gateway (non-streamed, c=16): a flame graph and a raw stack file summarised by report."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    server = bench.servers["gateway"]
    body = bench.bodies["json"]
    outputs = {"flamegraph": RESULTS / "profile.svg", "raw": RESULTS / "profile.raw.txt"}
    measured = {}
    for fmt, path in outputs.items():
        load = threading.Thread(target=lambda f=fmt: measured.setdefault(f, wrk(  # type: ignore[misc]
            server.port, body, bench.key, 16, bench.settings.threads, seconds + 2)))
        load.start()
        time.sleep(1)
        out = subprocess.run([spy, "record", "--pid", str(server.pid), "--rate", "250", "--duration", str(seconds),
                              "--format", fmt, "--output", str(path)],
                             capture_output=True, text=True, check=False)
        load.join()
        if out.returncode != 0:
            return {"error": f"py-spy failed ({out.returncode}): {out.stderr.strip()[-800:]}"}
    import profile_stacks

    summary = profile_stacks.summarise(outputs["raw"].read_text())
    (RESULTS / "profile-top.txt").write_text(profile_stacks.render(summary))
    return {"svg": str(outputs["flamegraph"].relative_to(ROOT)), "raw": str(outputs["raw"].relative_to(ROOT)),
            "top": str((RESULTS / "profile-top.txt").relative_to(ROOT)), "rps_while_profiled":
            round(measured.get("raw", {}).get("requests", 0) / (seconds + 2), 1), "summary": summary}
