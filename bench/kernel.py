"""What a request costs the server in the kernel: page faults, system and user CPU, one request at a time.

    .venv/bin/python bench/kernel.py                           # json, s20, agent, agent-claude; both servers
    .venv/bin/python bench/kernel.py --variant agent --only gateway --requests 100

`instructions.py` counts user-space instructions and is blind to the kernel. A big allocation is not: memory
fresh from the kernel is mapped one 4 KB page at a time, each on its first touch, and on this VM a page fault
costs ~2 us. A body read into a growing bytearray and copied out with `bytes()` (what aiohttp's
`request.read()` does) faults ~170 pages for an agent's 350 KB request, ~0.4 ms, more than the rest of the
pass-through's work on it. The server runs as in `instructions.py` (sequential requests on one keep-alive
connection, after warm-up); its `/proc/<pid>/stat` counters are read before and after the measured ones.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import procs
from instructions import _server_cmd
from rig import GATEWAY_ENV, ROOT, VARIANTS, Bench, drive_sequential, sequential_bench

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def counters(pid: int) -> tuple[int, int, int]:
    """(minor page faults, user ticks, system ticks) of `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7]), int(fields[11]), int(fields[12])


def measure(bench: Bench, target: str, config: Path, variant: str, requests: int, warmup: int) -> dict[str, float]:
    port = procs.free_port()
    server = procs.start(f"kernel-{target}-{variant}", _server_cmd(bench, target, config, port), port, bench.dir,
                         env=GATEWAY_ENV, cwd=ROOT)
    seen: list[tuple[int, int, int]] = []
    try:
        drive_sequential(bench, server, target, variant, requests, warmup, lambda: seen.append(counters(server.pid)),
                         lambda: seen.append(counters(server.pid)), ready_timeout=60)
    finally:
        server.stop()
    (faults0, user0, sys0), (faults1, user1, sys1) = seen
    return {"faults": (faults1 - faults0) / requests, "user_us": (user1 - user0) * TICK_US / requests,
            "system_us": (sys1 - sys0) * TICK_US / requests}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["json", "s20", "agent", "agent-claude"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--requests", type=int, default=0, help="per variant (0: 1000, 200 for agents' bodies)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--only", choices=("gateway", "passthrough"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="gw-kernel-"))
    try:
        bench, config = sequential_bench(workdir)
        for target in ("gateway", "passthrough"):
            if args.only not in (None, target):
                continue
            for variant in args.variant:
                n = args.requests or (200 if VARIANTS[variant].turns else 1000)
                got = measure(bench, target, config, variant, n, args.warmup)
                print(f"{target:12} {variant:14} page faults {got['faults']:7.2f}  user {got['user_us']:6.0f} us  "
                      f"system {got['system_us']:5.0f} us per request ({n} sequential)", flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
