"""bench/report.py: the README's generated sections follow the run, and a run without `--profile` keeps the last
profile (a full run profiles only when asked, and its section used to be blanked by every other run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402 - bench/ is not a package

README = """# bench
<!-- latest-table -->

an old table

## Targets
<!-- latest-targets -->

old targets

## What dominates
<!-- latest-profile -->

THE LAST PROFILE

## What changed it
"""


def test_a_run_without_a_profile_keeps_the_last_one() -> None:
    results = json.loads((BENCH / "results" / "latest.json").read_text())
    results.pop("profile", None)
    out = report.update_readme(results, README)
    assert "an old table" not in out and f"Run of {results['started']}" in out
    assert "old targets" not in out and "| target | goal | measured | |" in out
    assert "THE LAST PROFILE" in out
    assert out.index("## What dominates") < out.index("THE LAST PROFILE") < out.index("## What changed it")
