#!/usr/bin/env python3
"""The benchmark of issue 6: what the gateway adds to every call, next to a bare aiohttp pass-through.

    .venv/bin/python bench/run.py            # full run (~5 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # smoke run (~1 minute)
    .venv/bin/python bench/run.py --profile  # also py-spy the gateway's non-streamed path at c=16

Starts on 127.0.0.1 (free ports): redis-server (no persistence), the fake upstream (bench/fake_upstream.py),
the bare pass-through (bench/passthrough.py), the gateway (`python -m gateway serve`, Redis store, billing
and limits on, one funded key made with `keys create --json`), a microsocks SOCKS5 proxy with a second
gateway whose provider leaves through it, and `serve --workers 2`. Drives each with wrk + bench/post.lua
at concurrency 1, 16 and 64, then measures one gateway holding 1,000 open streams and counts the SOCKS5
tunnels of 1,000 sequential requests. Prints one table; writes bench/results/<timestamp>.json and
bench/results/latest.json (compare two with bench/compare.py).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import procs
import report

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable
CHAT = "/v1/chat/completions"
GATEWAY_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # as deploy/systemd's unit sets them
NOISY_PCT = 25.0  # a run during which other processes used more than this % of a core is marked noisy
MICROSOCKS_TUNNEL = re.compile(r"^client\[\d+\] \S+: connected to (\S+)$", re.M)  # as tests/proxies.py
PROMPT = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly and precisely."},
    {"role": "user", "content": "Summarise in two sentences why a gateway should add almost no latency "
                                "to each request it relays to a language model provider."},
]


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    stream: bool
    chunks: int  # content chunks per answer (0: not streamed)


VARIANTS = {
    "json": Variant("json", "bench-20", False, 0),
    "s20": Variant("s20", "bench-20", True, 20),
    "s1000": Variant("s1000", "bench-1000", True, 1000),
}


@dataclass(frozen=True)
class Case:
    id: str
    target: str  # which server: upstream | passthrough | gateway | gateway_socks | gateway_w2
    variants: tuple[str, ...]
    what: str


CASES = (
    Case("1-direct", "upstream", ("json", "s20", "s1000"), "wrk -> fake upstream"),
    Case("2-bare", "passthrough", ("json", "s20", "s1000"), "wrk -> bare aiohttp pass-through -> upstream"),
    Case("3-gw", "gateway", ("json",), "gateway, non-streamed, billing + limits on (Redis)"),
    Case("4-gw", "gateway", ("s20",), "gateway, streamed, 20 chunks"),
    Case("5-gw", "gateway", ("s1000",), "gateway, streamed, 1,000 chunks"),
    Case("6-gw-socks5", "gateway_socks", ("json",), "gateway, non-streamed, upstream through microsocks"),
    Case("7-gw-workers2", "gateway_w2", ("json",), "gateway --workers 2, non-streamed"),
)


@dataclass(frozen=True)
class Settings:
    quick: bool
    duration_s: int
    warmup_s: int
    warmup_every_run: bool
    concurrency: tuple[int, ...]
    threads: int
    open_streams: int
    slow_stream_s: int
    sequential_requests: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            return cls(True, args.duration or 1, 1, False, tuple(args.concurrency), args.threads,
                       args.streams or 200, 3, 1000)
        return cls(False, args.duration or 5, 1, True, tuple(args.concurrency), args.threads,
                   args.streams or 1000, 10, 1000)


# --- configs ---------------------------------------------------------------------------------------

def gateway_config(redis_port: int, upstream_ports: list[int], socks_port: int | None = None,
                   slow_models: tuple[str, ...] = ()) -> str:
    """The bench config: Redis store, billing on (prices > 0), limits high enough never to refuse.

    With several upstream ports, provider `bench` uses the first and `benchN` the others (a per-host
    connection cap in the gateway cannot then hide the memory of many open streams).
    """
    egress = "direct"
    pools = "  pools: {}\n"
    if socks_port is not None:
        egress = "socks"
        # probes every hour: the tunnels counted at the proxy are then the requests' own
        pools = (f"  pools:\n    socks:\n      proxies:\n        - {{name: microsocks-1, url: "
                 f"\"socks5://127.0.0.1:{socks_port}\"}}\n"
                 f"      health: {{interval_s: 3600, probe: \"tcp://127.0.0.1:{upstream_ports[0]}\"}}\n")
    providers, models = [], []
    price = "{input_per_mtok: 0.15, output_per_mtok: 0.6}"
    for i, port in enumerate(upstream_ports):
        name = "bench" if i == 0 else f"bench{i}"
        providers.append(f"  {name}: {{kind: openai, base_url: \"http://127.0.0.1:{port}/v1\", "
                         f"api_key: \"sk-bench-upstream-key-0000\", egress: {egress}}}")
        for model in (("bench-20", "bench-1000") if i == 0 else ()) + slow_models:
            alias = model if i == 0 else f"{model}@{i}"
            models.append(f"  {name}/{model}: {{price: {price}, aliases: [\"{alias}\"]}}")
    return (
        "server: {host: 127.0.0.1, port: 8080, log_level: info}\n"
        f"store: {{url: \"redis://127.0.0.1:{redis_port}/0\", prefix: \"bench:\"}}\n"
        f"egress:\n{pools}"
        "providers:\n" + "\n".join(providers) + "\n"
        "limits:\n  default: {rpm: 100000000, rpd: 100000000}\n"
        "models:\n" + "\n".join(models) + "\n"
    )


def body_for(variant: Variant) -> bytes:
    body: dict[str, Any] = {"model": variant.model, "messages": PROMPT}
    if variant.stream:
        body["stream"] = True
    return json.dumps(body).encode()


# --- the environment -------------------------------------------------------------------------------

class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.dir = workdir
        self.servers: dict[str, procs.Server] = {}
        self.key = ""
        self.bodies: dict[str, Path] = {}
        self.notes: list[str] = []
        for name, variant in VARIANTS.items():
            path = workdir / f"body-{name}.json"
            path.write_bytes(body_for(variant))
            self.bodies[name] = path

    # processes
    def start_redis(self) -> None:
        port = procs.free_port()
        server = procs.start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                       "--daemonize", "no", "--dir", str(self.dir)], port, self.dir)
        procs.wait_port(server)
        self.servers["redis"] = server

    def start_upstream(self, name: str = "upstream") -> procs.Server:
        port = procs.free_port()
        server = procs.start(name, [PY, str(BENCH / "fake_upstream.py"), "--port", str(port)], port, self.dir)
        procs.wait_port(server)
        self.servers[name] = server
        return server

    def start_passthrough(self) -> None:
        port = procs.free_port()
        up = self.servers["upstream"].port
        server = procs.start("passthrough", [PY, str(BENCH / "passthrough.py"), "--port", str(port),
                                             "--upstream", f"http://127.0.0.1:{up}"], port, self.dir)
        procs.wait_port(server)
        self.servers["passthrough"] = server

    def start_microsocks(self) -> None:
        port = procs.free_port()
        binary = shutil.which("microsocks") or "microsocks"
        server = procs.start("microsocks", [binary, "-i", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1"],
                             port, self.dir)
        procs.wait_port(server)
        self.servers["microsocks"] = server

    def tunnels(self) -> int:
        return len(MICROSOCKS_TUNNEL.findall(self.servers["microsocks"].err.read_text(errors="replace")))

    def write_config(self, name: str, text: str) -> Path:
        path = self.dir / f"{name}.yaml"
        path.write_text(text)
        return path

    def start_gateway(self, name: str, config: Path, workers: int = 1) -> procs.Server:
        port = procs.free_port()
        cmd = [PY, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        if workers != 1:
            cmd += ["--workers", str(workers)]
        server = procs.start(name, cmd, port, self.dir, env=GATEWAY_ENV, cwd=ROOT)
        self.servers[name] = server
        procs.wait_http_ok(server, "/readyz", timeout=30)
        return server

    def create_key(self, config: Path) -> None:
        out = subprocess.run([PY, "-m", "gateway", "keys", "create", "--config", str(config), "--name", "bench",
                              "--balance", "1000000", "--json"], cwd=ROOT, capture_output=True, text=True,
                             check=False, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"keys create failed ({out.returncode}): {out.stderr.strip()}")
        self.key = json.loads(out.stdout.strip().splitlines()[-1])["key"]

    def redis_stats(self) -> dict[str, int]:
        """Calls per Redis command so far (INFO commandstats)."""
        import redis  # the project's dependency

        client = redis.Redis(port=self.servers["redis"].port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    # checks
    def check(self, target: str, variant: Variant) -> None:
        """One request before measuring: 200, and for streams every chunk and [DONE] arrived."""
        server = self.servers[target]
        status, body = post(server.port, self.bodies[variant.name].read_bytes(), self.key)
        if status != 200:
            raise RuntimeError(f"{target}/{variant.name}: HTTP {status}: {body[:500]!r}")
        if variant.stream:
            events = body.count(b"data: ")
            if b"data: [DONE]" not in body or events < variant.chunks + 1:
                raise RuntimeError(f"{target}/{variant.name}: {events} events, no [DONE]?\n{body[-500:]!r}")
        if target.startswith("gateway") and b'"billing"' not in body:
            raise RuntimeError(f"{target}/{variant.name}: no billing block in the answer: {body[-500:]!r}")


def post(port: int, body: bytes, key: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(procs.HOST, port, timeout=30)
    try:
        conn.request("POST", CHAT, body=body, headers={"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


# --- wrk -------------------------------------------------------------------------------------------

def wrk(port: int, body: Path, key: str, concurrency: int, threads: int, duration_s: int) -> dict[str, Any]:
    cmd = ["wrk", f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", "10s",
           "-s", str(BENCH / "post.lua"), f"http://127.0.0.1:{port}{CHAT}", "--", str(body), key]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration_s + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("BENCH_JSON "))  # type: ignore[no-any-return]


class CpuMeter:
    """CPU used during one run by the measured server, and by processes this benchmark did not start
    (other users of the machine: their load makes a run noisy)."""

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.snap = procs.cpu_ticks()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        snap = procs.cpu_ticks()
        tick = procs.CLK_TCK * wall / 100  # ticks in 1 % of one core

        def delta(pid: int) -> int:
            return snap[pid][1] - self.snap.get(pid, (0, 0))[1]

        mine = procs.tree(snap, os.getpid()) | procs.tree(self.snap, os.getpid())
        other = sum(delta(p) for p in snap if p not in mine)
        return {"server_cpu_pct": round(sum(delta(p) for p in self.server_pids if p in snap) / tick, 1),
                "other_cpu_pct": round(other / tick, 1)}


def quiet(max_wait_s: float = 10.0, threshold_pct: float = 20.0, probe_s: float = 0.5) -> float:
    """Wait (up to `max_wait_s`) until processes the benchmark did not start use under `threshold_pct` of
    a core; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        meter = CpuMeter([])
        time.sleep(probe_s)
        if meter.stop()["other_cpu_pct"] < threshold_pct:
            break
    return round(time.monotonic() - started, 1)


def revive(bench: Bench, target: str, settle_s: float = 0.3) -> str | None:
    """If the server died (or lost a worker) during the last wrk, say how, and bring it back."""
    server = bench.servers[target]
    time.sleep(settle_s)  # a process killed by the hang-ups at the end of a wrk run dies within this
    if server.alive():
        return None
    reason = server.exit_reason()
    server.deaths.append(reason)
    log(f"       !! {target} died ({reason}); restarting it")
    server.restart()
    if target.startswith("gateway"):
        procs.wait_http_ok(server, "/readyz", timeout=30)
    else:
        procs.wait_port(server)
    return reason


def warm_gently(bench: Bench, target: str, variant: Variant, n: int = 200) -> None:
    """Sequential requests over one keep-alive connection that is closed only between answers."""
    server = bench.servers[target]
    conn = http.client.HTTPConnection(procs.HOST, server.port, timeout=30)
    try:
        for _ in range(n):
            post(server.port, bench.bodies[variant.name].read_bytes(), bench.key, conn)
    finally:
        conn.close()


def measure(bench: Bench, case: Case, variant: Variant, concurrency: int, first: bool) -> dict[str, Any]:
    s = bench.settings
    server = bench.servers[case.target]
    body = bench.bodies[variant.name]
    died = []
    if (reason := revive(bench, case.target, settle_s=0)) is not None:
        died.append(f"before the run (after the previous one): {reason}")
    if s.warmup_every_run or first:
        wrk(server.port, body, bench.key, concurrency, s.threads, s.warmup_s)
        if (reason := revive(bench, case.target)) is not None:
            died.append(f"after warm-up: {reason}")
            warm_gently(bench, case.target, variant)  # the fresh process must not be measured cold
    waited = quiet(probe_s=0.25 if s.quick else 0.5)
    if waited > 1:
        log(f"       (waited {waited} s for other processes on this machine to calm down)")
    pids = server.pids()
    hwm_reset = procs.reset_hwm(pids)
    redis_before = bench.redis_stats() if case.target.startswith("gateway") else None
    tunnels_before = bench.tunnels() if case.target == "gateway_socks" else None
    cpu = CpuMeter(pids)
    peak = [procs.hwm_kb(pids)]
    running = threading.Event()

    def watch_peak() -> None:  # also catches the peak of a process that dies at the end of the run
        while not running.wait(0.25):
            peak.append(procs.hwm_kb(pids))

    watcher = threading.Thread(target=watch_peak, daemon=True)
    watcher.start()
    result = wrk(server.port, body, bench.key, concurrency, s.threads, s.duration_s)
    cpu_use = cpu.stop()
    running.set()
    watcher.join()
    peak_rss = max(max(peak), procs.hwm_kb(pids)) / 1024
    lost_workers = len(set(pids) - set(server.pids())) if server.alive() else 0
    if (reason := revive(bench, case.target)) is not None:
        died.append(f"during or right after the run: {reason}")
    elif lost_workers:
        died.append(f"{lost_workers} worker process(es) replaced during the run")
    row: dict[str, Any] = {
        "case": case.id, "variant": variant.name, "row": f"{case.id}/{variant.name}", "target": case.target,
        "what": case.what, "concurrency": concurrency, "threads": min(s.threads, concurrency),
        "duration_s": result["duration_us"] / 1e6, "requests": result["requests"],
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "latency_ms": {k: result["latency_us"][k] / 1000 for k in ("p50", "p90", "p99", "p999", "mean", "max")},
        "non2xx": result["non2xx"], "socket_errors": result["errors"], "first_bad": result["first_bad"],
        "peak_rss_mb": peak_rss, "peak_rss_is_run_peak": hwm_reset, "processes": len(pids), **cpu_use,
        "server_died": died,
    }
    row["cpu_us_per_request"] = round(cpu_use["server_cpu_pct"] / 100 * row["duration_s"] * 1e6
                                      / max(result["requests"], 1), 1)
    if variant.chunks:
        row["chunks_per_s"] = row["rps"] * variant.chunks
    if redis_before is not None:
        after = bench.redis_stats()
        delta = {k: after.get(k, 0) - redis_before.get(k, 0) for k in after}
        delta = {k: v for k, v in delta.items() if v and k not in ("info",)}
        row["redis_calls_per_request"] = {k: round(v / max(result["requests"], 1), 3) for k, v in delta.items()}
    if tunnels_before is not None:
        row["new_tunnels"] = bench.tunnels() - tunnels_before
    errors = result["non2xx"] + sum(v for k, v in result["errors"].items() if k != "status")
    row["noisy"] = row["other_cpu_pct"] > NOISY_PCT
    row["flagged"] = errors > 0 or bool(died)
    return row


# --- the extra measurements ------------------------------------------------------------------------


def paired(bench: Bench, reference: str, variant: Variant, concurrency: int, rounds: int,
           seconds: int) -> dict[str, Any]:
    """The reference and the gateway measured alternately, `rounds` times, with the same body and concurrency.

    On a shared VM the machine's speed drifts by tens of percent between runs minutes apart (the same commit
    measured four times gave 499-900 us of CPU per request); a ratio of two runs seconds apart, taken as the
    median over several rounds, is what such drift leaves standing.
    """
    body = bench.bodies[variant.name]
    pairs = []
    for _ in range(rounds):
        quiet(probe_s=0.25)
        ref = wrk(bench.servers[reference].port, body, bench.key, concurrency, bench.settings.threads, seconds)
        gw = wrk(bench.servers["gateway"].port, body, bench.key, concurrency, bench.settings.threads, seconds)
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
    return {"reference": reference, "variant": variant.name, "concurrency": concurrency, "rounds": pairs,
            "median_ratio": round(statistics.median(ratios), 3),
            "median_added_p50_ms": round(statistics.median(added_p50), 3),
            "median_added_p99_ms": round(statistics.median(added_p99), 3)}

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


# --- machine ----------------------------------------------------------------------------------------

def source_state() -> dict[str, Any]:
    """Which gateway code was measured: the commit and the files changed on top of it."""
    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=False).stdout.strip()
        return ""

    changed = [ln[3:] for ln in git("status", "--porcelain").splitlines()
               if ln[3:].startswith(("gateway/", "providers/", "egress/"))]
    return {"commit": git("rev-parse", "--short", "HEAD"), "subject": git("log", "-1", "--format=%s"),
            "uncommitted_gateway_changes": changed}


def machine() -> dict[str, Any]:
    def first(path: str, pattern: str) -> str:
        with contextlib.suppress(OSError):
            m = re.search(pattern, Path(path).read_text(), re.M)
            if m:
                return m.group(1).strip()
        return "?"

    def version(cmd: list[str]) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        return "?"

    import aiohttp
    import uvloop

    mem_kb = first("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    return {
        "nproc": os.cpu_count(), "cpu": first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "memory_gb": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else None,
        "kernel": platform.release(), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
        "uvloop": uvloop.__version__, "wrk": " ".join(version(["wrk", "--version"]).split()[:2]),
        "redis": version(["redis-server", "--version"]),
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }


# --- main --------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description="The gateway benchmark of issue 6.")
    parser.add_argument("--quick", action="store_true", help="~1 minute smoke run")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway at c=16 (non-streamed)")
    parser.add_argument("--profile-seconds", type=int, default=12)
    parser.add_argument("--duration", type=int, help="seconds per measured run (default 5, quick 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (at most the concurrency)")
    parser.add_argument("--streams", type=int, help="open streams to hold (default 1000, quick 200)")
    parser.add_argument("--only", nargs="+", help="case ids to run (e.g. 3-gw 6-gw-socks5); default all")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    args = parser.parse_args()
    settings = Settings.of(args)
    for tool in ("wrk", "redis-server", "microsocks"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed: run `make bench` (it installs it) or apt-get install it", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))  # children inherit
    RESULTS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    started = datetime.now(UTC)
    t0 = time.monotonic()
    bench = Bench(settings, workdir)
    results: dict[str, Any] = {"schema": 1, "started": started.isoformat(timespec="seconds"),
                               "mode": "quick" if settings.quick else "full", "machine": machine(),
                               "source": source_state(), "settings": settings.__dict__, "runs": []}
    try:
        results.update(run_all(bench, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs and configs kept in {workdir}", file=sys.stderr)
    results["elapsed_s"] = round(time.monotonic() - t0, 1)
    report.annotate(results)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=1, sort_keys=False) + "\n"
    (RESULTS / f"{stamp}.json").write_text(text)
    (RESULTS / "latest.json").write_text(text)
    if not settings.quick and args.only is None:  # a complete full run becomes the README's table
        readme = BENCH / "README.md"
        readme.write_text(report.update_readme(results, readme.read_text()))
    print(report.render(results))
    print(f"\nwrote bench/results/{stamp}.json and bench/results/latest.json ({results['elapsed_s']} s)")
    return 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_all(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    s = bench.settings
    only = set(args.only or [c.id for c in CASES])
    log(f"bench: starting redis, fake upstream, pass-through, microsocks, gateways in {bench.dir}")
    bench.start_redis()
    up = bench.start_upstream()
    bench.start_passthrough()
    bench.start_microsocks()
    redis_port = bench.servers["redis"].port
    slow = f"bench-slow-{s.slow_stream_s}"
    direct_cfg = bench.write_config("gateway", gateway_config(redis_port, [up.port], slow_models=(slow,)))
    socks_cfg = bench.write_config("gateway-socks", gateway_config(redis_port, [up.port],
                                                                   socks_port=bench.servers["microsocks"].port))
    bench.create_key(direct_cfg)
    bench.start_gateway("gateway", direct_cfg)
    out: dict[str, Any] = {"runs": []}

    # SOCKS5 tunnels of sequential requests, on a fresh gateway (before any load pooled tunnels)
    bench.start_gateway("gateway_socks", socks_cfg)
    if "6-gw-socks5" in only:
        log(f"bench: {s.sequential_requests} sequential requests through microsocks")
        out["tunnels"] = count_tunnels(bench, s.sequential_requests)

    for case in CASES:
        if case.id not in only:
            continue
        if case.target == "gateway_w2":
            out["workers"] = run_workers_case(bench, direct_cfg)
            if out["workers"]["status"] != "ok":
                log(f"bench: case {case.id} {out['workers']['status']}")
                continue
        for vname in case.variants:
            variant = VARIANTS[vname]
            revive(bench, case.target)
            bench.check(case.target, variant)
            for i, c in enumerate(s.concurrency):
                log(f"bench: {case.id}/{vname} c={c}")
                row = measure(bench, case, variant, c, first=i == 0)
                out["runs"].append(row)
                log(f"       {row['rps']:.0f} req/s  p50 {row['latency_ms']['p50']:.2f} ms  "
                    f"p99 {row['latency_ms']['p99']:.2f} ms" + ("  ERRORS" if row["flagged"] else ""))

    if {"1-direct", "2-bare", "3-gw", "4-gw"} <= only:
        rounds = 2 if s.quick else 5
        log(f"bench: paired rounds ({rounds} x 3 s each side): direct vs gateway at c=1, bare vs gateway at c=16")
        revive(bench, "gateway")
        out["paired"] = [paired(bench, "upstream", VARIANTS["json"], 1, rounds, 3)]
        out["paired"] += [paired(bench, "passthrough", VARIANTS[v], 16, rounds, 3) for v in ("json", "s20")]
        for p in out["paired"]:
            log(f"       {p['reference']} vs gateway, {p['variant']} c={p['concurrency']}: median ratio "
                f"{p['median_ratio']}, median added p50 {p['median_added_p50_ms']} ms")

    if "3-gw" in only:
        log("bench: Redis commands per request (MONITOR, 200 sequential requests, non-streamed and streamed)")
        revive(bench, "gateway")
        out["redis_round_trips"] = [redis_round_trips(bench, "gateway", VARIANTS[v], 200) for v in ("json", "s20")]

    if args.profile:
        log(f"bench: profiling the gateway (non-streamed, c=16) for {args.profile_seconds} s with py-spy")
        out["profile"] = profile(bench, args.profile_seconds)

    if "streams" in only or args.only is None:
        for name in ("gateway", "gateway_socks", "gateway_w2"):  # idle servers must not blur the numbers
            if name in bench.servers:
                bench.servers.pop(name).stop()
        log(f"bench: {s.open_streams} open streams ({s.slow_stream_s} s each) through one provider host")
        out["streams"] = [open_streams(bench, direct_cfg, [slow], "one-upstream-host")]
        if s.quick:
            return out
        # the same through 4 upstream ports: the gateway's per-host connection cap cannot queue them
        extra = [bench.start_upstream(f"upstream{i}") for i in range(1, 4)]
        spread_cfg = bench.write_config("gateway-spread", gateway_config(
            redis_port, [up.port] + [e.port for e in extra], slow_models=(slow,)))
        log(f"bench: {s.open_streams} open streams spread over 4 upstream ports")
        out["streams"].append(open_streams(bench, spread_cfg, [slow] + [f"{slow}@{i}" for i in range(1, 4)],
                                           "four-upstream-ports"))
    return out


if __name__ == "__main__":
    sys.exit(main())
