"""A fake OpenAI-compatible upstream that speaks OpenAI's recorded wire format.

Non-streamed answers are `docs-chat-default.response.json` with `model` set to the requested model.
Streamed answers replay the recorded SSE events of `sdk-stream-text-with-usage.sse` (or
`sdk-stream-tool-call.sse` with `tool_stream`, or the recording `stream_recording` names) byte for byte,
one event per write; the final `choices: []` usage chunk is sent only when the request set
`stream_options.include_usage`, as real OpenAI does.

Other endpoints, in OpenAI's documented shapes (openai-openapi.yaml examples; the wire folder holds
only abridged or request-side recordings of them):

- `POST /v1/completions`: `docs-completions.response.json` with the requested model; streamed, its text
  in `text_completion` chunks of one word each (the shape of `docs-completions-stream.abridged.txt`), a
  last chunk with `finish_reason`, a `choices: []` usage chunk when `stream_options.include_usage`, [DONE].
- `POST /v1/embeddings`: one `embedding` per input string (`EMBEDDING` floats; base64 float32 when
  `encoding_format: base64`, as the SDK asks by default) and the documented usage of 8 prompt tokens.
- `POST /v1/moderations`: the documented `modr-...` example answer, one result per input, completed with
  the categories (`illicit`, `illicit/violent`, `category_applied_input_types`) that omni-moderation
  answers with and the current spec requires.
- `POST /v1/images/generations`: `n` images as `b64_json` of a 1x1 PNG, with the documented usage.

With `sparse`, chat answers (streamed or not) come as OpenAI-compatible servers (xAI, DeepSeek, Ollama)
are seen to send them: the recorded ones without each choice's `index` and `logprobs`, without a null
`finish_reason`, the finish chunk without its `delta`, the message without `refusal`, and a null
`system_fingerprint`.

With `content` (or `tool_call`, `{"name", "arguments"}`) set, chat answers say that text (or make that call,
from `docs-chat-tools.response.json` / `sdk-stream-tool-call.sse`): see `fakes.scripted`.

With `reasoning_field` set, chat answers carry the model's reasoning (`REASONING`) under that name, as
reasoning models' servers send it: `reasoning_content` (DeepSeek) or `reasoning` (OpenRouter, Ollama's `/v1`,
newer vLLM); streamed, as deltas of their own (`REASONING_PARTS`) between the role chunk and the content.

With `reasoning_efforts` set, a model it names takes only those `reasoning_effort` values, as OpenAI and xAI
answer: an empty tuple refuses the field (gpt-4o, grok-4: 400 `unsupported_parameter`), another value is a 400
`unsupported_value` listing the values taken; models it does not name take any.

With `allowed_peers` set, a request from any other peer address is refused with 451, the way a provider
blocks a region: the egress tests use it as an upstream that serves only the proxy's outgoing address.
Each recorded request carries its peer address.

A test sets the controls on a `FakeOpenAI` before calling and reads `fake.requests` afterwards::

    fake = FakeOpenAI()
    client = await aiohttp_client(make_app(fake))
    fake.stall_after_chunks = 2
    ...
    await asyncio.wait_for(fake.client_disconnected.wait(), 5)
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fakes import scripted

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WIRE = SHARED / "wire" / "openai"
POLL_S = 0.05
EMBEDDING = [0.0023064255, -0.009327292, -0.0028842222]
PNG_1X1 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
MODERATION_RESULT = {  # the example answer of POST /moderations in openai-openapi.yaml
    "flagged": True,
    "categories": {"sexual": False, "hate": False, "harassment": True, "self-harm": False, "sexual/minors": False,
                   "hate/threatening": False, "violence/graphic": False, "self-harm/intent": False,
                   "self-harm/instructions": False, "harassment/threatening": True, "violence": True},
    "category_scores": {"sexual": 0.000011726012417057063, "hate": 0.22706663608551025,
                        "harassment": 0.5215635299682617, "self-harm": 2.227119921371923e-6,
                        "sexual/minors": 7.107352217872176e-8, "hate/threatening": 0.023547329008579254,
                        "violence/graphic": 0.00003391829886822961, "self-harm/intent": 1.646940972932498e-6,
                        "self-harm/instructions": 1.1198755256458526e-9,
                        "harassment/threatening": 0.5694745779037476, "violence": 0.9971134662628174},
}
# the documented example predates the categories omni-moderation answers with and the spec now requires
MODERATION_RESULT["categories"].update({"illicit": False, "illicit/violent": False})  # type: ignore[union-attr]
MODERATION_RESULT["category_scores"].update({"illicit": 0.00001, "illicit/violent": 0.00001})  # type: ignore[union-attr]
MODERATION_RESULT["category_applied_input_types"] = {name: ["text"] for name in MODERATION_RESULT["categories"]}
REASONING_PARTS = ("The user greets me.", " A short greeting back will do.")
REASONING = "".join(REASONING_PARTS)
IMAGE_USAGE = {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
               "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}


def recorded_events(name: str) -> list[bytes]:
    """The `data: ...` events of a recorded stream, each with its terminating blank line."""
    raw = (WIRE / name).read_bytes()
    return [block + b"\n\n" for block in raw.split(b"\n\n") if block.strip()]


def _payload(event: bytes) -> Any:
    data = event.removeprefix(b"data: ").strip()
    return None if data == b"[DONE]" else json.loads(data)


def _is_usage_chunk(event: bytes) -> bool:
    chunk = _payload(event)
    return chunk is not None and chunk.get("choices") == []


def _is_tail(event: bytes) -> bool:
    """[DONE], the usage chunk or a chunk with a finish_reason."""
    chunk = _payload(event)
    return chunk is None or not chunk["choices"] or any(c.get("finish_reason") for c in chunk["choices"])


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None for GET / unparsable bodies
    raw: bytes
    peer: str = ""  # the connection's peer address (request.remote), e.g. "127.0.0.2" behind a proxy


class FakeOpenAI:
    """Controls (plain attributes, set before calling; `reset()` restores them) and records."""

    def __init__(self) -> None:
        self.models = ["gpt-4o", "gpt-4o-mini", "gpt-5"]
        self.reset()

    def reset(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.status = 200
        self.fail_times: int | None = None  # answer `status` only this many times, then recover
        self.error_headers: dict[str, str] = {}  # e.g. Retry-After on an error answer
        self.error_body: bytes | str | dict[str, Any] | None = None
        self.delay_before_headers_s = 0.0
        self.delay_between_chunks_s = 0.0
        self.stall_after_chunks: int | None = None
        self.silence_s_before_first_chunk = 0.0
        self.giant_chunk_bytes: int | None = None
        self.tool_stream = False
        self.sparse = False  # leave out what compatible servers leave out (see the module docstring)
        self.stream_recording: str | None = None  # another recorded stream to replay (e.g. sdk-stream-refusal.sse)
        self.close_mid_stream_after: int | None = None
        self.client_disconnected = asyncio.Event()
        self.chunks_sent = 0  # events written by the last streamed answer
        self.shutting_down = False
        self.allowed_peers: set[str] | None = None  # None: everyone; else other peers get 451
        self.reasoning_field: str | None = None  # "reasoning_content" or "reasoning": answers carry REASONING
        self.served_tier: str | None = None  # the `service_tier` answers (and every chunk) name; None: as recorded
        self.content: str | None = None  # chat answers say this text (fakes.scripted)
        self.tool_call: dict[str, Any] | None = None  # chat answers make this call: {"name", "arguments"}
        self.reasoning_efforts: dict[str, tuple[str, ...]] = {}  # model -> the reasoning_effort values it takes

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def stream_events(self, body: dict[str, Any]) -> list[bytes]:
        """The SSE events (bytes) a streamed answer to `body` consists of, [DONE] included."""
        name = self.stream_recording or ("sdk-stream-tool-call.sse" if self.tool_stream or self.tool_call
                                         else "sdk-stream-text-with-usage.sse")
        events = scripted.openai_events(recorded_events(name), self.content, self.tool_call)
        if self.giant_chunk_bytes is not None:
            events = _with_giant_content(events, self.giant_chunk_bytes)
        options = body.get("stream_options")
        if not (isinstance(options, dict) and options.get("include_usage") is True):
            events = [event for event in events if not _is_usage_chunk(event)]
        if self.reasoning_field is not None:
            events = _with_reasoning(events, self.reasoning_field)
        if self.sparse:
            events = [_sparse_event(event) for event in events]
        if self.served_tier is not None:  # OpenAI names the tier on every chunk
            events = [_with_tier(event, self.served_tier) for event in events]
        return events


def _with_tier(event: bytes, tier: str) -> bytes:
    chunk = _payload(event)
    if chunk is None:
        return event
    return b"data: " + json.dumps({**chunk, "service_tier": tier}, separators=(",", ":")).encode() + b"\n\n"


def _with_reasoning(events: list[bytes], name: str) -> list[bytes]:
    """The role chunk, one chunk a part of REASONING under `name` (in the role chunk's envelope), the rest."""
    first = json.loads(events[0].removeprefix(b"data: "))
    chunks = []
    for part in REASONING_PARTS:
        first["choices"][0]["delta"] = {name: part}
        chunks.append(b"data: " + json.dumps(first, separators=(",", ":")).encode() + b"\n\n")
    return [events[0], *chunks, *events[1:]]


def _sparse(answer: dict[str, Any]) -> dict[str, Any]:
    """A chat answer or chunk as a compatible server may send it (see the module docstring)."""
    if "system_fingerprint" in answer:
        answer["system_fingerprint"] = None
    for choice in answer.get("choices") or ():
        choice.pop("index", None)
        choice.pop("logprobs", None)
        if choice.get("finish_reason") is None:
            choice.pop("finish_reason", None)
        elif choice.get("delta") == {}:
            del choice["delta"]
        if isinstance(choice.get("message"), dict):
            choice["message"].pop("refusal", None)
    return answer


def _sparse_event(event: bytes) -> bytes:
    chunk = _payload(event)
    if chunk is None:
        return event
    return b"data: " + json.dumps(_sparse(chunk), separators=(",", ":")).encode() + b"\n\n"


def _with_giant_content(events: list[bytes], size: int) -> list[bytes]:
    """Role chunk, ONE content chunk of `size` bytes on a single data line, then the recorded tail."""
    first = json.loads(events[0].removeprefix(b"data: "))
    first["choices"][0]["delta"] = {"content": "x" * size}
    giant = b"data: " + json.dumps(first, separators=(",", ":")).encode() + b"\n\n"
    return [events[0], giant, *(event for event in events if _is_tail(event))]


FAKE_KEY = web.AppKey("fake_openai", FakeOpenAI)


def make_app(fake: FakeOpenAI) -> web.Application:
    app = web.Application()
    app[FAKE_KEY] = fake
    fake.shutting_down = False
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/v1/moderations", _moderations)
    app.router.add_post("/v1/images/generations", _images)
    app.router.add_get("/v1/models", _models)
    app.on_shutdown.append(_on_shutdown)
    return app


async def _on_shutdown(app: web.Application) -> None:
    app[FAKE_KEY].shutting_down = True


async def _record(request: web.Request) -> Any:
    fake = request.app[FAKE_KEY]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    fake.requests.append(RecordedRequest(request.path, dict(request.headers), body, raw, request.remote or ""))
    return body


def _refused_peer(request: web.Request) -> web.Response | None:
    """451 in OpenAI's error shape when `allowed_peers` is set and the peer is not in it."""
    allowed = request.app[FAKE_KEY].allowed_peers
    peer = request.remote or ""
    if allowed is None or peer in allowed:
        return None
    body = _error(f"connections from {peer} are blocked in this region", "invalid_request_error")
    body["error"]["code"] = "unavailable_for_legal_reasons"
    return web.json_response(body, status=451)


async def _models(request: web.Request) -> web.Response:
    fake = request.app[FAKE_KEY]
    await _record(request)
    if (refused := _refused_peer(request)) is not None:
        return refused
    data = [{"id": m, "object": "model", "created": 1715367049, "owned_by": "system"} for m in fake.models]
    return web.json_response({"object": "list", "data": data})


async def _chat(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = await _record(request)
    if (refused := _refused_peer(request)) is not None:
        return refused
    try:
        if not await _wait(request, fake.delay_before_headers_s):
            return web.Response()
        if (early := _configured_failure(fake, body)) is not None:
            return early
        if (refused := _refused_effort(fake, body)) is not None:
            return refused
        if not body.get("stream"):
            answer = json.loads((WIRE / "docs-chat-default.response.json").read_bytes())
            answer = scripted.openai_answer(WIRE, answer, fake.content, fake.tool_call)
            answer["model"] = body.get("model", answer["model"])
            if fake.reasoning_field is not None:
                answer["choices"][0]["message"][fake.reasoning_field] = REASONING
            answer = _with_choices(answer, body.get("n"))
            if fake.served_tier is not None:
                answer["service_tier"] = fake.served_tier
            return web.json_response(_sparse(answer) if fake.sparse else answer)
        return await _stream(request, fake, fake.stream_events(body))
    except (asyncio.CancelledError, ConnectionResetError):
        fake.client_disconnected.set()
        raise


async def _refusal(request: web.Request, fake: FakeOpenAI, body: Any) -> web.Response | None:
    """What every endpoint answers before its own work: region block, configured failure, bad JSON."""
    if (refused := _refused_peer(request)) is not None:
        return refused
    await asyncio.sleep(fake.delay_before_headers_s)
    return _configured_failure(fake, body)


def _configured_failure(fake: FakeOpenAI, body: Any) -> web.Response | None:
    """The configured failure (`status`, `fail_times`, `error_headers`), or OpenAI's 400 for a body that is
    not a JSON object; None when the request should be answered."""
    if fake.status != 200 and (fake.fail_times is None or fake.fail_times > 0):
        if fake.fail_times is not None:
            fake.fail_times -= 1
        response = _error_response(fake.status, fake.error_body)
        response.headers.update(fake.error_headers)
        return response
    if not isinstance(body, dict):
        return _error_response(400, _error("We could not parse the JSON body of your request.",
                                           "invalid_request_error"))
    return None


def _refused_effort(fake: FakeOpenAI, body: dict[str, Any]) -> web.Response | None:
    """OpenAI's 400 for a `reasoning_effort` the model does not take (see `reasoning_efforts`)."""
    taken, effort = fake.reasoning_efforts.get(str(body.get("model"))), body.get("reasoning_effort")
    if taken is None or effort is None or effort in taken:
        return None
    if not taken:
        error = _error("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
                       "invalid_request_error")
        error["error"].update(param="reasoning_effort", code="unsupported_parameter")
    else:
        values = ", ".join(f"'{value}'" for value in taken)
        error = _error(f"Unsupported value: '{effort}' is not supported with the '{body.get('model')}' model. "
                       f"Supported values are: {values}.", "invalid_request_error")
        error["error"].update(param="reasoning_effort", code="unsupported_value")
    return web.json_response(error, status=400)


def completion_events(body: dict[str, Any]) -> list[bytes]:
    """A streamed legacy completion of the recorded answer's text, one word a chunk."""
    answer = json.loads((WIRE / "docs-completions.response.json").read_bytes())
    head = {"id": answer["id"], "object": "text_completion", "created": answer["created"],
            "model": body.get("model"), "system_fingerprint": answer["system_fingerprint"]}
    words = answer["choices"][0]["text"].split(" ")
    texts = [w if i == 0 else " " + w for i, w in enumerate(words)]
    chunks = [{**head, "choices": [{"text": t, "index": 0, "logprobs": None, "finish_reason": None}]} for t in texts]
    chunks.append({**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]})
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


async def _completions(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = await _record(request)
    if (refused := await _refusal(request, fake, body)) is not None:
        return refused
    if body.get("stream"):
        return await _stream(request, fake, completion_events(body))
    answer = json.loads((WIRE / "docs-completions.response.json").read_bytes())
    answer["model"] = body.get("model", answer["model"])
    return web.json_response(answer)


def embedding_base64(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


async def _embeddings(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = await _record(request)
    if (refused := await _refusal(request, fake, body)) is not None:
        return refused
    inputs = body.get("input")
    inputs = [inputs] if isinstance(inputs, str) else inputs if isinstance(inputs, list) else []
    vector: Any = embedding_base64(EMBEDDING) if body.get("encoding_format") == "base64" else EMBEDDING
    data = [{"object": "embedding", "embedding": vector, "index": i} for i in range(len(inputs))]
    return web.json_response({"object": "list", "data": data, "model": body.get("model"),
                              "usage": {"prompt_tokens": 8, "total_tokens": 8}})


async def _moderations(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = await _record(request)
    if (refused := await _refusal(request, fake, body)) is not None:
        return refused
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) and all(isinstance(i, str) for i in inputs) else 1
    return web.json_response({"id": "modr-AB8CjOTu2jiq12hp1AQPfeqFWaORR",
                              "model": body.get("model", "omni-moderation-latest"),
                              "results": [MODERATION_RESULT] * count})


async def _images(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    body = await _record(request)
    if (refused := await _refusal(request, fake, body)) is not None:
        return refused
    n = body.get("n") or 1  # nullable, as OpenAI's own: null is its default
    return web.json_response({"created": 1713833628, "data": [{"b64_json": PNG_1X1}] * n, "usage": IMAGE_USAGE})


def _with_choices(answer: dict[str, Any], n: Any) -> dict[str, Any]:
    """`n` choices as OpenAI gives them: one per index, completion tokens counted over all of them."""
    if not isinstance(n, int) or n <= 1:
        return answer
    answer["choices"] = [{**answer["choices"][0], "index": i} for i in range(n)]
    usage = answer["usage"]
    usage["completion_tokens"] *= n
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return answer


async def _stream(request: web.Request, fake: FakeOpenAI, events: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)  # StreamResponse sends the headers right away
    fake.chunks_sent = 0
    if not await _wait(request, fake.silence_s_before_first_chunk):
        return response
    for i, event in enumerate(events):
        if i and not await _wait(request, fake.delay_between_chunks_s):
            return response
        if i == fake.stall_after_chunks:
            await _wait(request, None)
            return response
        if i == fake.close_mid_stream_after:
            if request.transport is not None:
                request.transport.abort()
            return response
        await response.write(event)
        fake.chunks_sent += 1
    await response.write_eof()
    return response


async def _wait(request: web.Request, seconds: float | None) -> bool:
    """Sleep `seconds` (None: until the client goes away) while watching the connection.

    aiohttp does not cancel handlers when the client disconnects, so poll the transport. False (and
    `client_disconnected` set) when the client left.
    """
    fake = request.app[FAKE_KEY]
    loop = asyncio.get_running_loop()
    deadline = None if seconds is None else loop.time() + seconds
    while deadline is None or loop.time() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            fake.client_disconnected.set()
            return False
        if fake.shutting_down:
            return False
        step = POLL_S if deadline is None else min(POLL_S, deadline - loop.time())
        await asyncio.sleep(max(step, 0))
    return True


def _error(message: str, type_: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": None}}


def _error_response(status: int, body: bytes | str | dict[str, Any] | None) -> web.Response:
    if body is None:
        body = _error("fake upstream error", "server_error")
    if isinstance(body, dict):
        return web.json_response(body, status=status)
    text = body.encode() if isinstance(body, str) else body
    content_type = "application/json" if text.lstrip()[:1] in (b"{", b"[") else "text/plain"
    return web.Response(status=status, body=text, content_type=content_type)
