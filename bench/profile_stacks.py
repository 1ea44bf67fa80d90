"""Summarise a py-spy `--format raw` file (collapsed stacks) into shares of the sampled CPU time.

    python bench/profile_stacks.py bench/results/profile.raw.txt

Five views: by category (Redis client, logging, metrics, aiohttp client, own code, aiohttp server), by
the package of the innermost frame (where the CPU is), by the innermost frame itself, by
the innermost frame of the project's own code (gateway/, providers/, egress/) — library time charged to
the project function that called the library —, and inclusive shares of chosen functions of the request
path. Samples are of busy time only (py-spy leaves idle threads out).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PROJECT = ("gateway/", "providers/", "egress/")
# inclusive shares of these functions of the request path (qualified names as py-spy prints them)
WATCH = (
    "request_context", "require_key", "authenticate", "chat_completions", "_serve", "admit", "Ticket.settle",
    "Ticket._settle", "RedisStore.admit", "RedisStore.settle", "open_upstream", "read_body", "_relay_json",
    "parse_response", "build_request", "read_json", "Redactor.__call__", "BoundLoggerFilteringAtInfo.info",
    "add_response_headers", "ClientSession._request", "RequestHandler._handle_request", "RequestHandler.start",
)


# Each sample counted once, in the first category (in this order) that one of its frames belongs to.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Redis client (redis-py: admit + settle scripts, key lookups)", ("redis/",)),
    ("logging (structlog + gateway.logging redactor)", ("structlog/", "gateway/logging.py")),
    ("Prometheus metrics", ("prometheus_client/", "gateway/metrics.py", "egress/metrics.py")),
    ("aiohttp client (the upstream call)", ("aiohttp/client", "aiohttp/connector.py", "aiohttp/tracing.py",
                                            "aiohttp_socks/", "python_socks/")),
    ("asyncio streams (redis-py's transport)", ("asyncio/streams.py",)),
    ("gateway / providers / egress own code", ("gateway/", "providers/", "egress/")),
    ("aiohttp server (HTTP in and out)", ("aiohttp/",)),
)


def _from_loop(frames: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop the bootstrap (python -m gateway -> serve -> web.run_app): what follows runs from the loop."""
    entry = max((i for i, (f, _) in enumerate(frames) if f in ("run_app", "run_until_complete", "run")), default=-1)
    return frames[entry + 1:]


def _category(frames: list[tuple[str, str]]) -> str:
    if not frames:
        return "event loop itself (uvloop: polling, scheduling)"
    for name, prefixes in CATEGORIES:
        if any(file.startswith(prefixes) for _, file in frames):
            return name
    return f"other: {_package(frames[-1][1])}"


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for part in stack.split(";"):
        m = _FRAME.match(part.strip())
        if m:
            out.append((m.group("func"), m.group("file")))
        else:
            out.append((part.strip(), ""))
    return out


def _package(file: str) -> str:
    if not file:
        return "?"
    head = file.split("/", 1)[0]
    return head.removesuffix(".py")


def summarise(raw: str) -> dict[str, Any]:
    total = 0
    leaf_pkg: Counter[str] = Counter()
    leaf_fn: Counter[str] = Counter()
    owner: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    category: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = _from_loop(_frames(stack))
        func, file = frames[-1] if frames else ("[event loop]", "uvloop")
        leaf_pkg[_package(file)] += n
        category[_category(frames)] += n
        leaf_fn[f"{func} ({file})"] += n
        mine = next(((f, fl) for f, fl in reversed(frames) if fl.startswith(PROJECT)), None)
        owner[f"{mine[0]} ({mine[1]})" if mine else f"[no project frame] {_package(file)}"] += n
        for name in {f for f, _ in frames}:
            if name in WATCH:
                inclusive[name] += n
    if not total:
        return {"samples": 0, "categories": [], "areas": [], "leaf": [], "owner": [], "inclusive": []}

    def share(counter: Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(c / total, 4)) for name, c in counter.most_common(k)]

    return {"samples": total, "categories": share(category, 12), "areas": share(leaf_pkg, 15),
            "leaf": share(leaf_fn, 25), "owner": share(owner, 25), "inclusive": share(inclusive, len(WATCH))}


def render(summary: dict[str, Any]) -> str:
    lines = [f"py-spy samples: {summary['samples']} (busy time only)"]
    for key, title in (("categories", "by category (each sample once: the first category among its frames)"),
                       ("areas", "by package of the innermost frame"), ("leaf", "by innermost frame (self time)"),
                       ("owner", "by innermost project frame (library time charged to its caller)"),
                       ("inclusive", "inclusive, functions of the request path")):
        lines += ["", title + ":"]
        lines += [f"  {s * 100:5.1f} %  {name}" for name, s in summary[key]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(render(summarise(f.read())))
