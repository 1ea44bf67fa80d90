"""The quick loop for working on the gateway's speed: the reference and the gateway measured alternately,
with the CPU each server spent per request, in well under a minute.

    .venv/bin/python bench/iterate.py                     # json c=16 vs the pass-through, c=1 vs direct
    .venv/bin/python bench/iterate.py --variant s20 --rounds 5 --seconds 3
    .venv/bin/python bench/iterate.py --pyspy 10          # then a py-spy flame graph of the gateway at c=16

CPU per request (the server's user + system time over the requests it answered) moves much less with the
machine's drift than req/s does, so it is the number to watch between two commits; `run.py` stays the
benchmark of record.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procs
import profile_stacks
from procs import quiet
from rig import CHAT, VARIANTS, Bench, Settings, gateway_config, warm_gently, wrk


def measure(bench: Bench, target: str, variant: str, concurrency: int, seconds: int) -> dict[str, float]:
    server = bench.servers[target]
    pids = [server.proc.pid]
    before = procs.cpu_ticks()
    t0 = time.monotonic()
    out = wrk(server.port, bench.bodies[variant], bench.key, concurrency, 1, seconds,
              CHAT if target in ("passthrough", "upstream") else VARIANTS[variant].path)
    wall = time.monotonic() - t0
    after = procs.cpu_ticks()
    ticks = sum(after[p][1] - before[p][1] for p in pids if p in after and p in before)
    n = max(out["requests"], 1)
    return {"rps": n / (out["duration_us"] / 1e6), "us_per_req": ticks / procs.CLK_TCK * 1e6 / n,
            "p50_ms": out["latency_us"]["p50"] / 1000, "p99_ms": out["latency_us"]["p99"] / 1000,
            "errors": out["non2xx"], "cpu_pct": 100 * ticks / procs.CLK_TCK / wall}


def rounds(bench: Bench, reference: str, variant: str, concurrency: int, n: int, seconds: int) -> None:
    rows = []
    for _ in range(n):
        quiet(probe_s=0.25)
        rows.append((measure(bench, reference, variant, concurrency, seconds),
                     measure(bench, "gateway", variant, concurrency, seconds)))
    spread = ", ".join(f"{g['rps'] / r['rps']:.2f}" for r, g in rows)
    ratio = statistics.median(g["rps"] / r["rps"] for r, g in rows)
    added = statistics.median(g["p50_ms"] - r["p50_ms"] for r, g in rows)
    added99 = statistics.median(g["p99_ms"] - r["p99_ms"] for r, g in rows)
    ref_us = statistics.median(r["us_per_req"] for r, _ in rows)
    gw_us = statistics.median(g["us_per_req"] for _, g in rows)
    errors = sum(r["errors"] + g["errors"] for r, g in rows)
    print(f"{variant} c={concurrency:<3} vs {reference:<11}: req/s ratio {ratio:.2f} "
          f"({spread}); added p50 {added:.3f} ms, "
          f"p99 {added99:.3f} ms; CPU/request {reference} {ref_us:.0f} us, gateway {gw_us:.0f} us"
          + (f"; {errors} ERRORS" if errors else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="json", choices=sorted(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--pyspy", type=int, default=0, help="seconds of py-spy afterwards (0: none)")
    parser.add_argument("--pyspy-concurrency", type=int, default=16)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-iterate-"))
    bench = Bench(Settings(quick=True, duration_s=args.seconds, warmup_s=1, warmup_every_run=False,
                           concurrency=tuple(args.concurrency), threads=1, open_streams=0, slow_stream_s=10,
                           sequential_requests=0), workdir)
    try:
        bench.start_redis()
        up = bench.start_upstream()
        bench.start_passthrough()
        config = bench.write_config("gateway", gateway_config(bench.servers["redis"].port, [up.port]))
        bench.create_key(config)
        bench.start_gateway("gateway", config)
        for target in ("passthrough", "gateway"):
            bench.check(target, VARIANTS[args.variant])
            warm_gently(bench, target, VARIANTS[args.variant])
        for c in args.concurrency:
            rounds(bench, "passthrough" if c > 1 else "upstream", args.variant, c, args.rounds, args.seconds)
        if args.pyspy:
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"),
                                    "record", "-r", "500", "-d", str(args.pyspy), "-f", "raw", "-o",
                                    str(workdir / "profile.txt"), "-p", str(bench.servers["gateway"].proc.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            wrk(bench.servers["gateway"].port, bench.bodies[args.variant], bench.key, args.pyspy_concurrency, 1,
                args.pyspy, VARIANTS[args.variant].path)
            spy.wait()
            raw = (workdir / "profile.txt").read_text()
            print(profile_stacks.render(profile_stacks.summarise(raw)))
            print(f"py-spy samples: {workdir / 'profile.txt'} (collapsed stacks)")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
