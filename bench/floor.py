"""The floor: the least a gateway can run per request for what the issues require of every request, measured.

    python bench/floor.py --port 9002 --upstream http://127.0.0.1:9000 --redis redis://127.0.0.1:6379/0

The bare pass-through (`passthrough.py`) plus, per request, only what no design of a metered gateway can
leave out, each done the cheapest way the chosen libraries allow: the key looked up by its SHA-256 in a
dict (the gateway's key cache, always warm), the body parsed and written again for the upstream, one
admission and one settlement through the gateway's own store (`RedisStore` on its pipelined connection:
the billing issue's round trip in and out, rate windows, hold, record and audit), the answer parsed for
its usage and priced in nano-dollars, the bill put on it, one JSON log line (batched), two counters and a
histogram. No validation, routing, translation, retries, egress pool, timeouts, limits headers, secret
redaction or error handling: a request this server cannot serve breaks it.

`instructions.py --only floor` counts it: how much of the gap between the gateway and the pass-through
any design would pay, and so how much of it is the gateway's own choices and features (bench/README,
twentieth round). Not a server to run anything on.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import time
from typing import Any

import orjson
import passthrough
from aiohttp import web
from prometheus_client import Counter, Histogram

from gateway.store import Admission, KeyRecord
from gateway.store.redis import RedisStore

STORE = web.AppKey("store", RedisStore)
KEYS = web.AppKey("keys", dict)
LOG = web.AppKey("log", list)

# the bench config's price, in nano-dollars per token: $0.15 and $0.60 per million
INPUT_NANO, OUTPUT_NANO = 150, 600
REQUESTS = Counter("floor_requests", "requests", ["model", "status"])
TOKENS = Counter("floor_tokens", "tokens", ["model", "kind"])
SECONDS = Histogram("floor_seconds", "duration", ["model"])
_CHILDREN: dict[str, tuple[Any, ...]] = {}


def _children(model: str) -> tuple[Any, ...]:
    if (found := _CHILDREN.get(model)) is None:
        found = _CHILDREN[model] = (REQUESTS.labels(model, "200"), TOKENS.labels(model, "prompt"),
                                    TOKENS.labels(model, "completion"), SECONDS.labels(model))
    return found


def _bill(answer: dict[str, Any], generation: str) -> tuple[dict[str, int], int]:
    """The answer's usage and its price in nano-dollars, the bill put on the answer."""
    usage = answer["usage"]
    cost = usage["prompt_tokens"] * INPUT_NANO + usage["completion_tokens"] * OUTPUT_NANO
    answer["billing"] = {"cost_usd": f"{cost / 1e9:.9f}", "generation_id": generation}
    return usage, cost


async def chat(request: web.Request) -> web.StreamResponse:
    started = time.monotonic()
    app = request.app
    token = request.headers.get("Authorization", "")[7:]
    key: KeyRecord = app[KEYS][hashlib.sha256(token.encode()).hexdigest()]
    raw = await request.read()
    body = orjson.loads(raw)
    model = body["model"]
    streamed = body.get("stream") is True
    generation = "gen-" + os.urandom(12).hex()
    hold = len(raw) // 3 * INPUT_NANO + body.get("max_tokens", 4096) * OUTPUT_NANO
    admitted = await app[STORE].admit(Admission(key.id, model, generation, hold, 600, key.rpm, key.rpd, None,
                                                None))
    if admitted.outcome != "ok":
        return web.Response(status=429)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench-upstream-key-0000"}
    async with app[passthrough.SESSION].post(app[passthrough.URL], data=orjson.dumps(body),
                                             headers=headers) as upstream:
        if streamed:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in upstream.content.iter_any():
                if b'"usage"' in data:  # the usage chunk (the last but [DONE]): the bill goes on it
                    at = data.rindex(b"data: {")
                    line, _, rest = data[at:].partition(b"\n\n")
                    chunk = orjson.loads(line[6:])
                    usage, cost = _bill(chunk, generation)
                    data = b"".join((data[:at], b"data: ", orjson.dumps(chunk), b"\n\n", rest))
                await resp.write(data)
            await resp.write_eof()
        else:
            answer = orjson.loads(await upstream.read())
            usage, cost = _bill(answer, generation)
            resp = web.Response(body=orjson.dumps(answer), content_type="application/json")
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    record = {"model": model, "prompt_tokens": str(prompt), "completion_tokens": str(completion),
              "cost": str(cost), "created_at": "2026-12-04T00:00:00Z", "status": "200"}
    asyncio.get_running_loop().create_task(app[STORE].settle(key.id, generation, cost, prompt + completion,
                                                              record, 86400))
    requests, prompt_tokens, completion_tokens, seconds = _children(model)
    requests.inc()
    prompt_tokens.inc(prompt)
    completion_tokens.inc(completion)
    elapsed = time.monotonic() - started
    seconds.observe(elapsed)
    app[LOG].append(orjson.dumps({"event": "request", "request_id": generation, "key_id": key.id, "model": model,
                                  "status": 200, "prompt_tokens": prompt, "completion_tokens": completion,
                                  "cost_nano": cost, "duration_ms": round(elapsed * 1000, 3)}))
    return resp


def resources(redis: str, prefix: str) -> Any:
    async def context(app: web.Application):  # type: ignore[no-untyped-def]
        store = app[STORE] = RedisStore(redis, prefix=prefix)
        app[KEYS] = {key.key_hash: key for key in await store.list_keys()}
        app[LOG] = []

        async def flush() -> None:  # the log lines, batched as the gateway's are (at most every 50 ms)
            with open(os.devnull, "ab") as sink:
                while True:
                    await asyncio.sleep(0.05)
                    if app[LOG]:
                        lines, app[LOG] = app[LOG], []
                        sink.write(b"\n".join(lines) + b"\n")

        flusher = asyncio.get_running_loop().create_task(flush())
        yield
        flusher.cancel()
        await store.close()
    return context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", default="bench:")
    args = passthrough.arguments(parser)
    passthrough.serve(chat, args.port, args.upstream, resources(args.redis, args.prefix))


if __name__ == "__main__":
    main()
