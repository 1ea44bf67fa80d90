"""`make soak`: minutes of mixed load on a real gateway process, then proof that nothing leaked.

Not part of `make test` (it takes minutes by design). The gateway runs as `python -m gateway serve` with
a Redis store (its own redis-server) and leaves through an egress pool of two microsocks proxies, one of
which flaps (killed and restarted every few seconds, tunnels and all). Client tasks mix plain and
streamed requests, streams the client abandons after a random number of chunks, BYOK requests, a key with
a tight rpm, a key that runs out of money, and malformed bodies.

At the end, with the load stopped and the gateway idle, it prints and checks:
- descriptors and RSS of the gateway process: back to the idle level measured after the warm-up;
- open holds: none, on every key;
- ledger: for every key balance + usage == credits, balance >= 0, and the audit stream's charges add up
  to usage exactly (no double charge, no lost charge);
- answers: only the statuses the mix can cause (never a 500).

    .venv/bin/python tests/soak.py --minutes 3 [--clients 24] [--keep-logs]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import web
from fakes.openai_upstream import FakeOpenAI, make_app
from harness import PROVIDER_KEY, GatewayProcess
from proxies import Microsocks, free_port
from redis_server import RedisServer

from gateway import keys
from gateway.store import RedisStore

PREFIX = "soak:"
MESSAGES = [{"role": "user", "content": "soak"}]
EXPECTED = {200, 400, 402, 429, 502, 503}  # 502/503 only while the flapping proxy is down mid-request
FD_SLACK = 4  # pooled upstream/redis connections may differ by a few between two idle moments
RSS_SLACK_MB = 20.0


def config_text(upstream: str, redis_url: str, proxies: list[Microsocks]) -> str:
    members = ", ".join(f'{{name: p{i}, url: "{p.url}"}}' for i, p in enumerate(proxies))
    return f"""
server: {{max_body_bytes: 65536, sse_keepalive_s: 1, log_level: info}}
billing: {{hold_ttl_s: 600, key_cache_s: 2}}
retries: {{max_retries: 2}}
limits: {{default: {{rpm: 1000000, rpd: 100000000}}}}
store: {{url: "{redis_url}", prefix: "{PREFIX}"}}
egress:
  pools:
    flappy:
      strategy: round_robin
      proxies: [{members}]
      health: {{interval_s: 1, timeout_s: 1, eject_after_failures: 1, restore_after_successes: 1}}
providers:
  fake:
    kind: openai
    base_url: "{upstream}"
    api_key: "{PROVIDER_KEY}"
    egress: flappy
    timeouts: {{connect_s: 1, first_byte_s: 5, between_chunks_s: 5}}
models:
  fake/gpt-4o: {{price: {{input_per_mtok: 2.5, output_per_mtok: 10}}}}
"""


class Soak:
    def __init__(self, gw: GatewayProcess, plain: dict[str, str], rng: random.Random) -> None:
        self.gw = gw
        self.plain = plain  # role -> plain key
        self.rng = rng
        self.statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.aborted = 0

    async def client(self, http: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            kind = self.rng.choices(["plain", "stream", "abort", "byok", "limited", "poor", "bad"],
                                    weights=[30, 20, 20, 8, 8, 8, 6])[0]
            try:
                await self.one(http, kind)
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.statuses[(kind, -1)] += 1
                print(f"  client error on {kind}: {type(exc).__name__}: {exc}", file=sys.stderr)

    async def one(self, http: aiohttp.ClientSession, kind: str) -> None:
        key = {"limited": "limited", "poor": "poor"}.get(kind, "rich")
        headers = {"Authorization": f"Bearer {self.plain[key]}"}
        body: dict[str, Any] = {"model": "fake/gpt-4o", "messages": MESSAGES, "max_tokens": 50}
        if kind in ("stream", "abort"):
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        if kind == "byok":
            body["provider_api_key"] = "sk-soak-byok-" + "x" * 24
        data = b'{"model": "fake/gpt-4o", "messages": [' if kind == "bad" else json.dumps(body).encode()
        url = self.gw.url + "/v1/chat/completions"
        async with asyncio.timeout(30):
            async with http.post(url, data=data, headers={**headers, "Content-Type": "application/json"}) as resp:
                self.statuses[(kind, resp.status)] += 1
                if kind == "abort" and resp.status == 200:
                    for _ in range(self.rng.randrange(0, 6)):
                        if not await resp.content.readline():
                            break
                    self.aborted += 1
                    resp.close()  # drop the connection mid-stream
                    return
                await resp.read()


def process_stats(pid: int) -> tuple[int, float]:
    """Open descriptors and RSS (MB) of a process."""
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return fds, int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def idle_stats(pid: int, seconds: float = 4.0) -> tuple[int, float]:
    await asyncio.sleep(seconds)
    return process_stats(pid)


async def flap(proxy: Microsocks, until: float, period_s: float) -> int:
    flaps = 0
    while time.monotonic() < until:
        await asyncio.sleep(period_s)
        await proxy.astop()
        flaps += 1
        await asyncio.sleep(period_s)
        await proxy.astart()
    return flaps


async def sample(pid: int, until: float, samples: list[tuple[float, int, float]], started: float) -> None:
    while time.monotonic() < until:
        fds, rss = process_stats(pid)
        samples.append((time.monotonic() - started, fds, rss))
        await asyncio.sleep(5)


def ledger_report(redis_url: str, key_ids: dict[str, str]) -> list[str]:
    """Problems found in the ledger (empty when exact), printing each key's sums."""
    problems = []
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        for role, key_id in key_ids.items():
            fields = r.hgetall(f"{PREFIX}key:{{{key_id}}}")
            balance, usage, credits = (int(fields[f]) for f in ("balance", "usage", "credits"))
            holds = r.hlen(f"{PREFIX}holds:{{{key_id}}}")
            entries = r.xrange(f"{PREFIX}audit:{{{key_id}}}")
            charged = sum(int(e[1]["charged"]) for e in entries)
            generations = {e[1]["generation_id"] for e in entries}
            print(f"  {role:8} balance {balance:>15} usage {usage:>13} credits {credits:>15} holds {holds} "
                  f"audit entries {len(entries)} (distinct generations {len(generations)}) sum charged {charged}")
            if holds:
                problems.append(f"{role}: {holds} open holds")
            if balance + usage != credits:
                problems.append(f"{role}: balance + usage = {balance + usage} != credits {credits}")
            if balance < 0:
                problems.append(f"{role}: negative balance {balance}")
            if charged != usage:
                problems.append(f"{role}: audit charges {charged} != usage {usage}")
            if len(generations) != len(entries):
                problems.append(f"{role}: a generation was settled twice")
    return problems


async def make_keys(redis_url: str) -> tuple[dict[str, str], dict[str, str]]:
    store = RedisStore(redis_url, prefix=PREFIX)
    plain, ids = {}, {}
    try:
        for role, dollars, rpm in (("rich", 1_000_000, None), ("limited", 1_000, 30), ("poor", 0.02, None)):
            secret, record = keys.new_record(role, int(dollars * 1_000_000_000), rpm=rpm)
            await store.create_key(record)
            plain[role], ids[role] = secret, record.id
    finally:
        await store.close()
    return plain, ids


async def run(args: argparse.Namespace) -> int:
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # the fake upstream sees abandoned streams
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="gw-soak-"))
    fake = FakeOpenAI()
    fake.delay_between_chunks_s = 0.01
    runner = web.AppRunner(make_app(fake))
    await runner.setup()
    upstream_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    proxies = [Microsocks(), Microsocks()]
    with RedisServer() as redis_server:
        for proxy in proxies:
            await proxy.astart()
        path = workdir / "soak.yaml"
        path.write_text(config_text(f"http://127.0.0.1:{upstream_port}/v1", redis_server.url, proxies))
        plain, key_ids = await make_keys(redis_server.url)
        try:
            with GatewayProcess(path) as gw:
                assert gw.proc is not None
                pid = gw.proc.pid
                soak = Soak(gw, plain, rng)
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector) as http:
                    print(f"soak: warm-up 15 s with {args.clients} clients")
                    warm_until = time.monotonic() + 15
                    await asyncio.gather(*(soak.client(http, warm_until) for _ in range(args.clients)))
                fd0, rss0 = await idle_stats(pid)
                print(f"soak: idle after warm-up: {fd0} fds, {rss0:.1f} MB RSS")
                started = time.monotonic()
                until = started + args.minutes * 60
                samples: list[tuple[float, int, float]] = []
                connector = aiohttp.TCPConnector(limit=0)
                async with aiohttp.ClientSession(connector=connector) as http:
                    flapper = asyncio.create_task(flap(proxies[0], until, 3.0))
                    sampler = asyncio.create_task(sample(pid, until, samples, started))
                    await asyncio.gather(*(soak.client(http, until) for _ in range(args.clients)))
                    flaps = await flapper
                    await sampler
                await proxies[0].astart()
                fd1, rss1 = await idle_stats(pid, 6.0)
                print(f"soak: {args.minutes} min, {sum(soak.statuses.values())} requests, {soak.aborted} streams "
                      f"abandoned, proxy p0 killed {flaps} times")
                for t, fds, rss in samples:
                    print(f"  t={t:6.1f}s  fds {fds:5}  rss {rss:7.1f} MB")
                print(f"soak: idle at the end: {fd1} fds (after warm-up {fd0}), {rss1:.1f} MB RSS (after warm-up "
                      f"{rss0:.1f})")
                by_status: collections.Counter[int] = collections.Counter()
                for (kind, status), n in sorted(soak.statuses.items()):
                    by_status[status] += n
                    print(f"  {kind:8} {status:4} x {n}")
                problems = ledger_report(redis_server.url, key_ids)
                unexpected = {s: n for s, n in by_status.items() if s not in EXPECTED}
                if unexpected:
                    problems.append(f"unexpected statuses {unexpected}")
                if by_status[200] < sum(by_status.values()) // 2:
                    problems.append(f"fewer than half the requests succeeded: {dict(by_status)}")
                if fd1 > fd0 + FD_SLACK:
                    problems.append(f"descriptors grew from {fd0} to {fd1}")
                if rss1 > rss0 + RSS_SLACK_MB:
                    problems.append(f"RSS grew from {rss0:.1f} MB to {rss1:.1f} MB")
                if args.keep_logs:
                    print(f"gateway log: {gw.stdout_path}")
        finally:
            for proxy in proxies:
                proxy.close()
            await runner.cleanup()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("soak: OK" if not problems else f"soak: FAILED ({len(problems)} problems)")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=24)
    parser.add_argument("--seed", type=int, default=6)
    parser.add_argument("--keep-logs", action="store_true")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
