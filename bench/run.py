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
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import instructions
import kernel
import procs
import report
from extras import (
    count_tunnels,
    open_streams,
    paired,
    profile,
    redis_round_trips,
    run_workers_case,
    store_round_trip,
)
from rig import (
    BENCH,
    BODIES,
    CASES,
    NOISY_PCT,
    RESULTS,
    ROOT,
    ROUTES,
    VARIANTS,
    Bench,
    Case,
    Settings,
    Variant,
    gateway_config,
    log,
    revive,
    warm_gently,
    wrk,
)


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
    waited = procs.quiet(probe_s=0.25 if s.quick else 0.5)
    if waited > 1:
        log(f"       (waited {waited} s for other processes on this machine to calm down)")
    pids = server.pids()
    hwm_reset = procs.reset_hwm(pids)
    redis_before = bench.redis_stats() if case.target.startswith("gateway") else None
    tunnels_before = bench.tunnels() if case.target == "gateway_socks" else None
    cpu = procs.CpuMeter(pids)
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
        out["paired"] += [paired(bench, "passthrough", VARIANTS[v], 16, rounds, 3)
                          for v in ("json", "s20", "s1000", *BODIES, *ROUTES)]  # no target: what they cost
        # the floor under the c=1 target: what the pass-through adds, plus the gateway's one round trip in
        out["paired"].append(paired(bench, "upstream", VARIANTS["json"], 1, rounds, 3, target="passthrough"))
        # and where a minimal metered gateway stands against the same targets (floor.py)
        bench.start_floor()
        out["paired"] += [paired(bench, "upstream", VARIANTS["json"], 1, rounds, 3, target="floor")]
        out["paired"] += [paired(bench, "passthrough", VARIANTS[v], 16, rounds, 3, target="floor")
                          for v in ("json", "s20")]
        bench.servers.pop("floor").stop()
        for p in out["paired"]:
            log(f"       {p['reference']} vs {p['target']}, {p['variant']} c={p['concurrency']}: median ratio "
                f"{p['median_ratio']}, median added p50 {p['median_added_p50_ms']} ms")
        out["store_round_trip"] = store_round_trip(bench)
        log(f"       one admission's Redis round trip: {out['store_round_trip']}")

    if "3-gw" in only:
        log("bench: Redis commands per request (MONITOR, 200 sequential requests, non-streamed and streamed)")
        revive(bench, "gateway")
        out["redis_round_trips"] = [redis_round_trips(bench, "gateway", VARIANTS[v], 200) for v in ("json", "s20")]

    if "3-gw" in only and not s.quick and shutil.which("valgrind") and shutil.which("callgrind_control"):
        log("bench: instructions per request under callgrind (300 sequential, gateway and pass-through)")
        out["instructions"] = {target: round(instructions.measure(bench, target, direct_cfg, "json", 300, 50), 3)
                               for target in ("gateway", "passthrough", "floor")}
        out["instructions_bodies"] = {
            v: {target: round(instructions.measure(bench, target, direct_cfg, v, 50, 10), 3)
                for target in ("gateway", "passthrough")} for v in ("agent", "agent-messages", "agent-claude")}

    if "3-gw" in only and not s.quick:
        log("bench: page faults and CPU per request from /proc (sequential, gateway and pass-through)")
        out["kernel"] = {v: {target: {k: round(x, 2) for k, x in kernel.measure(bench, target, direct_cfg, v, n,
                                                                                  50).items()}
                             for target in ("gateway", "passthrough")}
                         for v, n in (("json", 1000), ("agent", 200), ("agent-claude", 200))}

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
