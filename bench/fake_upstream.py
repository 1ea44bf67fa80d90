"""A fast fake OpenAI (and Anthropic, and Gemini) upstream for the benchmark: every answer is precomputed bytes.

    python bench/fake_upstream.py --port 9000

POST /v1/chat/completions:
- without `"stream": true`: one fixed `chat.completion` JSON (with `usage`), sent with a Content-Length;
- with `"stream": true` and model `bench-N` (e.g. `bench-20`, `bench-1000`): N `chat.completion.chunk`
  events (the first carries the role, the N-th `finish_reason: "stop"`), then a usage chunk
  (`choices: []`) and `data: [DONE]`. Written as fast as possible, ONE `write()` PER EVENT (N + 2 writes,
  never batched), so the relays under test read the body in many small pieces as they would from a
  real provider. The usage chunk is always sent (the gateway asks for it anyway). `claude-bench-N` and
  `gemini-bench-N` are answered the same (the pass-through relays the other routes' bodies here);
- with `"stream": true` and model `bench-slow-N`: the same events, one chunk per second for N seconds
  (the 1,000-open-streams measurement);
- with `"stream": true` and model `bench-padded-N`: the same events with OpenAI's default `obfuscation` field
  on every chunk (1-16 random characters, against length side channels: what OpenAI itself sends unless a
  client turns it off with `stream_options.include_obfuscation: false`).

POST /v1/messages (Anthropic's Messages API, the native Claude route of the `agent-claude` variant), models
`bench-N`: the same answers in Anthropic's wire format (`../shared/wire/anthropic/sdk-stream-basic.sse`):
message_start, content_block_start, ping, N text deltas, content_block_stop, message_delta with the usage,
message_stop; one write per event.

POST /v1beta/models/{model}:generateContent and :streamGenerateContent?alt=sse (Google's Gemini API, the Gemini
route's variants), models `gemini-bench-N` and `gemini-bench-running-N` (named by the path; the body must be JSON but
is not read): the same
answers as the Gemini Developer API writes them (`../shared/wire/gemini/googleai/*-basic-reply-short.*`). Not
streamed: one candidate (text part, role `model`, `finishReason: "STOP"`, `safetyRatings`, `avgLogprobs`),
`usageMetadata` with the candidates' count and the details by modality, `modelVersion`, indented by two spaces.
Streamed: N events `data: {...}` ended by CRLF CRLF, without event names or [DONE] (the body just ends), their JSON
compact but for a space after every colon, as recorded; each one candidate with one text part and `usageMetadata`
with the prompt's counts; the N-th adds `finishReason: "STOP"` and the candidates' counts. `running-`: every event
has the candidates' count so far (Gemini 2.5 on, `googleai/streaming-success-code-execution.txt`). One write per
event.
An unknown model: 404 in google.rpc.Status's shape. Any other path: 404.

The direct case, the bare pass-through and the gateway all talk to this same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
from collections.abc import Callable

import orjson
import uvloop

CREATED = 1_700_000_000
PROMPT_TOKENS = 24
# claude-, gemini-: the pass-through relays the other routes' bodies to chat
_MODEL = re.compile(r"^(?:claude-|gemini-)?bench-(slow-)?(padded-|running-)?(\d+)$")
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _kind(model: str) -> str | None:
    """How a bench model's stream differs from the plain one: "padded-", "running-" or None."""
    m = _MODEL.match(model)
    return m.group(2) if m is not None else None


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


def _event(model: str, choices: list[dict[str, object]], usage: dict[str, int] | None = None,
           pad: random.Random | None = None) -> bytes:
    chunk: dict[str, object] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": CREATED,
                                "model": model, "system_fingerprint": "fp_bench", "choices": choices}
    if usage is not None:
        chunk["usage"] = usage
    if pad is not None:
        chunk["obfuscation"] = "".join(pad.choices(_PAD, k=pad.randint(1, 16)))
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def stream_events(model: str, n: int) -> list[bytes]:
    """N content chunks, the usage chunk, [DONE]: each element is one write."""
    pad = random.Random(n) if _kind(model) == "padded-" else None
    events = []
    for i in range(n):
        delta: dict[str, object] = {"content": f" tok{i}"}
        if i == 0:
            delta = {"role": "assistant", "content": "", "refusal": None}
        last = i == n - 1
        events.append(_event(model, [{"index": 0, "delta": {} if last else delta, "logprobs": None,
                                      "finish_reason": "stop" if last else None}], pad=pad))
    events.append(_event(model, [], {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n,
                                     "total_tokens": PROMPT_TOKENS + n}, pad))
    events.append(b"data: [DONE]\n\n")
    return events


def message(model: str) -> bytes:
    """The non-streamed Anthropic answer: the same text and usage, as Claude sends them."""
    return orjson.dumps({
        "id": "msg_bench", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "Hello! This is the benchmark's fixed answer, about twenty tokens "
                                             "long, for every request."}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 20, "service_tier": "standard"},
    })


def _claude_event(kind: str, data: dict[str, object]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def message_events(model: str, n: int) -> list[bytes]:
    """An Anthropic stream of N text deltas: each element is one write."""
    start = {"id": "msg_bench", "type": "message", "role": "assistant", "model": model, "content": [],
             "stop_reason": None, "stop_sequence": None,
             "usage": {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                       "cache_read_input_tokens": 0, "output_tokens": 1, "service_tier": "standard"}}
    return [_claude_event("message_start", {"message": start}),
            _claude_event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
            _claude_event("ping", {}),
            *(_claude_event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": f" tok{i}"}})
              for i in range(n)),
            _claude_event("content_block_stop", {"index": 0}),
            _claude_event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                            "usage": {"output_tokens": n}}),
            _claude_event("message_stop", {})]


_NEGLIGIBLE = [{"category": f"HARM_CATEGORY_{name}", "probability": "NEGLIGIBLE"}
               for name in ("HATE_SPEECH", "DANGEROUS_CONTENT", "HARASSMENT", "SEXUALLY_EXPLICIT")]


def _gemini_usage(candidates: int | None, details: bool = True) -> dict[str, object]:
    """`usageMetadata` as the Developer API sends it: the prompt's counts, and the candidates' once known (with
    their details by modality at the end: a 2.5 stream's running count comes without them)."""
    usage: dict[str, object] = {"promptTokenCount": PROMPT_TOKENS}
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
    usage["totalTokenCount"] = PROMPT_TOKENS + (candidates or 0)
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]
    if candidates is not None and details:
        usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
    return usage


def generation(model: str) -> bytes:
    """The non-streamed Gemini answer (`generateContent`): the same text and usage, indented as Google sends it."""
    return json.dumps({
        "candidates": [{"content": {"parts": [{"text": "Hello! This is the benchmark's fixed answer, about twenty "
                                                        "tokens long, for every request."}], "role": "model"},
                        "finishReason": "STOP", "safetyRatings": _NEGLIGIBLE, "avgLogprobs": -0.048741644079034981}],
        "usageMetadata": _gemini_usage(20), "modelVersion": model,
    }, indent=2).encode()


def generation_events(model: str, n: int) -> list[bytes]:
    """A Gemini stream (`streamGenerateContent?alt=sse`) of N text parts: each element is one write. The
    candidates' count on the last event only, as Gemini 2.0 sends it; on every event (the count so far, one token
    an event), as Gemini 2.5 on does, for `gemini-bench-running-N`."""
    running = _kind(model) == "running-"
    events = []
    for i in range(n):
        last = i == n - 1
        candidate: dict[str, object] = {"content": {"parts": [{"text": f" tok{i}"}], "role": "model"}}
        if last:
            candidate["finishReason"] = "STOP"
        usage = _gemini_usage(n if last else i + 1 if running else None, details=last)
        chunk = {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model}
        events.append(b"data: " + json.dumps(chunk, separators=(",", ": ")).encode() + b"\r\n\r\n")
    return events


def gemini_not_found(model: str) -> bytes:
    return json.dumps({"error": {"code": 404, "message": f"models/{model} is not found for API version v1beta, or "
                                 "is not supported for generateContent.", "status": "NOT_FOUND"}}, indent=2).encode()


class Answers:
    """Precomputed bytes per model name (computed on first use, then reused); a stream's events as chunks."""

    def __init__(self, whole: Callable[[str], bytes], events: Callable[[str, int], list[bytes]]) -> None:
        self._whole, self._events = whole, events
        self._json: dict[str, bytes] = {}
        self._streams: dict[str, tuple[list[bytes], bool]] = {}

    def json(self, model: str) -> bytes:
        body = self._json.get(model)
        if body is None:
            body = self._json[model] = self._whole(model)
        return body

    def stream(self, model: str) -> tuple[list[bytes], bool] | None:
        found = self._streams.get(model)
        if found is None:
            m = _MODEL.match(model)
            if m is None:
                return None
            events = self._events(model, max(int(m.group(3)), 1))
            found = self._streams[model] = ([chunked(event) for event in events], bool(m.group(1)))
        return found


ANSWERS = {b"/v1/chat/completions": Answers(completion, stream_events),
           b"/v1/messages": Answers(message, message_events)}
GEMINI = Answers(generation, generation_events)
GEMINI_PATH = b"/v1beta/models/"
GEMINI_METHODS = {b"generateContent": False, b"streamGenerateContent?alt=sse": True}  # method -> streamed
NOT_FOUND = orjson.dumps({"error": {"message": "unknown model; use bench-N or bench-slow-N",
                                    "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})
BAD_JSON = orjson.dumps({"error": {"message": "bad JSON", "type": "invalid_request_error"}})
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
LAST_CHUNK = b"0\r\n\r\n"
MAX_HEAD = 64 * 1024


def response(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body)


def chunked(event: bytes) -> bytes:
    """One event as one HTTP/1.1 chunk: what a server's single write of it puts on the wire."""
    return b"%x\r\n%s\r\n" % (len(event), event)


class Upstream(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, written for speed: the request's body decides the answer, which is
    precomputed bytes. A streamed answer is one `transport.write` per event, each its own chunk.

    A hand-written server here, not aiohttp: aiohttp's response writer cost ~8 us of this process's CPU per
    event, which made the fake upstream, not the relays under test, what bounded the 1,000-chunk cases.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # a slow stream is being written: later requests wait for it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport: not asyncio's class

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.serve()

    def serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while not transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    transport.close()
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            fields = dict(line.split(b":", 1) for line in lines[1:] if b":" in line)
            headers = {k.strip().lower(): v.strip() for k, v in fields.items()}
            length = int(headers.get(b"content-length", b"0"))
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            method, path = [*lines[0].split(b" "), b"", b""][:2]
            answers = ANSWERS.get(path)
            gemini = answers is None and path.startswith(GEMINI_PATH)
            if method != b"POST" or (answers is None and not gemini) or b"transfer-encoding" in headers:
                transport.write(response("404 Not Found", b"not found", "text/plain"))
                continue
            if answers is None:
                self.generate(transport, body, path)
            else:
                self.answer(transport, body, answers)
            if self.busy:
                return

    def answer(self, transport: asyncio.Transport, raw: bytes, answers: Answers) -> None:
        try:
            body = orjson.loads(raw)
            model = str(body.get("model", "bench-1"))
        except (orjson.JSONDecodeError, AttributeError):
            transport.write(response("400 Bad Request", BAD_JSON))
            return
        if body.get("stream") is not True:
            transport.write(response("200 OK", answers.json(model)))
            return
        found = answers.stream(model)
        if found is None:
            transport.write(response("404 Not Found", NOT_FOUND))
            return
        self.send(transport, *found)

    def generate(self, transport: asyncio.Transport, raw: bytes, path: bytes) -> None:
        """Gemini: the model and whether to stream are in the path (`{model}:{method}`), the body is not read."""
        model, _, method = path[len(GEMINI_PATH):].partition(b":")
        streamed = GEMINI_METHODS.get(method)
        if streamed is None:
            transport.write(response("404 Not Found", b"not found", "text/plain"))
            return
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            transport.write(response("400 Bad Request", BAD_JSON))
            return
        name = model.decode("utf-8", "replace")
        found = GEMINI.stream(name)  # None for a model not named as the bench's are
        if found is None:
            transport.write(response("404 Not Found", gemini_not_found(name)))
        elif streamed:
            self.send(transport, *found)
        else:
            transport.write(response("200 OK", GEMINI.json(name)))

    def send(self, transport: asyncio.Transport, frames: list[bytes], slow: bool) -> None:
        """A stream's head, then its events as they were precomputed, one write each."""
        transport.write(STREAM_HEAD)
        if slow:
            self.busy = True
            asyncio.get_running_loop().create_task(self.slowly(transport, frames))
            return
        for frame in frames:
            transport.write(frame)
        transport.write(LAST_CHUNK)

    async def slowly(self, transport: asyncio.Transport, frames: list[bytes]) -> None:
        """The role chunk at once, then one content chunk a second; finish, usage and [DONE] together."""
        for i, frame in enumerate(frames):
            if 0 < i < len(frames) - 2:
                await asyncio.sleep(1.0)
            if transport.is_closing():
                return
            transport.write(frame)
        transport.write(LAST_CHUNK)
        self.busy = False
        if self.buf:
            self.serve()


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
