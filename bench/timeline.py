"""Where one unloaded request's time goes inside the gateway, phase by phase (the c=1 latency target).

    .venv/bin/python bench/timeline.py                   # 2,000 sequential non-streamed requests
    .venv/bin/python bench/timeline.py --requests 5000 --warmup 500

At c=1 the added latency is a chain: the gateway's own code, the admission's round trip to Redis, the
upstream call, the answer's write. `instructions.py` and `lines.py` count work; this times the chain. The
gateway runs with timestamps (`time.perf_counter`) taken where the pipeline hands over from one phase to
the next (the same module attributes it calls through, wrapped before it starts); a signal switches the
recording on after warm-up and another writes the per-phase medians. The phases end where the response
is written: the log line, the metrics and the settlement's round trip come after the client has its answer.
Each phase is printed with its median, its 99th percentile and its median among the slowest 1 % of requests:
a tail that one phase causes shows in that phase's last column; one the machine causes, in all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import procs
from rig import GATEWAY_ENV, PY, ROOT, drive_sequential, gateway_code, sequential_bench

# Run in the gateway's process before its own code. Each phase is the time between two marks.
_TIMED = """
import json, signal, statistics, time
from contextvars import ContextVar
import gateway.metering as metering, gateway.middleware as middleware, gateway.pipeline as pipeline
_marks = ContextVar("timeline_marks", default=None)
_rows, _on = [], [False]
_clock = time.perf_counter

def _wrap(module, name, before, after):
    inner = getattr(module, name)
    async def timed(*args, **kwargs):
        marks = _marks.get()
        if marks is not None:
            marks[before] = _clock()
        try:
            return await inner(*args, **kwargs)
        finally:
            if marks is not None:
                marks[after] = _clock()
    setattr(module, name, timed)

_respond, _send = middleware._respond, middleware._send
async def respond(*args, **kwargs):
    marks = {"start": _clock()} if _on[0] else None
    _marks.set(marks)
    response = await _respond(*args, **kwargs)
    if marks is not None:
        marks["handled"] = _clock()
    return response
async def send(*args, **kwargs):
    await _send(*args, **kwargs)
    marks = _marks.get()
    if marks is not None:
        marks["sent"] = _clock()
        _rows.append(marks)
middleware._respond, middleware._send = respond, send
_wrap(metering, "admit", "admit", "admitted")
_wrap(pipeline, "open_upstream", "call", "headers")
_wrap(pipeline, "read_body", "read", "body")

def _start(signum, frame):
    _on[0] = True
def _stop(signum, frame):
    _on[0] = False
    phases = PHASES_HERE
    rows = [r for r in _rows if all(k in r for k, _, _ in phases)]
    out = {"requests": len(rows)}
    totals = sorted(r["sent"] - r["start"] for r in rows)
    cut = totals[int(len(totals) * 0.99)] if rows else 0.0
    slow = [r for r in rows if r["sent"] - r["start"] >= cut]
    for begin, end, label in phases:
        took = sorted(r[end] - r[begin] for r in rows)
        tail = statistics.median(r[end] - r[begin] for r in slow) if rows else 0.0
        out[label] = [round(x * 1e6, 1) for x in (statistics.median(took), took[int(len(took) * 0.99)], tail)] \
            if rows else None
    with open(OUT_HERE, "w") as f:
        json.dump(out, f)
signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)
"""

PHASES = [
    ("start", "admit", "auth, body, checks, route, translate"),
    ("admit", "admitted", "admission (one Redis round trip)"),
    ("admitted", "call", "to the upstream call"),
    ("call", "headers", "upstream call to its headers"),
    ("headers", "read", "status check"),
    ("read", "body", "upstream body"),
    ("body", "handled", "parse, bill, present"),
    ("handled", "sent", "write the response"),
    ("start", "sent", "total, handler to written answer"),
]


def measure(requests: int, warmup: int, workdir: Path) -> dict[str, float | None]:
    bench, config = sequential_bench(workdir)
    out = workdir / "timeline.json"
    code = _TIMED.replace("PHASES_HERE", repr(PHASES)).replace("OUT_HERE", repr(str(out)))
    port = procs.free_port()
    server = procs.start("timeline-gateway", [PY, "-c", code + gateway_code(config, port)], port, bench.dir,
                         env=GATEWAY_ENV, cwd=ROOT)

    def stop() -> None:
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    drive_sequential(bench, server, "gateway", "json", requests, warmup, lambda: os.kill(server.pid, signal.SIGUSR1),
                     stop, ready_timeout=30)
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-timeline-"))
    try:
        result = measure(args.requests, args.warmup, workdir)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"one non-streamed request at a time, over {result.pop('requests')} requests (us): the median, the "
          "99th percentile, and the median among the slowest 1 % (by total)")
    print(f"  {'p50':>8}  {'p99':>8}  {'slowest':>8}")
    for label, (p50, p99, slowest) in result.items():
        print(f"  {p50:>8}  {p99:>8}  {slowest:>8}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
