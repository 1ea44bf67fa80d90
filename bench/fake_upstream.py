"""A fast fake OpenAI upstream for the benchmark: every answer is precomputed bytes.

    python bench/fake_upstream.py --port 9000

POST /v1/chat/completions (any other path: 404):
- without `"stream": true`: one fixed `chat.completion` JSON (with `usage`), sent with a Content-Length;
- with `"stream": true` and model `bench-N` (e.g. `bench-20`, `bench-1000`): N `chat.completion.chunk`
  events (the first carries the role, the N-th `finish_reason: "stop"`), then a usage chunk
  (`choices: []`) and `data: [DONE]`. Written as fast as possible, ONE `write()` PER EVENT (N + 2 writes,
  never batched), so the relays under test read the body in many small pieces as they would from a
  real provider. The usage chunk is always sent (the gateway asks for it anyway);
- with `"stream": true` and model `bench-slow-N`: the same events, one chunk per second for N seconds
  (the 1,000-open-streams measurement).

The direct case, the bare pass-through and the gateway all talk to this same server.
"""

from __future__ import annotations

import argparse
import asyncio
import re

import orjson
import uvloop
from aiohttp import web

CREATED = 1_700_000_000
PROMPT_TOKENS = 24
_MODEL = re.compile(r"^bench-(slow-)?(\d+)$")
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}


def completion(model: str) -> bytes:
    """The non-streamed answer: a short text with usage, as OpenAI sends it."""
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": CREATED, "model": model,
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! This is the benchmark's "
                                             "fixed answer, about twenty tokens long, for every request.",
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 20, "total_tokens": PROMPT_TOKENS + 20,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
        "service_tier": "default",
    })


def _event(model: str, choices: list[dict[str, object]], usage: dict[str, int] | None = None) -> bytes:
    chunk: dict[str, object] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
                                "model": model, "system_fingerprint": "fp_bench", "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_events(model: str, n: int) -> list[bytes]:
    """N content chunks, the usage chunk, [DONE]: each element is one write."""
    events = []
    for i in range(n):
        delta: dict[str, object] = {"content": f" tok{i}"}
        if i == 0:
            delta = {"role": "assistant", "content": "", "refusal": None}
        last = i == n - 1
        events.append(_event(model, [{"index": 0, "delta": {} if last else delta, "logprobs": None,
                                      "finish_reason": "stop" if last else None}]))
    events.append(_event(model, [], {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n,
                                     "total_tokens": PROMPT_TOKENS + n}))
    events.append(b"data: [DONE]\n\n")
    return events


class Answers:
    """Precomputed bytes per model name (computed on first use, then reused)."""

    def __init__(self) -> None:
        self._json: dict[str, bytes] = {}
        self._streams: dict[str, tuple[list[bytes], bool]] = {}

    def json(self, model: str) -> bytes:
        body = self._json.get(model)
        if body is None:
            body = self._json[model] = completion(model)
        return body

    def stream(self, model: str) -> tuple[list[bytes], bool] | None:
        found = self._streams.get(model)
        if found is None:
            m = _MODEL.match(model)
            if m is None:
                return None
            found = self._streams[model] = (stream_events(model, max(int(m.group(2)), 1)), bool(m.group(1)))
        return found


ANSWERS = Answers()
_NOT_FOUND = web.json_response({"error": {"message": "unknown model; use bench-N or bench-slow-N",
                                          "type": "invalid_request_error", "param": "model",
                                          "code": "model_not_found"}}, status=404)


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
        model = str(body.get("model", "bench-1"))
    except (orjson.JSONDecodeError, AttributeError):
        return web.json_response({"error": {"message": "bad JSON", "type": "invalid_request_error"}}, status=400)
    if body.get("stream") is not True:
        return web.Response(body=ANSWERS.json(model), content_type="application/json")
    found = ANSWERS.stream(model)
    if found is None:
        return web.Response(body=_NOT_FOUND.body, status=404, content_type="application/json")
    events, slow = found
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    try:
        await resp.prepare(request)
        if slow:
            for i, event in enumerate(events):
                if 0 < i < len(events) - 2:
                    await asyncio.sleep(1.0)
                await resp.write(event)
        else:
            for event in events:
                await resp.write(event)
        await resp.write_eof()
    except ConnectionResetError:  # the client left (wrk closes its connections at the end of a run)
        pass
    return resp


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host=args.host, port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop(), backlog=4096)


if __name__ == "__main__":
    main()
