"""Python lines executed per request, by package and function, in the gateway and in the pass-through.

    .venv/bin/python bench/lines.py                       # non-streamed, 300 sequential requests each
    .venv/bin/python bench/lines.py --variant s20 --requests 100 --top 40

Callgrind (`instructions.py`) says how much the gateway executes; this says where, in the gateway's own
terms: the server runs with a line tracer that a signal switches on for the measured requests only (after
warm-up) and off again, and every executed line is counted against its function. Like callgrind it is
deterministic (the same commit gives the same counts), and it puts the two servers side by side: the lines
both spend in aiohttp (the HTTP server and client they share) and the lines only the gateway runs. Lines
are not instructions (a line may call into C for a long time, and the tracer itself is slow), so judge a
change with `instructions.py`; use this to see which functions a request runs and how often.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import procs
from rig import GATEWAY_ENV, PY, ROOT, VARIANTS, Bench, drive_sequential, gateway_code, sequential_bench

# Run in the server before its own code: SIGUSR1 starts counting (in every frame already running too, so
# a connection's long-lived task counts from its next line), SIGUSR2 stops and writes the counts.
_TRACER = """
import collections, pickle, signal, sys
_counts = collections.Counter()
def _local(frame, event, arg):
    if event == "line":
        code = frame.f_code
        name = code.co_name
        if code.co_filename == "<string>" and "self" in frame.f_locals:  # generated: named by its class
            name = type(frame.f_locals["self"]).__qualname__ + "." + name
        _counts[(code.co_filename, name)] += 1
    return _local
def _global(frame, event, arg):
    return _local if event == "call" else None
def _on(signum, frame):
    sys.settrace(_global)
    while frame is not None:
        frame.f_trace, frame.f_trace_lines, frame = _local, True, frame.f_back
def _off(signum, frame):
    sys.settrace(None)
    with open({out!r}, "wb") as f:
        pickle.dump(dict(_counts), f)
signal.signal(signal.SIGUSR1, _on)
signal.signal(signal.SIGUSR2, _off)
"""


def _server_code(bench: Bench, target: str, config: Path, port: int, out: Path) -> str:
    tracer = _TRACER.format(out=str(out))
    if target != "passthrough":
        return tracer + gateway_code(config, port)
    argv = ["passthrough.py", "--port", str(port), "--upstream", f"http://127.0.0.1:{bench.servers['upstream'].port}"]
    run = f"import runpy; runpy.run_path({str(ROOT / 'bench' / 'passthrough.py')!r}, run_name='__main__')"
    return f"{tracer}\nimport sys\nsys.argv = {argv!r}\n{run}\n"


Counts = dict[tuple[str, str], int]  # (file, function) -> lines executed


def count(bench: Bench, target: str, config: Path, variant: str, requests: int, warmup: int) -> Counts:
    """Lines executed per (file, function) over `requests` sequential requests on one connection."""
    port = procs.free_port()
    out = bench.dir / f"lines-{target}.pickle"
    server = procs.start(f"lines-{target}", [PY, "-c", _server_code(bench, target, config, port, out)], port,
                         bench.dir, env=GATEWAY_ENV, cwd=ROOT)

    def on() -> None:
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(0.3)  # the handler runs between two bytecodes of the idle loop

    def off() -> None:
        os.kill(server.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)  # let the dump finish

    try:
        drive_sequential(bench, server, target, variant, requests, warmup, on, off, ready_timeout=60)
    finally:
        server.stop()
    with out.open("rb") as f:
        counts: Counts = pickle.load(f)
    return counts


def where(filename: str) -> str:
    """A file as its package-relative path: aiohttp/client.py, gateway/pipeline.py, asyncio/tasks.py."""
    if filename == "<string>":
        return "(generated: dataclass __init__ and the like)"
    for marker in ("site-packages/", f"{ROOT}/", "python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def package(path: str) -> str:
    """What a line is charged to: our modules one by one, libraries as a whole."""
    head = path.split("/", 1)[0]
    return path if head in ("gateway", "providers", "egress", "bench") else head


def report(name: str, counts: Counts, requests: int, top: int) -> collections.Counter[str]:
    by_package: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    for (filename, function), n in counts.items():
        path = where(filename)
        by_package[package(path)] += n
        by_function[f"{path}:{function}"] += n
    total = sum(by_package.values())
    print(f"\n{name}: {total / requests:.0f} lines per request")
    for what, n in by_package.most_common(top):
        print(f"  {n / requests:8.1f}  {what}")
    print(f"  functions (top {top}):")
    for what, n in by_function.most_common(top):
        print(f"  {n / requests:8.1f}  {what}")
    return by_package


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="json", choices=sorted(VARIANTS))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--only", choices=("gateway", "passthrough"))
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        print("redis-server is not installed (Debian: apt-get install redis-server)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="gw-lines-"))
    try:
        bench, config = sequential_bench(workdir)
        shares = {}
        for target in ("gateway", "passthrough"):
            if args.only in (None, target):
                counts = count(bench, target, config, args.variant, args.requests, args.warmup)
                shares[target] = report(f"{target} ({args.variant})", counts, args.requests, args.top)
        if len(shares) == 2:
            gw, pt = shares["gateway"], shares["passthrough"]
            own = sum(n for what, n in gw.items() if what.split("/", 1)[0] in ("gateway", "providers", "egress"))
            print(f"\nper request: aiohttp {gw['aiohttp'] / args.requests:.0f} lines in the gateway, "
                  f"{pt['aiohttp'] / args.requests:.0f} in the pass-through; the gateway's own modules "
                  f"{own / args.requests:.0f}; all lines {sum(gw.values()) / args.requests:.0f} vs "
                  f"{sum(pt.values()) / args.requests:.0f}")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
