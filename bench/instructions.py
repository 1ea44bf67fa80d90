"""Instructions per request under callgrind: the one figure of this benchmark that does not drift.

    .venv/bin/python bench/instructions.py                   # gateway and pass-through, non-streamed
    .venv/bin/python bench/instructions.py --variant s20 --requests 200 --only gateway
    .venv/bin/python bench/instructions.py --only floor                  # the least a metered gateway runs
    .venv/bin/python bench/instructions.py --only gateway --without log  # what the log line costs a request

On this shared VM the same commit measured minutes apart moves by tens of percent in req/s and CPU time;
callgrind counts the user-space instructions the server executes, which repeat to within a fraction of a
percent (1.884M, 1.885M, 1.884M for three runs of one commit). It is blind to kernel time (system calls,
wake-ups) and to cache misses, so it judges changes to the Python path, not the whole cost: `run.py`
and `iterate.py` measure that.

The server runs under `valgrind --tool=callgrind` with instrumentation off; a keep-alive client sends
warm-up requests, instrumentation is switched on (`callgrind_control -i on`) for the measured ones, and
the totals are read from the dump. Needs valgrind (Debian: apt-get install valgrind).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import procs
from rig import GATEWAY_ENV, PY, ROOT, VARIANTS, Bench, drive_sequential, gateway_code, sequential_bench

# Parts of the gateway `--without` replaces by no-ops before it starts (module attributes its code calls
# through), to count what each costs a request: only parts that decide nothing the benchmark's requests need.
WITHOUT = {
    "log": "import gateway.middleware as m\nm.access = lambda *a, **k: None\n",
    "metrics": "import gateway.metrics as m\nclass _Off:\n    def inc(self, *a): pass\n"
               "    def observe(self, *a): pass\nm.child = lambda *a, _off=_Off(): _off\n",
    "checks": "import gateway.handlers.chat as c, gateway.validation as v, gateway.caps as k\n"
              "c._validate = v.check_chat = v.check_route = k.check_max_tokens = lambda *a: None\n",
}


def _server_cmd(bench: Bench, target: str, config: Path, port: int, without: tuple[str, ...] = ()) -> list[str]:
    if without:
        return [PY, "-c", "".join(WITHOUT[part] for part in without) + gateway_code(config, port)]
    if target == "passthrough":
        return bench.passthrough_command(port)
    if target == "floor":  # the pass-through plus what every metered request needs
        return bench.floor_command(port)
    return [PY, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]


def measure(bench: Bench, target: str, config: Path, variant: str, requests: int, warmup: int,
            without: tuple[str, ...] = ()) -> float:
    """Millions of instructions the server executed per request (sequential, one keep-alive connection); the
    gateway `without` some of its parts (`WITHOUT`)."""
    port = procs.free_port()
    out = bench.dir / f"callgrind-{target}.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           *_server_cmd(bench, target, config, port, without)]
    server = procs.start(f"cg-{target}", cmd, port, bench.dir, env=GATEWAY_ENV, cwd=ROOT)
    pid = str(server.pid)

    def callgrind(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, pid], capture_output=True, check=True)

    def off() -> None:
        callgrind("-i", "off")
        callgrind("-d")  # dump the counts

    try:
        drive_sequential(bench, server, target, variant, requests, warmup, lambda: callgrind("-i", "on"), off,
                         ready_timeout=300)
    finally:
        server.stop()
    time.sleep(0.5)
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total / requests / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="json", choices=sorted(VARIANTS))
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--only", choices=("gateway", "passthrough", "floor"))
    parser.add_argument("--keep", action="store_true", help="keep the callgrind dumps (for callgrind_annotate)")
    parser.add_argument("--without", nargs="+", choices=sorted(WITHOUT), default=[],
                        help="the gateway with these parts replaced by no-ops (what each costs a request)")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian: apt-get install valgrind redis-server)", file=sys.stderr)
            return 2
    workdir = Path(tempfile.mkdtemp(prefix="gw-instructions-"))
    try:
        bench, config = sequential_bench(workdir)
        figures = {}
        for target in ("gateway", "passthrough", "floor"):
            if args.only == target or (args.only is None and target != "floor"):
                without = tuple(args.without) if target == "gateway" else ()
                figures[target] = measure(bench, target, config, args.variant, args.requests, args.warmup, without)
                print(f"{target:12} {args.variant}: {figures[target]:.3f} M instructions per request "
                      f"({args.requests} sequential{', without ' + ' '.join(without) if without else ''})",
                      flush=True)
        if len(figures) == 2:
            print(f"gateway / pass-through: {figures['gateway'] / figures['passthrough']:.2f}")
    finally:
        procs.stop_all()
        if args.keep:
            print(f"callgrind dumps kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
