"""One admission's round trip to Redis, as the gateway makes it: the floor under the c=1 latency target.

    .venv/bin/python bench/store_rtt.py --port 6390 [--requests 2000]

At c=1 a request waits for one store round trip before its upstream call (the admission: limits counted,
hold placed; the settlement's follows the answer). This process times that step with the gateway's own
`RedisStore` on uvloop, as the gateway's process runs it, against the benchmark's `redis-server`: an
admission and its settlement per request, one after the other, under a key of its own. It prints JSON:
the admission's p50/p90 in microseconds, a PING's over the same connection (the network and event-loop
part), and the server's own time per ledger script (`INFO commandstats`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import uvloop

from gateway.store.base import Admission, KeyRecord
from gateway.store.redis import RedisStore

KEY_ID = "key_bench_rtt"
LIMIT = 10**9  # limits on, as in the benchmark's config, and never reached


def _quantiles(seconds: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(seconds, n=10)
    return {"p50_us": round(statistics.median(seconds) * 1e6, 1), "p90_us": round(cuts[8] * 1e6, 1)}


async def _script_us(store: RedisStore) -> float:
    """The server's own microseconds per EVALSHA so far (the ledger scripts' Lua time)."""
    stats = await store._redis.info("commandstats")
    return float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))


async def measure(port: int, requests: int) -> dict[str, Any]:
    store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="bench-rtt:")
    try:
        await store.create_key(KeyRecord(id=KEY_ID, name="rtt", key_hash="r" * 64, prefix="gw-rtt", created=1,
                                         balance=10**15))
        admits: list[float] = []
        pings: list[float] = []
        warmup = requests // 4
        for i in range(warmup + requests):
            generation = f"gen-rtt-{i}"
            admission = Admission(key_id=KEY_ID, model_id="bench/bench-20", generation_id=generation, hold=100_000,
                                  hold_ttl_s=600, rpm=LIMIT, rpd=LIMIT)
            started = time.perf_counter()
            await store.admit(admission)
            admitted = time.perf_counter()
            await store.settle(KEY_ID, generation, 50_000, 100, {"id": generation, "model": "bench/bench-20",
                                                                  "status": "200"}, 60)
            pinged = time.perf_counter()
            await store._mux.call("PING")  # the request path's own connection
            if i >= warmup:
                admits.append(admitted - started)
                pings.append(time.perf_counter() - pinged)
        return {"requests": requests, "admit": _quantiles(admits), "ping": _quantiles(pings),
                "script_server_us": round(await _script_us(store), 1)}
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the benchmark's redis-server")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(uvloop.run(measure(args.port, args.requests))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
