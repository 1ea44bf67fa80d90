"""A fake Gemini API (generativelanguage.googleapis.com) that answers with recorded wire bytes.

Routes (`{model}` is any model name unless `models` is set):

- POST /v1beta/models/{model}:generateContent — a recorded `GenerateContentResponse`:
  `googleai/unary-success-basic-reply-short.json`, or with `tool_mode`
  `vertexai/unary-success-function-call-with-arguments.json` (or `unary_recording`).
- POST /v1beta/models/{model}:streamGenerateContent?alt=sse — the recorded SSE stream
  `googleai/streaming-success-basic-reply-short.txt`, or with `tool_mode`
  `vertexai/streaming-success-function-call-short.txt` (or `stream_recording`), byte for byte, one event
  (with its blank line) per write and no [DONE], as Gemini does. Without `alt=sse` the same chunks come as
  one JSON array, as the real endpoint answers.

A request with `generationConfig.thinkingConfig.includeThoughts: true` (and a budget other than 0) is
answered with the recorded thinking answers instead, thought-summary parts first:
`googleai/*-success-thinking-reply-thought-summary.*`, or with `tool_mode`
`googleai/*-success-thinking-function-call-thought-summary-signature.*` (a signed function call).

- POST /v1beta/models/{model}:batchEmbedContents — `{"embeddings": [{"values": [...]}, ...]}`, one per
  request, in Google's documented `BatchEmbedContentsResponse` shape (no recording of it exists in the wire
  folder); each vector is `EMBED_DIMENSIONS` floats derived from the text, or `outputDimensionality` long.
  More than 100 requests in one batch get Google's 400 ("at most 100 requests can be in one batch").

A Gemini 3 model (`gemini-3...`) checks thought signatures as Google documents it: in the current turn (the
model's steps since the last user content that is not function responses) the first `functionCall` of each
step must carry a `thoughtSignature`, else 400 INVALID_ARGUMENT "Function call is missing a
thought_signature in functionCall parts..." (any non-empty string passes: the fake cannot check a real one).

With `thinking_budgets` set, a model it names takes only a `thinkingConfig.thinkingBudget` in one of its ranges
(or -1, dynamic), as Google's thinking guide gives them (2.5 Flash `(range(0, 24577),)`; 2.5 Pro
`(range(128, 32769),)`, which cannot stop thinking), else 400 INVALID_ARGUMENT: "The thinking budget (N) is
invalid." or, for 0, "Budget 0 is invalid. This model only works in thinking mode.".

With `text` (or `function_call`, `{"name", "arguments"}` and optionally `"id"`, the `functionCall.id` newer models
give) set, answers say that text (or make that call, from the `tool_mode` recordings): see `fakes.scripted`.

Every request needs an API key (`x-goog-api-key` header or `?key=`), else 400 with the recorded
`googleai/unary-failure-api-key.json` body; a model not in `models` gets 404 with
`googleai/unary-failure-unknown-model.json`. `status` + `error_body` answer any other error.

A test sets the controls on a `FakeGemini` before calling and reads `fake.requests` afterwards::

    fake = FakeGemini()
    client = await aiohttp_client(make_app(fake))
    fake.tool_mode = True
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fakes import scripted

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WIRE = SHARED / "wire" / "gemini"
UNARY = "googleai/unary-success-basic-reply-short.json"
UNARY_TOOL = "vertexai/unary-success-function-call-with-arguments.json"
STREAM = "googleai/streaming-success-basic-reply-short.txt"
STREAM_TOOL = "vertexai/streaming-success-function-call-short.txt"
THINKING = "googleai/{}-success-thinking-reply-thought-summary.{}"
THINKING_TOOL = "googleai/{}-success-thinking-function-call-thought-summary-signature.{}"
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
EMBED_DIMENSIONS = 8
EMBED_BATCH = 100  # batchEmbedContents takes at most 100 requests


def recorded_events(name: str) -> list[bytes]:
    """The events of a recorded SSE body, each with its own line ends, exactly as recorded: joined they
    are the file. A last event without a blank line after it (some recordings) is kept as it is."""
    raw = (WIRE / name).read_bytes()
    events, start = [], 0
    for match in _EVENT_END.finditer(raw):
        events.append(raw[start:match.end()])
        start = match.end()
    if raw[start:].strip():
        events.append(raw[start:])
    return events


def recorded_chunks(name: str) -> list[Any]:
    """The JSON payloads of a recorded SSE body's `data:` events."""
    return [json.loads(event.strip().removeprefix(b"data:")) for event in recorded_events(name)
            if event.startswith(b"data:")]


def recorded_json(name: str) -> Any:
    return json.loads((WIRE / name).read_bytes())


@dataclass(frozen=True)
class RecordedRequest:
    path: str  # e.g. /v1beta/models/gemini-2.0-flash:streamGenerateContent
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when unparsable
    raw: bytes
    model: str = ""
    method: str = ""  # generateContent or streamGenerateContent


class FakeGemini:
    """Controls (plain attributes, set before calling; `reset()` restores them) and records."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.models: set[str] | None = None  # None: every model exists
        self.status = 200
        self.error_body: bytes | str | dict[str, Any] | None = None
        self.delay_before_headers_s = 0.0
        self.delay_between_chunks_s = 0.0
        self.tool_mode = False  # answer with a function call (unary and streamed)
        self.unary_recording: str | None = None  # a path under wire/gemini overriding the default answer
        self.stream_recording: str | None = None
        self.chunks_sent = 0  # events written by the last streamed answer
        self.text: str | None = None  # answers say this text (fakes.scripted)
        self.function_call: dict[str, Any] | None = None  # answers make this call: {"name", "arguments"[, "id"]}
        self.thinking_budgets: dict[str, tuple[range, ...]] = {}  # model -> the thinkingBudget ranges it takes

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def unary_answer(self, thinks: bool = False) -> Any:
        if thinks and not self.unary_recording:
            answer = recorded_json((THINKING_TOOL if self.calls else THINKING).format("unary", "json"))
        else:
            answer = recorded_json(self.unary_recording or (UNARY_TOOL if self.calls else UNARY))
        return scripted.gemini_chunks([answer], self.text, self.function_call)[0]

    def stream_name(self, thinks: bool = False) -> str:
        if thinks and not self.stream_recording:
            return (THINKING_TOOL if self.calls else THINKING).format("streaming", "txt")
        return self.stream_recording or (STREAM_TOOL if self.calls else STREAM)

    @property
    def calls(self) -> bool:
        return self.tool_mode or self.function_call is not None


def shows_thoughts(body: Any) -> bool:
    """Whether a request asks for thought summaries (includeThoughts with thinking not turned off)."""
    config = body.get("generationConfig") if isinstance(body, dict) else None
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    return isinstance(thinking, dict) and thinking.get("includeThoughts") is True \
        and thinking.get("thinkingBudget") != 0


FAKE_KEY = web.AppKey("fake_gemini", FakeGemini)


def make_app(fake: FakeGemini) -> web.Application:
    app = web.Application()
    app[FAKE_KEY] = fake
    app.router.add_post("/v1beta/models/{target}", _generate)
    return app


async def _record(request: web.Request, model: str, method: str) -> Any:
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    request.app[FAKE_KEY].requests.append(RecordedRequest(
        request.path, dict(request.query), dict(request.headers), body, raw, model, method))
    return body


async def _generate(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    model, _, method = request.match_info["target"].partition(":")
    body = await _record(request, model, method)
    if method not in ("generateContent", "streamGenerateContent", "batchEmbedContents"):
        return _google_error(404, f"Method {method!r} not found.", "NOT_FOUND")
    if not (request.headers.get("x-goog-api-key") or request.query.get("key")):
        return web.json_response(recorded_json("googleai/unary-failure-api-key.json"), status=400)
    if fake.models is not None and model not in fake.models:
        return web.json_response(recorded_json("googleai/unary-failure-unknown-model.json"), status=404)
    await asyncio.sleep(fake.delay_before_headers_s)
    if fake.status != 200:
        return _error_response(fake.status, fake.error_body)
    if method == "batchEmbedContents":
        return _embed(body)
    if not isinstance(body, dict) or not isinstance(body.get("contents"), list | dict):
        return _google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
    if model.startswith("gemini-3") and (unsigned := _unsigned_call(body["contents"])) is not None:
        return _google_error(400, "Function call is missing a thought_signature in functionCall parts. This is "
                             "required for tools to work correctly, and missing thought_signature may lead to "
                             f"degraded model performance. Additional data, function call `default_api:{unsigned}`"
                             ". Please refer to https://ai.google.dev/gemini-api/docs/thought-signatures for more "
                             "details.", "INVALID_ARGUMENT")
    if (refused := _refused_budget(fake.thinking_budgets.get(model), body)) is not None:
        return refused
    thinks = shows_thoughts(body)
    if method == "generateContent":
        return web.json_response(fake.unary_answer(thinks))
    if request.query.get("alt") != "sse":
        return web.json_response(scripted.gemini_chunks(recorded_chunks(fake.stream_name(thinks)), fake.text,
                                                        fake.function_call))
    return await _stream(request, fake, scripted.gemini_events(recorded_events(fake.stream_name(thinks)),
                                                               fake.text, fake.function_call))


def _refused_budget(ranges: tuple[range, ...] | None, body: dict[str, Any]) -> web.Response | None:
    """Google's 400 for a thinkingBudget the model does not take (None: taken, or no ranges known)."""
    config = body.get("generationConfig")
    thinking = config.get("thinkingConfig") if isinstance(config, dict) else None
    thinking = thinking if isinstance(thinking, dict) else {}
    budget = thinking.get("thinkingBudget")
    if ranges is None or budget is None or budget == -1 or any(budget in taken for taken in ranges):
        return None
    if budget == 0:
        return _google_error(400, "Budget 0 is invalid. This model only works in thinking mode.", "INVALID_ARGUMENT")
    return _google_error(400, f"The thinking budget ({budget}) is invalid.", "INVALID_ARGUMENT")


def _unsigned_call(contents: Any) -> str | None:
    """The name of a current-turn step's first function call that has no thought signature, or None."""
    for content in reversed(contents if isinstance(contents, list) else []):
        parts = [p for p in content.get("parts") or () if isinstance(p, dict)] if isinstance(content, dict) else []
        if content.get("role") != "model":
            if not any("functionResponse" in part for part in parts):
                return None  # the user's own message: the current turn starts after it
            continue
        calls = [part for part in parts if "functionCall" in part]
        if calls and not calls[0].get("thoughtSignature"):
            return str(calls[0]["functionCall"].get("name"))
    return None


def embedding_of(text: str, dimensions: int = EMBED_DIMENSIONS) -> list[float]:
    """A deterministic vector for a text (what the fake answers; tests recompute it)."""
    return [round(((len(text) * 31 + i * 17) % 97) / 97 - 0.5, 6) for i in range(dimensions)]


def _embed(body: Any) -> web.Response:
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not requests:
        return _google_error(400, "* BatchEmbedContentsRequest.requests: contents is not specified", "INVALID_ARGUMENT")
    if len(requests) > EMBED_BATCH:  # Google's own bound
        return _google_error(400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch",
                             "INVALID_ARGUMENT")
    embeddings = []
    for one in requests:
        parts = (one.get("content") or {}).get("parts") or []
        text = "".join(str(part.get("text", "")) for part in parts)
        embeddings.append({"values": embedding_of(text, one.get("outputDimensionality") or EMBED_DIMENSIONS)})
    return web.json_response({"embeddings": embeddings})


async def _stream(request: web.Request, fake: FakeGemini, events: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    fake.chunks_sent = 0
    for i, event in enumerate(events):
        if i:
            await asyncio.sleep(fake.delay_between_chunks_s)
        await response.write(event)
        fake.chunks_sent += 1
    await response.write_eof()
    return response


def _google_error(status: int, message: str, status_name: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": status_name}},
                             status=status)


def _error_response(status: int, body: bytes | str | dict[str, Any] | None) -> web.Response:
    if body is None:
        return _google_error(status, "fake upstream error", "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    if isinstance(body, dict):
        return web.json_response(body, status=status)
    text = body.encode() if isinstance(body, str) else body
    content_type = "application/json" if text.lstrip()[:1] in (b"{", b"[") else "text/plain"
    return web.Response(status=status, body=text, content_type=content_type)
