#!/usr/bin/env python3
"""Differences between two benchmark results (bench/results/*.json).

    python bench/compare.py bench/results/A.json bench/results/latest.json

For each row and concurrency present in both: req/s, p50, p99 and peak RSS of A and B and the change
(negative latency change and positive req/s change are improvements); then the targets of both runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _pct(a: float, b: float) -> str:
    return f"{(b - a) / a * 100:+6.1f}%" if a else "    n/a"


def compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    ia = {(r["row"], r["concurrency"]): r for r in a.get("runs", [])}
    ib = {(r["row"], r["concurrency"]): r for r in b.get("runs", [])}
    lines = [f"A: {a.get('started')} ({a.get('mode')}, {a['machine'].get('cpu')})",
             f"B: {b.get('started')} ({b.get('mode')}, {b['machine'].get('cpu')})", ""]
    head = (f"{'row':<20} {'c':>3} | {'req/s A':>8} {'B':>8} {'chg':>7} | {'p50 A':>6} {'B':>6} {'chg':>7} | "
            f"{'p99 A':>6} {'B':>6} {'chg':>7} | {'RSS A':>5} {'B':>5}")
    lines += [head, "-" * len(head)]
    for key in [k for k in ia if k in ib]:
        ra, rb = ia[key], ib[key]
        la, lb = ra["latency_ms"], rb["latency_ms"]
        flag = "  (errors)" if ra.get("flagged") or rb.get("flagged") else ""
        lines.append(
            f"{key[0]:<20} {key[1]:>3} | {ra['rps']:>8.0f} {rb['rps']:>8.0f} {_pct(ra['rps'], rb['rps'])} | "
            f"{la['p50']:>6.2f} {lb['p50']:>6.2f} {_pct(la['p50'], lb['p50'])} | "
            f"{la['p99']:>6.2f} {lb['p99']:>6.2f} {_pct(la['p99'], lb['p99'])} | "
            f"{ra['peak_rss_mb']:>5.0f} {rb['peak_rss_mb']:>5.0f}{flag}")
    only = sorted(set(ia) ^ set(ib))
    if only:
        lines.append("rows in only one run: " + ", ".join(f"{r}@c{c}" for r, c in only))
    ta = {t["target"]: t for t in a.get("targets", [])}
    tb = {t["target"]: t for t in b.get("targets", [])}
    if ta or tb:
        lines += ["", "targets (A -> B):"]
        for name in dict.fromkeys([*ta, *tb]):
            ma = ta.get(name, {}).get("measured", "-")
            mb = tb.get(name, {}).get("measured", "-")
            va = {True: "met", False: "NOT MET"}.get(ta.get(name, {}).get("met"), "-")
            vb = {True: "met", False: "NOT MET"}.get(tb.get(name, {}).get("met"), "-")
            lines.append(f"  {name}: {ma} [{va}] -> {mb} [{vb}]")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    a, b = (json.loads(Path(p).read_text()) for p in sys.argv[1:3])
    print(compare(a, b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
