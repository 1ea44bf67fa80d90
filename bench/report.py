"""Derived figures (added latency, ratio to the bare pass-through), the targets of issue 6, and the table."""

from __future__ import annotations

from typing import Any

BASELINE_VARIANT = {"json": "json", "s20": "s20", "s1000": "s1000"}
BODY_SHAPES = {  # the agents' bodies of `rig.VARIANTS`, ~350 KB each: 30 tools, 40 tool-call rounds
    "agent": "OpenAI chat format, non-streamed",
    "agent-messages": "Claude Code's, streamed, translated to the OpenAI-kind upstream",
    "agent-claude": "Claude Code's, streamed, on the native Claude route",
}
HANDFUL = 5  # "a handful of new proxy connections per 1,000 sequential requests"


def _index(runs: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["row"], r["concurrency"]): r for r in runs}


def annotate(results: dict[str, Any]) -> None:
    """Add to each run: added latency vs direct (same body, same concurrency), ratio to the bare relay."""
    idx = _index(results.get("runs", []))
    for r in results.get("runs", []):
        c, v = r["concurrency"], r["variant"]
        direct = idx.get((f"1-direct/{v}", c))
        bare = idx.get((f"2-bare/{v}", c))
        if direct and r["case"] != "1-direct":
            r["added_ms"] = {q: round(r["latency_ms"][q] - direct["latency_ms"][q], 3) for q in ("p50", "p90", "p99")}
        if bare and r["case"] not in ("1-direct", "2-bare"):
            r["ratio_to_bare"] = round(r["rps"] / bare["rps"], 3) if bare["rps"] else None
    results["targets"] = targets(results)


def _run(results: dict[str, Any], row: str, c: int) -> dict[str, Any] | None:
    return _index(results.get("runs", [])).get((row, c))


def _t(name: str, goal: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured, "met": met}


def _paired(results: dict[str, Any], variant: str, c: int, target: str = "gateway") -> dict[str, Any] | None:
    for p in results.get("paired") or []:
        if p["variant"] == variant and p["concurrency"] == c and p.get("target", "gateway") == target:
            return p  # type: ignore[no-any-return]
    return None


def _ratios(p: dict[str, Any]) -> str:
    """A paired measurement's median req/s ratio, with its rounds' spread."""
    each = [q["gateway_rps"] / q["reference_rps"] for q in p["rounds"]]
    return (f"{p['median_ratio'] * 100:.0f} % (median of {len(each)} paired rounds; "
            f"{min(each) * 100:.0f}-{max(each) * 100:.0f} %)")


def latency_floor(results: dict[str, Any]) -> dict[str, float] | None:
    """What any gateway that admits in Redis adds at c=1 before its own code runs: the pass-through's added
    p50 (an HTTP hop in and out through aiohttp) plus one admission round trip to the store."""
    bare = _paired(results, "json", 1, target="passthrough")
    rtt = (results.get("store_round_trip") or {}).get("admit")
    if not bare or not rtt:
        return None
    hop, store = bare["median_added_p50_ms"], rtt["p50_us"] / 1000
    return {"hop_ms": hop, "store_ms": round(store, 3), "floor_ms": round(hop + store, 3)}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, judged on the paired rounds' medians when the run has them (drift-proof), else on the
    table's single runs."""
    out = []
    r = _run(results, "3-gw/json", 1)
    p = _paired(results, "json", 1)
    if p:
        rounds = len(p["rounds"])
        out.append(_t("unloaded added latency p50 (c=1, non-streamed)", "<= 0.5 ms",
                      f"{p['median_added_p50_ms']:.3f} ms (median of {rounds} paired rounds)",
                      p["median_added_p50_ms"] <= 0.5))
        out.append(_t("unloaded added latency p99 (c=1, non-streamed)", "<= 1.5 ms",
                      f"{p['median_added_p99_ms']:.3f} ms (median of {rounds} paired rounds)",
                      p["median_added_p99_ms"] <= 1.5))
        if (floor := latency_floor(results)) is not None:
            out.append(_t("(context) c=1 floor on this machine: pass-through's added p50 + one admission "
                          "round trip", "-", f"{floor['hop_ms']:.3f} + {floor['store_ms']:.3f} = "
                          f"{floor['floor_ms']:.3f} ms; the gateway's own path added "
                          f"{p['median_added_p50_ms'] - floor['floor_ms']:.3f} ms above it", None))
        if (least := _paired(results, "json", 1, target="floor")) is not None:
            out.append(_t("(context) the least a metered gateway adds at c=1 (bench/floor.py), p50 and p99", "-",
                          f"{least['median_added_p50_ms']:.3f} ms, {least['median_added_p99_ms']:.3f} ms "
                          f"(median of {len(least['rounds'])} paired rounds)", None))
    elif r and "added_ms" in r:
        out.append(_t("unloaded added latency p50 (c=1, non-streamed)", "<= 0.5 ms",
                      f"{r['added_ms']['p50']:.3f} ms", r["added_ms"]["p50"] <= 0.5))
        out.append(_t("unloaded added latency p99 (c=1, non-streamed)", "<= 1.5 ms",
                      f"{r['added_ms']['p99']:.3f} ms", r["added_ms"]["p99"] <= 1.5))
    for row, label in (("3-gw/json", "non-streamed"), ("4-gw/s20", "streamed 20 chunks")):
        r = _run(results, row, 16)
        p = _paired(results, row.split("/")[1], 16)
        if p:
            out.append(_t(f"req/s at c=16 vs bare pass-through ({label})", ">= 60 %", _ratios(p),
                          p["median_ratio"] >= 0.6))
        elif r and r.get("ratio_to_bare") is not None:
            out.append(_t(f"req/s at c=16 vs bare pass-through ({label})", ">= 60 %",
                          f"{r['ratio_to_bare'] * 100:.0f} % ({r['rps']:.0f} req/s)", r["ratio_to_bare"] >= 0.6))
        if (least := _paired(results, row.split("/")[1], 16, target="floor")) is not None:
            out.append(_t(f"(context) the least a metered gateway serves at c=16 (bench/floor.py, {label})", "-",
                          _ratios(least), None))
    r = _run(results, "5-gw/s1000", 16)
    p = _paired(results, "s1000", 16)
    if p:  # every answer has the same 1,000 chunks: the req/s ratio is the chunks/s ratio
        out.append(_t("relayed chunks/s, 1,000-chunk streams, c=16, vs bare", ">= 60 %", _ratios(p),
                      p["median_ratio"] >= 0.6))
    elif r and r.get("ratio_to_bare") is not None:
        out.append(_t("relayed chunks/s, 1,000-chunk streams, c=16, vs bare", ">= 60 %",
                      f"{r['ratio_to_bare'] * 100:.0f} % ({r['chunks_per_s']:.0f} chunks/s)",
                      r["ratio_to_bare"] >= 0.6))
    tun = results.get("tunnels")
    if tun:
        out.append(_t("SOCKS5 tunnels per 1,000 sequential requests", f"a handful (<= {HANDFUL})",
                      f"{tun['tunnels']} tunnels ({tun['non200']} non-200)", tun["tunnels"] <= HANDFUL))
    socks, gw = _run(results, "6-gw-socks5/json", 1), _run(results, "3-gw/json", 1)
    if socks and gw:
        d50 = socks["latency_ms"]["p50"] - gw["latency_ms"]["p50"]
        d99 = socks["latency_ms"]["p99"] - gw["latency_ms"]["p99"]
        out.append(_t("SOCKS5 added latency vs direct-route gateway (c=1 p50)", "<= 0.3 ms",
                      f"{d50:+.3f} ms (p99 {d99:+.3f} ms)", d50 <= 0.3))
    for s in results.get("streams") or []:
        cl = s["client"]
        label = s["label"]
        out.append(_t(f"1,000 open streams: RSS of one process [{label}]", "< 150 MB",
                      f"{s['peak_rss_mb']:.0f} MB peak, {cl['peak_open']}/{cl['streams']} open at once, "
                      f"{cl['failed']} failed", s["peak_rss_mb"] < 150 and cl["peak_open"] >= cl["streams"]
                      and cl["failed"] == 0))
        back = s["fds_back_to_baseline_after_s"]
        fc = s.get("fd_classes", {})
        out.append(_t(f"1,000 open streams: descriptors back to baseline [{label}]", "yes",
                      f"{s['fds_before']} before, {s['fds_during_max']} at peak, {s['fds_right_after_close']} right "
                      f"after, {s['fds_after']} later; by kind before {fc.get('before')}, after {fc.get('after')}"
                      + (f"; client+upstream sockets at baseline after {back} s" if back is not None
                         else "; client+upstream sockets not back within 30 s"), back is not None))
    for rt in results.get("redis_round_trips") or []:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(rt["commands"].items(), key=lambda kv: -kv[1]))
        out.append(_t(f"Redis round trips per request, in + out ({rt['variant']})", "<= 1 + 1",
                      f"{rt['per_request']:.2f} per request over {rt['requests']} requests ({detail})",
                      rt["per_request"] <= 2.05))
    return out


# --- the table ---------------------------------------------------------------------------------------

def _ms(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}"


def render(results: dict[str, Any]) -> str:
    lines = []
    m = results.get("machine", {})
    src = results.get("source", {})
    lines.append(f"gateway code: {src.get('commit')} {src.get('subject', '')[:60]!r}"
                 + (f" + uncommitted changes in {', '.join(src['uncommitted_gateway_changes'])}"
                    if src.get("uncommitted_gateway_changes") else ""))
    lines.append(f"machine: {m.get('nproc')} x {m.get('cpu')}, {m.get('memory_gb')} GB, Python {m.get('python')}, "
                 f"aiohttp {m.get('aiohttp')}, {m.get('wrk')}; mode {results.get('mode')}, "
                 f"{results['settings']['duration_s']} s per run, wrk -t{results['settings']['threads']}")
    head = (f"{'case':<20} {'c':>3} {'req/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} "
            f"{'x bare':>6} {'chunks/s':>9} {'RSS MB':>6} {'cpu%':>5} {'us/req':>6} {'other%':>6} {'errors':>6}")
    lines += ["", head, "-" * len(head)]
    for r in results.get("runs", []):
        added = r.get("added_ms", {})
        ratio = r.get("ratio_to_bare")
        errors = r["non2xx"] + sum(v for k, v in r["socket_errors"].items() if k != "status")
        lat = r["latency_ms"]
        lines.append(
            f"{r['row']:<20} {r['concurrency']:>3} {r['rps']:>8.0f} {_ms(lat['p50']):>7} {_ms(lat['p90']):>7} "
            f"{_ms(lat['p99']):>7} {_ms(added.get('p50')):>7} {_ms(added.get('p99')):>7} "
            f"{'' if ratio is None else f'{ratio:.2f}':>6} "
            f"{'' if 'chunks_per_s' not in r else format(r['chunks_per_s'], '.0f'):>9} "
            f"{r['peak_rss_mb']:>6.0f} {r.get('server_cpu_pct', 0):>5.0f} {r.get('cpu_us_per_request', 0):>6.0f} "
            f"{r.get('other_cpu_pct', 0):>6.0f} "
            f"{errors if errors else '':>6}" + ("  FLAGGED" if r["flagged"] else "")
            + ("  noisy" if r.get("noisy") else "")
            + (f" (server died: {'; '.join(r['server_died'])})" if r.get("server_died") else ""))
    lines.append("latencies in ms; +p50/+p99: added vs 1-direct with the same body and concurrency; x bare: req/s "
                 "over 2-bare's; RSS: peak of the measured server during the run; cpu%: the measured server's CPU "
                 "(100 = one core); us/req: its CPU microseconds per request; other%: CPU of processes the benchmark "
                 "did not start (noisy: > 25)")
    w = results.get("workers")
    if w and w.get("status") != "ok":
        lines.append(f"7-gw-workers2: {w['status']}")
    tun = results.get("tunnels")
    if tun:
        lines.append(f"\nSOCKS5: {tun['requests']} sequential requests opened {tun['tunnels']} tunnel(s) at the proxy "
                     f"({tun['non200']} non-200, {tun['elapsed_s']} s)")
    for s in results.get("streams") or []:
        cl = s["client"]
        lines.append(f"open streams [{s['label']}]: {cl['streams']} requested, {cl['peak_open']} open at once, "
                     f"{cl['ok']} ok, {cl['failed']} failed {cl['failures'] or ''}; RSS {s['rss_mb_before']} MB -> "
                     f"{s['peak_rss_mb']} MB peak; fds {s['fds_before']} -> {s['fds_during_max']} -> "
                     f"{s['fds_right_after_close']} right after -> {s['fds_after']}"
                     + (f" (client+upstream sockets at baseline after {s['fds_back_to_baseline_after_s']} s)"
                        if s["fds_back_to_baseline_after_s"] is not None else " (not back within 30 s)")
                     + f"; by kind: before {s.get('fd_classes', {}).get('before')}, peak "
                       f"{s.get('fd_classes', {}).get('peak')}, after {s.get('fd_classes', {}).get('after')}")
    for p in results.get("paired") or []:
        each = ", ".join(f"{q['gateway_rps'] / q['reference_rps']:.2f}" for q in p["rounds"])
        lines.append(f"paired rounds, {p['reference']} vs {p.get('target', 'gateway')}, {p['variant']} "
                     f"c={p['concurrency']} "
                     f"({len(p['rounds'])} x 3 s each side, alternating): req/s ratio median {p['median_ratio']:.2f} "
                     f"({each}); added p50 median {p['median_added_p50_ms']:.3f} ms, p99 "
                     f"{p['median_added_p99_ms']:.3f} ms"
                     + (f"; {errors} non-2xx answers" if (errors := sum(q["errors"] for q in p["rounds"])) else ""))
    rtt = results.get("store_round_trip")
    if rtt and "admit" in rtt:
        lines.append(f"one admission's Redis round trip (bench/store_rtt.py, {rtt['requests']} sequential): p50 "
                     f"{rtt['admit']['p50_us']:.0f} us, p90 {rtt['admit']['p90_us']:.0f} us; a PING on the same "
                     f"connection p50 {rtt['ping']['p50_us']:.0f} us; Redis's own time per ledger script "
                     f"{rtt['script_server_us']:.0f} us")
    for rt in results.get("redis_round_trips") or []:
        lines.append(f"Redis commands sent by the gateway per request ({rt['variant']}, {rt['requests']} sequential, "
                     f"MONITOR): {rt['per_request']} {rt['commands']}")
    ins = results.get("instructions")
    if ins:
        lines.append(f"instructions per non-streamed request (callgrind, 300 sequential; user space only): gateway "
                     f"{ins['gateway']:.3f} M, pass-through {ins['passthrough']:.3f} M "
                     f"(x{ins['gateway'] / ins['passthrough']:.2f})"
                     + (f", bench/floor.py {ins['floor']:.3f} M (x{ins['floor'] / ins['passthrough']:.2f})"
                        if "floor" in ins else ""))
    bodies = results.get("instructions_bodies") or {"agent": results.get("instructions_agent")}  # older runs: one
    for variant, ins in bodies.items():
        if ins:
            lines.append(f"instructions per {variant} request ({BODY_SHAPES[variant]}; callgrind, sequential): "
                         f"gateway {ins['gateway']:.3f} M, pass-through {ins['passthrough']:.3f} M "
                         f"(x{ins['gateway'] / ins['passthrough']:.2f})")
    for variant, by_target in (results.get("kernel") or {}).items():
        gw, pt = by_target["gateway"], by_target["passthrough"]
        lines.append(f"kernel side per {variant} request (bench/kernel.py, sequential): page faults gateway "
                     f"{gw['faults']:.1f}, pass-through {pt['faults']:.1f}; CPU user+system gateway "
                     f"{gw['user_us']:.0f}+{gw['system_us']:.0f} us, "
                     f"pass-through {pt['user_us']:.0f}+{pt['system_us']:.0f} us")
    prof = results.get("profile")
    if prof and "summary" in prof:
        lines.append(f"\nprofile (py-spy, c=16 non-streamed): {prof['top']}, flame graph {prof['svg']}")
        base = _run(results, "3-gw/json", 16)
        us = base.get("cpu_us_per_request") if base else None
        if us:
            lines.append(f"  (shares of the gateway's CPU; {us:.0f} us of CPU per request at c=16, bare pass-through "
                         f"{(_run(results, '2-bare/json', 16) or {}).get('cpu_us_per_request', 0):.0f} us)")
        for name, share in prof["summary"]["categories"][:8]:
            lines.append(f"  {share * 100:5.1f} %  {name}" + (f"  (~{share * us:.0f} us/request)" if us else ""))
    elif prof:
        lines.append(f"\nprofile: {prof.get('error')}")
    if results.get("targets"):
        lines.append("\ntargets of issue 6:")
        for t in results["targets"]:
            verdict = {True: "met", False: "NOT MET", None: "info"}[t["met"]]
            lines.append(f"  [{verdict:^7}] {t['target']}: {t['measured']} (goal {t['goal']})")
    return "\n".join(lines)


# --- README -------------------------------------------------------------------------------------------

def _section(text: str, marker: str, body: str) -> str:
    """Replace what follows `<!-- marker -->` up to the next `## ` heading with `body`."""
    tag = f"<!-- {marker} -->"
    start = text.index(tag) + len(tag)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end + 1
    return text[:start] + "\n\n" + body.strip("\n") + "\n\n" + text[end:]


def update_readme(results: dict[str, Any], readme: str) -> str:
    """The README with its latest-table, latest-targets and latest-profile sections from `results`."""
    rendered = render(results)
    table = rendered.partition("\ntargets of issue 6:")[0]
    table = table.split("\nprofile (py-spy")[0]
    targets_md = ["| target | goal | measured | |", "|---|---|---|---|"]
    for t in results.get("targets", []):
        verdict = {True: "met", False: "**not met**", None: ""}[t["met"]]
        targets_md.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {verdict} |")
    text = _section(readme, "latest-table", f"Run of {results.get('started')} ({results.get('mode')}):\n\n```\n"
                    + table.strip() + "\n```")
    text = _section(text, "latest-targets", "\n".join(targets_md))
    if "summary" not in (results.get("profile") or {}):
        return text  # a run without --profile keeps the last profile's section (and bench/results/profile-top.txt)
    prof_text = rendered[rendered.index("\nprofile (py-spy"):].split("\ntargets of issue 6:")[0].strip()
    prof_text = f"(from the run of {results.get('started')})\n\n```\n" + prof_text \
        + "\n```\n\nDetails: `bench/results/profile-top.txt`."
    return _section(text, "latest-profile", prof_text)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    if len(sys.argv) < 2:
        print("usage: python bench/report.py RESULTS.json [--readme bench/README.md]", file=sys.stderr)
        sys.exit(2)
    data = json.loads(Path(sys.argv[1]).read_text())
    if "--readme" in sys.argv:
        path = Path(sys.argv[sys.argv.index("--readme") + 1])
        path.write_text(update_readme(data, path.read_text()))
    else:
        print(render(data))
