"""Client for the open-streams measurement: N concurrent streamed chat requests, held open by a slow upstream.

    python bench/open_streams.py --url http://127.0.0.1:P/v1/chat/completions --key gw-... \
        --models bench-slow-10 --streams 1000

Run as its own process (so its memory and descriptors are not the gateway's). Prints `OPEN <n>` lines
while streams start (n = streams that received their first event and have not ended) and one
`RESULT {json}` line at the end: how many ended well, how many failed and why, the peak number open at
once, and time to first event.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
import uvloop


class Tally:
    def __init__(self) -> None:
        self.open = 0
        self.peak = 0
        self.ok = 0
        self.failures: Counter[str] = Counter()
        self.first_event_s: list[float] = []
        self.events = 0

    def opened(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)


async def one(session: aiohttp.ClientSession, url: str, key: str, model: str, tally: Tally) -> None:
    body = orjson.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "hold on"}]})
    started = time.monotonic()
    is_open = False
    try:
        async with session.post(url, data=body, headers={"Authorization": f"Bearer {key}",
                                                          "Content-Type": "application/json"}) as resp:
            if resp.status != 200:
                text = (await resp.read())[:200].decode(errors="replace")
                tally.failures[f"HTTP {resp.status}: {text}"] += 1
                return
            done = False
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if not is_open:
                    is_open = True
                    tally.opened()
                    tally.first_event_s.append(time.monotonic() - started)
                tally.events += 1
                if line.strip() == b"data: [DONE]":
                    done = True
            if done:
                tally.ok += 1
            else:
                tally.failures["ended without [DONE]"] += 1
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        tally.failures[type(exc).__name__] += 1
    finally:
        if is_open:
            tally.open -= 1


async def report_progress(tally: Tally, every_s: float) -> None:
    last = -1
    while True:
        await asyncio.sleep(every_s)
        if tally.open != last:
            last = tally.open
            print(f"OPEN {tally.open}", flush=True)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tally = Tally()
    models = args.models.split(",")
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        progress = asyncio.create_task(report_progress(tally, 0.25))
        await asyncio.gather(*(one(session, args.url, args.key, models[i % len(models)], tally)
                               for i in range(args.streams)))
        progress.cancel()
    firsts = sorted(tally.first_event_s)

    def pct(q: float) -> float | None:
        return round(firsts[min(int(q * len(firsts)), len(firsts) - 1)], 3) if firsts else None

    return {"streams": args.streams, "ok": tally.ok, "failed": sum(tally.failures.values()),
            "failures": dict(tally.failures.most_common(5)), "peak_open": tally.peak, "events": tally.events,
            "first_event_s": {"p50": pct(0.5), "p99": pct(0.99), "max": firsts[-1] if firsts else None},
            "elapsed_s": round(time.monotonic() - started, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--models", required=True, help="comma-separated; streams go round-robin over them")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args()
    result = uvloop.run(main_async(args))
    sys.stdout.write("RESULT " + orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
