"""A fake Anthropic Messages API upstream that speaks Anthropic's recorded wire format.

`POST /v1/messages` answers with the recorded `sdk-messages-end-turn.response.json` (or, with
`tool_response`, `sdk-messages-tool-use.response.json`), its `model` set to the requested model. With
`"stream": true` it replays the recorded SSE events of `sdk-stream-basic.sse` (or `sdk-stream-tool-use.sse`
with `tool_stream`) byte for byte, one event per write, each followed by its blank line.

A request that forces a tool (`tool_choice: {"type": "tool", "name": ...}`) is answered as the real API
answers it: with a call of that tool and no text before it. The answer is the recorded tool-use response
(streamed: `sdk-stream-tool-use.sse` without its text block, the tool block renumbered to 0), the tool
renamed to the forced one and, with `forced_tool_input` set, its input replaced (streamed: that input's
JSON in three `input_json_delta` fragments where the recording has its fragments).

A request with `thinking: {"type": "enabled", "budget_tokens": B}` is checked as the real API checks it
(400 `invalid_request_error` for B < 1024 or B >= max_tokens, a temperature other than 1, top_k, a forced
tool_choice, or a last assistant turn that called tools without starting with the thinking block this fake
signed, text and signature verbatim) and answered with that thinking block first: the thinking and signature
of `docs-stream-thinking.sse` (streamed: its thinking block's events, the other blocks renumbered after it),
and with `redacted` a `redacted_thinking` block after it.

`output_config` is checked and honoured as the real API does (`fakes.anthropic_output`): an effort or format it
does not take is its 400 `invalid_request_error`; with a format, the answer's text is JSON valid against the schema.

With `usage` set, its fields (cache writes by lifetime, `server_tool_use`...) are put over the recorded usage
(streamed: over message_start's, and over message_delta's but for the `cache_creation` breakdown).

Like the real API it wants a key (401 `authentication_error` otherwise) and an `anthropic-version` header
(400 `invalid_request_error` otherwise), and error bodies have Anthropic's shape
`{"type": "error", "error": {"type", "message"}, "request_id"}`. The key is accepted in `x-api-key` (what
the gateway sends, and older SDKs) or as `Authorization: Bearer` (what the installed SDK 2.x sends for
`api_key=`); tests assert which header arrived.

A test sets the controls on a `FakeAnthropic` before calling and reads `fake.requests` afterwards::

    fake = FakeAnthropic()
    server = await aiohttp_server(make_app(fake))
    fake.status, fake.error_body = 529, FakeAnthropic.overloaded_body()
    ...
    assert fake.last.headers["x-api-key"] == "sk-ant-test"
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from fakes.anthropic_output import output_error, structured_text, with_message_text, with_stream_text

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
WIRE = SHARED / "wire" / "anthropic"
REQUEST_ID = "req_011CFakeAnthropicUpstream0001"


def recorded_events(name: str) -> list[bytes]:
    """The events of a recorded stream, each as its own bytes with its terminating blank line."""
    raw = (WIRE / name).read_bytes()
    return [block + b"\n\n" for block in raw.split(b"\n\n") if block.strip()]


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": REQUEST_ID}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when the body is not JSON
    raw: bytes


class FakeAnthropic:
    """Controls (plain attributes, set before calling; `reset()` restores them) and records."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.status = 200
        self.error_body: bytes | str | dict[str, Any] | None = None  # None: Anthropic's shape for `status`
        self.delay_before_headers_s = 0.0
        self.delay_between_events_s = 0.0
        self.tool_stream = False  # stream sdk-stream-tool-use.sse instead of sdk-stream-basic.sse
        self.tool_response = False  # answer sdk-messages-tool-use.response.json instead of the end_turn one
        self.error_event_after: int | None = None  # send the recorded overloaded `error` event after N events
        self.forced_tool_input: dict[str, Any] | None = None  # a forced tool's input; None: the recorded one
        self.events_sent = 0  # events written by the last streamed answer
        self.redacted = False  # with thinking: a redacted_thinking block after the thinking block
        # Anthropic `usage` fields put over the recorded ones (streamed: message_start takes them all, the
        # cumulative message_delta all but the `cache_creation` breakdown, as the real API's do)
        self.usage: dict[str, Any] | None = None

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    @staticmethod
    def overloaded_body() -> dict[str, Any]:
        """The recorded 529 body of errors.json."""
        return dict(json.loads((WIRE / "errors.json").read_text())["examples"]["529_overloaded_http"])

    def stream_events(self, forced: str | None = None) -> list[bytes]:
        if forced:
            events = forced_tool_events(forced, self.forced_tool_input)
        else:
            events = recorded_events("sdk-stream-tool-use.sse" if self.tool_stream else "sdk-stream-basic.sse")
        if self.usage is not None:
            events = with_usage(events, self.usage)
        if self.error_event_after is not None:
            events = [*events[:self.error_event_after], *recorded_events("docs-stream-error-event.sse")]
        return events


def with_usage(events: list[bytes], usage: dict[str, Any]) -> list[bytes]:
    """`events` with `usage` put over message_start's usage, and over message_delta's but for the breakdown of
    cache writes by lifetime (`cache_creation`), which the real API states in message_start only."""
    out = []
    for raw in events:
        head, _, data = raw.strip().partition(b"\ndata: ")
        event = json.loads(data)
        if event.get("type") == "message_start":
            event["message"]["usage"].update(usage)
            raw = _event(head, event)
        elif event.get("type") == "message_delta":
            event["usage"].update({name: value for name, value in usage.items() if name != "cache_creation"})
            raw = _event(head, event)
        out.append(raw)
    return out


def forced_tool(body: dict[str, Any]) -> str | None:
    """The tool a request forces (`tool_choice: {"type": "tool", "name": ...}`), else None."""
    choice = body.get("tool_choice")
    return str(choice.get("name")) if isinstance(choice, dict) and choice.get("type") == "tool" else None


def forced_tool_answer(name: str, tool_input: dict[str, Any] | None) -> dict[str, Any]:
    """The recorded tool-use message with its one tool_use block calling `name` (with `tool_input`)."""
    answer = json.loads((WIRE / "sdk-messages-tool-use.response.json").read_bytes())
    (block,) = answer["content"]
    block["name"] = name
    if tool_input is not None:
        block["input"] = tool_input
    return dict(answer)


def forced_tool_events(name: str, tool_input: dict[str, Any] | None) -> list[bytes]:
    """`sdk-stream-tool-use.sse` as a forced call of `name`: its text block (index 0) left out, the tool block
    renumbered to 0 and renamed; with `tool_input`, that JSON in three fragments instead of the recorded ones
    (with `{}`, none: only the recorded empty fragment, as a call of a tool without parameters streams)."""
    out, fragments = [], None
    if tool_input is not None:
        text = json.dumps(tool_input)
        third = -(-len(text) // 3)
        # an empty input streams as the API streams a call without arguments: the recorded "" fragment alone
        fragments = [text[i:i + third] for i in range(0, len(text), third)] if tool_input else []
    for raw in recorded_events("sdk-stream-tool-use.sse"):
        head, _, data = raw.strip().partition(b"\ndata: ")
        event = json.loads(data)
        if "index" not in event:
            out.append(raw)
            continue
        if event["index"] == 0:
            continue
        event["index"] = 0
        if event["type"] == "content_block_start":
            event["content_block"]["name"] = name
        delta = event.get("delta") or {}
        if fragments is not None and delta.get("type") == "input_json_delta" and delta["partial_json"]:
            for fragment in fragments:
                out.append(_event(head, {**event, "delta": {**delta, "partial_json": fragment}}))
            fragments = []
            continue
        out.append(_event(head, event))
    return out


def _event(head: bytes, data: dict[str, Any]) -> bytes:
    """An event in the recording's own spelling: its `event:` line, compact JSON, a blank line."""
    return head + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


REDACTED_DATA = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWXGmKDxH4mPnZ5sQ7vB5URj"


def recorded_thinking() -> dict[str, Any]:
    """The thinking block of `docs-stream-thinking.sse`, put together: its text and its signature."""
    text, signature = "", ""
    for raw in recorded_events("docs-stream-thinking.sse"):
        event = json.loads(raw.strip().partition(b"\ndata: ")[2])
        delta = event.get("delta") or {}
        text += delta.get("thinking", "") if delta.get("type") == "thinking_delta" else ""
        signature += delta.get("signature", "") if delta.get("type") == "signature_delta" else ""
    return {"type": "thinking", "thinking": text, "signature": signature}


def thinking_blocks(redacted: bool) -> list[dict[str, Any]]:
    """What this fake thinks, in the order it answers it."""
    return [recorded_thinking(), *([{"type": "redacted_thinking", "data": REDACTED_DATA}] if redacted else [])]


def thinking_error(body: dict[str, Any]) -> str | None:
    """The real API's refusal of a thinking request (the rules of Anthropic's extended thinking), or None."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget, max_tokens = thinking.get("budget_tokens"), body.get("max_tokens")
    if not isinstance(budget, int) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if not isinstance(max_tokens, int) or budget >= max_tokens:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    if body.get("temperature", 1) != 1:
        return "`temperature` may only be set to 1 when thinking is enabled."
    if "top_k" in body:
        return "`top_k` is not supported when thinking is enabled."
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") in ("any", "tool"):
        return "Thinking may not be enabled when tool_choice forces tool use."
    return _history_error(body.get("messages") or [])


def _history_error(messages: list[Any]) -> str | None:
    """A last assistant turn that called tools must start with the thinking blocks this fake signed."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "assistant"), None)
    content = messages[last]["content"] if last is not None else None
    if not isinstance(content, list) or not any(block.get("type") == "tool_use" for block in content):
        return None
    if content[0].get("type") not in ("thinking", "redacted_thinking"):
        return (f"messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{content[0].get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks).")
    for j, block in enumerate(content):
        if block.get("type") == "thinking" and block != recorded_thinking():
            return f"messages.{last}.content.{j}: Invalid `signature` in `thinking` block"
        if block.get("type") == "redacted_thinking" and block != {"type": "redacted_thinking", "data": REDACTED_DATA}:
            return f"messages.{last}.content.{j}: Invalid `data` in `redacted_thinking` block"
    return None


def thinking_events(events: list[bytes], redacted: bool) -> list[bytes]:
    """`events` with the recorded thinking block (and a redacted one) first, the other blocks renumbered."""
    thought = [raw for raw in recorded_events("docs-stream-thinking.sse") if b'"index": 0' in raw]
    extra = len(thought) and 1 + redacted
    out: list[bytes] = []
    for raw in events:
        head, _, data = raw.strip().partition(b"\ndata: ")
        event = json.loads(data)
        if event.get("type") == "message_start":
            out.append(raw)
            out += thought
            if redacted:
                block = {"type": "redacted_thinking", "data": REDACTED_DATA}
                out.append(_event(b"event: content_block_start",
                                  {"type": "content_block_start", "index": 1, "content_block": block}))
                out.append(_event(b"event: content_block_stop", {"type": "content_block_stop", "index": 1}))
            continue
        if "index" in event:
            event["index"] += extra
            raw = _event(head, event)
        out.append(raw)
    return out


FAKE_KEY = web.AppKey("fake_anthropic", FakeAnthropic)
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                 403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                 429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def make_app(fake: FakeAnthropic) -> web.Application:
    app = web.Application()
    app[FAKE_KEY] = fake
    app.router.add_post("/v1/messages", _messages)
    return app


async def _messages(request: web.Request) -> web.StreamResponse:
    fake = request.app[FAKE_KEY]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    headers = {name.lower(): value for name, value in request.headers.items()}
    fake.requests.append(RecordedRequest(request.path, headers, body, raw))
    bearer = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not (request.headers.get("x-api-key") or bearer):
        return web.json_response(error_body("authentication_error", "x-api-key header is required"), status=401)
    if not request.headers.get("anthropic-version"):
        return web.json_response(error_body("invalid_request_error", "anthropic-version: header is required"),
                                 status=400)
    await asyncio.sleep(fake.delay_before_headers_s)
    if fake.status != 200:
        return _error_response(fake.status, fake.error_body)
    if not isinstance(body, dict):
        return web.json_response(error_body("invalid_request_error", "There was an issue with the request body."),
                                 status=400)
    if refusal := thinking_error(body) or output_error(body):
        return web.json_response(error_body("invalid_request_error", refusal), status=400)
    thinks = isinstance(body.get("thinking"), dict)
    forced = forced_tool(body)
    structured = structured_text(body)
    if body.get("stream"):
        return await _stream(request, fake, forced, thinks, structured)
    if forced:
        answer = forced_tool_answer(forced, fake.forced_tool_input)
    else:
        name = "sdk-messages-tool-use.response.json" if fake.tool_response else "sdk-messages-end-turn.response.json"
        answer = json.loads((WIRE / name).read_bytes())
    answer["model"] = body.get("model", answer["model"])
    if fake.usage is not None:
        answer["usage"].update(fake.usage)
    if structured is not None:
        answer = with_message_text(answer, structured)
    if thinks:
        answer["content"][:0] = thinking_blocks(fake.redacted)
    return web.json_response(answer, headers={"request-id": REQUEST_ID})


async def _stream(request: web.Request, fake: FakeAnthropic, forced: str | None, thinks: bool,
                  structured: str | None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "request-id": REQUEST_ID})
    await response.prepare(request)
    fake.events_sent = 0
    events = fake.stream_events(forced)
    events = events if structured is None else with_stream_text(events, structured)
    for i, event in enumerate(thinking_events(events, fake.redacted) if thinks else events):
        if i and fake.delay_between_events_s:
            await asyncio.sleep(fake.delay_between_events_s)
        await response.write(event)
        fake.events_sent += 1
    await response.write_eof()
    return response


def _error_response(status: int, body: bytes | str | dict[str, Any] | None) -> web.Response:
    if body is None:
        body = error_body(_STATUS_TYPES.get(status, "api_error"), "fake upstream error")
    if isinstance(body, dict):
        return web.json_response(body, status=status, headers={"request-id": REQUEST_ID})
    text = body.encode() if isinstance(body, str) else body
    content_type = "application/json" if text.lstrip()[:1] in (b"{", b"[") else "text/plain"
    return web.Response(status=status, body=text, content_type=content_type)
