"""Upstreams that misbehave: odd but possible answers of each provider kind, on every endpoint.

A raw TCP upstream answers each request with bytes the test chose (status line, headers and body as
written, a stream ending when the connection closes). Every case checks what the
client gets (an OpenAI- or Anthropic-shaped error, never a 500, or a correct answer) and the ledger:
no hold left behind, and the balance moved by exactly the cost the answer's billing block states.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from apis_config import GEMINI_KEY, config_doc
from fakes.gemini_upstream import WIRE as GEMINI_WIRE
from fakes.openai_upstream import FakeOpenAI
from harness import Gateway, start_gateway, validate

from gateway import billing, relay
from gateway.config_load import parse
from gateway.state import RUNTIME
from providers.types import Usage


def http(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    """A whole HTTP/1.1 answer."""
    head = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
            "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def sse(*events: bytes | str | dict[str, Any], content_type: str = "text/event-stream") -> bytes:
    """A streamed answer without a length, ending when the connection closes."""
    parts = []
    for event in events:
        if isinstance(event, dict):
            event = "data: " + json.dumps(event) + "\n\n"
        parts.append(event.encode() if isinstance(event, str) else event)
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n"
    return head.encode() + b"".join(parts)


@dataclass
class RawUpstream:
    answer: bytes = b""
    requests: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    hold: asyncio.Event | None = None  # when set: the answer written, the connection stays open until it is set

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append({"line": lines[0], "headers": headers, "body": json.loads(body or b"null")})
            writer.write(self.answer)
            await writer.drain()
            if self.hold is not None:
                await self.hold.wait()
        finally:
            writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    server = await asyncio.start_server(up._serve, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield up
    server.close()
    await server.wait_closed()


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def odd(request: pytest.FixtureRequest, aiohttp_server: Any,
              raw_upstream: RawUpstream) -> AsyncIterator[tuple[Gateway, RawUpstream]]:
    """A gateway whose every provider (openai, anthropic, gemini kinds) is the raw upstream."""
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    urls = {"openai": raw_upstream.url + "/v1", "anthropic": raw_upstream.url, "gemini": raw_upstream.url}
    doc = config_doc(urls, store_url, f"t{uuid.uuid4().hex}:")
    gw = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), FakeOpenAI())
    yield gw, raw_upstream
    await gw.close()


async def ledger(gw: Gateway) -> tuple[int, int, int]:
    """(balance, usage, held) of the gateway's key once every settlement is done."""
    pending = gw.app[RUNTIME].settlements.pending
    while pending:
        await asyncio.wait(list(pending))
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None
    return record.balance, record.usage, record.credits - record.balance - record.usage


async def call(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(gw.url + path, json=body,
                                                                headers=gw.auth()) as r:
        return r.status, await r.read()


def nano(usd: float) -> int:
    return round(usd * 1_000_000_000)


MESSAGES = [{"role": "user", "content": "hi"}]
MODELS = {"openai": "oai/gpt-4o", "anthropic": "claude/sonnet", "gemini": "google/flash"}


def chat_answer(kind: str, completion: Any, stream: bool) -> bytes:
    """A well-formed answer of `kind` whose usage reports `completion` output tokens (10 prompt tokens)."""
    if kind == "openai":
        head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
        usage = {"prompt_tokens": 10, "completion_tokens": completion, "total_tokens": 10}
        if not stream:
            return http(200, json.dumps({
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o", "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                             "finish_reason": "stop"}],
            }).encode())
        return sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"},
                                         "finish_reason": None}]},
                   {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                   {**head, "choices": [], "usage": usage}, "data: [DONE]\n\n")
    if kind == "anthropic":
        if not stream:
            return http(200, json.dumps({
                "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-0",
                "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": completion}}).encode())
        events = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-0",
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "Hello"}}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": completion}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return sse(*(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events))
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hello"}]}, "finishReason": "STOP",
                              "index": 0}],
              "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": completion, "totalTokenCount": 10},
              "modelVersion": "gemini-2.0-flash", "responseId": "r1"}
    return sse(answer) if stream else http(200, json.dumps(answer).encode())


def stream_bill(raw: bytes) -> dict[str, Any]:
    """The billing block of a streamed answer (chat chunks or Anthropic events)."""
    bills = [json.loads(line[6:])["billing"] for line in raw.split(b"\n") if line.startswith(b"data: {")
             and b'"billing"' in line]
    assert len(bills) == 1, raw
    return bills[0]


@pytest.mark.parametrize("completion", [-5, 2**60, 2**40], ids=["negative", "count-above-2^53", "cost-above-balance"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"], ids=["chat", "messages"])
async def test_usage_out_of_range_is_bounded_not_a_500(odd: tuple[Gateway, RawUpstream], log_lines: Any, path: str,
                                                       kind: str, stream: bool, completion: int) -> None:
    """A count the store cannot take (negative, or a count or a cost above 2^53 - 1) made the settlement raise
    ValueError: a 500 (or an error event) for a served answer, and the hold stuck until its TTL."""
    gw, up = odd
    up.answer = chat_answer(kind, completion, stream)
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, path, {"model": MODELS[kind], "messages": MESSAGES, "max_tokens": 50,
                                        "stream": stream})
    assert status == 200, raw
    assert b"error" not in raw, raw
    bill = stream_bill(raw) if stream else json.loads(raw)["billing"]
    balance, usage, held = await ledger(gw)
    assert held == 0
    assert before - balance == usage == nano(bill["request_cost"])
    if completion < 0:  # the prompt is charged, the output counts as none
        assert 0 < usage < 1_000_000
    else:  # as any cost above what the key has: all of it, and no more
        assert balance == 0
    assert not [line for line in log_lines() if line.get("level") == "error"]


async def test_a_negative_fee_count_charges_no_negative_cost(odd: tuple[Gateway, RawUpstream], log_lines: Any) -> None:
    """A count billed apiece (Anthropic's web searches) that is negative made the cost negative, which the store
    refuses like a count above its range: the cost is bounded at 0 too."""
    gw, up = odd
    up.answer = http(200, json.dumps({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-0",
        "content": [{"type": "text", "text": "Hello"}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "server_tool_use": {"web_search_requests": -10**6}}}).encode())
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, "/v1/messages", {"model": MODELS["anthropic"], "messages": MESSAGES, "max_tokens": 50})
    assert status == 200, raw
    balance, usage, held = await ledger(gw)
    cost = json.loads(raw)["billing"]["request_cost"]
    assert held == 0
    assert before - balance == usage == cost == 0
    errors = [line for line in log_lines() if line.get("level") == "error"]
    assert errors == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_estimate_bills_no_more_output_than_max_tokens_allowed(odd: tuple[Gateway, RawUpstream],
                                                                       stream: bool) -> None:
    """Without usage from the upstream the output is counted from the text relayed (3 bytes a token, erring
    high): 3,000 bytes on a request allowed 50 tokens were billed as 1,000. The upstream cannot have made more
    than it was allowed: the estimate stops there."""
    gw, up = odd
    text = "word " * 600
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    if stream:
        up.answer = sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                              "finish_reason": None}]},
                        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}, "data: [DONE]\n\n")
    else:
        up.answer = http(200, json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length"}]}).encode())
    before, _, _ = await ledger(gw)
    body = {"model": "oai/gpt-4o", "messages": MESSAGES, "max_tokens": 50, "stream": stream}
    status, raw = await call(gw, "/v1/chat/completions", body)
    assert status == 200, raw
    bill = stream_bill(raw) if stream else json.loads(raw)["billing"]
    balance, usage, held = await ledger(gw)
    route = gw.app[RUNTIME].snapshot.catalog.routes["oai/gpt-4o"]
    prompt = billing.estimate_prompt_tokens(body)
    assert bill["estimated"] is True and held == 0
    assert before - balance == usage == nano(bill["request_cost"]) == billing.token_cost(
        route.price, Usage(prompt_tokens=prompt, completion_tokens=50))


def with_finish(answer: bytes, finish: Any) -> bytes:
    """`answer` (one of `chat_answer`'s, kind openai) with its finish_reason replaced, Content-Length refitted."""
    head, _, body = answer.partition(b"\r\n\r\n")
    body = body.replace(b'"finish_reason": "stop"', b'"finish_reason": ' + json.dumps(finish).encode())
    if b"Content-Length" in head:
        return http(200, body)
    return head + b"\r\n\r\n" + body


def completion_answer(finish: Any, stream: bool) -> bytes:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct"}
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    choice = {"text": "hi", "index": 0, "logprobs": None, "finish_reason": finish}
    if not stream:
        return http(200, json.dumps({**head, "choices": [choice], "usage": usage}).encode())
    return sse({**head, "choices": [choice]}, {**head, "choices": [], "usage": usage}, "data: [DONE]\n\n")


@pytest.mark.parametrize("finish", [{"type": "stop"}, ["stop"]], ids=["object", "list"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/completions"],
                         ids=["chat", "messages", "completions"])
async def test_unhashable_finish_reason_is_an_unknown_one(odd: tuple[Gateway, RawUpstream], log_lines: Any, path: str,
                                                          stream: bool, finish: Any) -> None:
    """A finish_reason that is no string at all (an object, a list) is a reason the gateway does not know,
    answered as `stop` like any other; it was looked up in a frozenset, which raised TypeError: a 500, or an
    error event and an error-level traceback for the upstream's fault."""
    gw, up = odd
    if path == "/v1/completions":
        up.answer = completion_answer(finish, stream)
        body = {"model": "oai/gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 5, "stream": stream}
    else:
        up.answer = with_finish(chat_answer("openai", 5, stream), finish)
        body = {"model": "oai/gpt-4o", "messages": MESSAGES, "max_tokens": 50, "stream": stream}
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, path, body)
    assert status == 200, raw
    assert b"error" not in raw, raw
    want = b'"stop_reason":"end_turn"' if path == "/v1/messages" else b'"finish_reason":"stop"'
    assert want in raw
    bill = stream_bill(raw) if stream else json.loads(raw)["billing"]
    balance, usage, held = await ledger(gw)
    assert held == 0 and before - balance == usage == nano(bill["request_cost"]) > 0
    assert not [line for line in log_lines() if line.get("level") == "error"]


PORTAL = b"<!DOCTYPE html><html><head><title>Wi-Fi login</title></head><body><form>...</form></body></html>"


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"], ids=["chat", "messages"])
async def test_html_page_for_a_stream_is_a_502(odd: tuple[Gateway, RawUpstream], log_lines: Any, path: str,
                                              kind: str) -> None:
    """A 200 `text/html` answer to a streamed request (a captive portal, a CDN's page) is no event stream:
    the client gets the 502 an unreadable answer gets, before any header went out, not a 200 whose stream
    ends in 'the upstream closed the stream before it finished'."""
    gw, up = odd
    up.answer = http(200, PORTAL, "text/html; charset=utf-8")
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, path, {"model": MODELS[kind], "messages": MESSAGES, "max_tokens": 50,
                                        "stream": True})
    assert status == 502, raw
    payload = json.loads(raw)
    error = payload["error"]
    if path == "/v1/messages":
        assert payload["type"] == "error" and error["type"] == "api_error"
    else:
        validate(payload, "ErrorResponse")
        assert error["type"] == "upstream_error"
    assert error["code"] == "upstream_bad_response"
    assert "HTML" in error["message"] and "Wi-Fi login" in error["message"]
    assert await ledger(gw) == (before, 0, 0)
    assert len(up.requests) == 1  # it answered: not resent
    assert not [line for line in log_lines() if line.get("level") == "error"]


@pytest.mark.parametrize("completion", [13.0, 12.08], ids=["whole", "fraction"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"], ids=["chat", "messages"])
async def test_float_token_counts_are_billed(odd: tuple[Gateway, RawUpstream], path: str, stream: bool,
                                             completion: float) -> None:
    """OpenAI-compatible servers may count in floats (OpenRouter reports image output as e.g. 14417.92 tokens):
    such a count is tokens, billed rounded up, not none. It was read as 0, so the output was free while the
    answer said `estimated: false`."""
    gw, up = odd
    up.answer = chat_answer("openai", completion, stream)
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, path, {"model": "oai/gpt-4o", "messages": MESSAGES, "max_tokens": 50,
                                        "stream": stream})
    assert status == 200, raw
    bill = stream_bill(raw) if stream else json.loads(raw)["billing"]
    balance, usage, held = await ledger(gw)
    route = gw.app[RUNTIME].snapshot.catalog.routes["oai/gpt-4o"]
    assert held == 0 and bill["estimated"] is False
    assert before - balance == usage == nano(bill["request_cost"]) == billing.token_cost(
        route.price, Usage(prompt_tokens=10, completion_tokens=13))


@pytest.mark.parametrize("completion", [12.08, -3], ids=["fraction", "negative"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_answer_states_the_token_counts_billed(odd: tuple[Gateway, RawUpstream], stream: bool,
                                                         completion: float) -> None:
    """The answer's `usage` states the counts the request was billed and recorded with (a float count rounded
    up, a negative one as none), not the upstream's raw figures beside a `usage.cost` computed from others."""
    gw, up = odd
    up.answer = chat_answer("openai", completion, stream)
    body: dict[str, Any] = {"model": "oai/gpt-4o", "messages": MESSAGES, "max_tokens": 50, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    status, raw = await call(gw, "/v1/chat/completions", body)
    assert status == 200, raw
    if stream:
        chunks = [json.loads(b[6:]) for b in raw.split(b"\n\n") if b.startswith(b"data: {")]
        answer = next(c for c in chunks if c.get("usage"))
    else:
        answer = json.loads(raw)
    await ledger(gw)
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, answer["id"])
    assert record is not None
    billed = max(0, math.ceil(completion))
    assert record["tokens_completion"] == str(billed) and record["tokens_prompt"] == "10"
    usage = answer["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (10, billed)
    assert usage["total_tokens"] == 10 + billed
    validate(answer, "CreateChatCompletionStreamResponse" if stream else "CreateChatCompletionResponse")


# -- a JSON answer where a stream was asked for ---------------------------------------------------------

def tool_answer(kind: str) -> bytes:
    """A whole non-streamed answer of `kind` with text and a tool call (10 prompt, 7 output tokens), as a
    server that ignores `stream: true` sends it: `Content-Type: application/json`, status 200."""
    if kind == "openai":
        return http(200, json.dumps({
            "id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Let me look.", "tool_calls": [{
                    "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]}}],
        }).encode())
    if kind == "anthropic":
        return http(200, json.dumps({
            "id": "msg_9", "type": "message", "role": "assistant", "model": "claude-sonnet-4-0",
            "content": [{"type": "text", "text": "Let me look."},
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}}],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 7}}).encode())
    parts = [{"text": "Let me look."}, {"functionCall": {"name": "lookup", "args": {"q": "x"}}}]
    return http(200, json.dumps({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 7, "totalTokenCount": 17},
        "modelVersion": "gemini-2.0-flash", "responseId": "r9"}).encode())


def gemini_array(answer: bytes) -> bytes:
    """`tool_answer("gemini")` as `streamGenerateContent` answers without `alt=sse`: a JSON array of its chunks."""
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    first = {"candidates": [{"content": {"role": "model", "parts": body["candidates"][0]["content"]["parts"][:1]},
                             "index": 0}], "modelVersion": "gemini-2.0-flash", "responseId": "r9"}
    last = {**body, "candidates": [{**body["candidates"][0], "content": {
        "role": "model", "parts": body["candidates"][0]["content"]["parts"][1:]}}]}
    return http(200, json.dumps([first, last]).encode())


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object",
                                                                             "properties": {"q": {"type": "string"}}}}}]
WHOLE_CASES = [pytest.param(kind, tool_answer(kind), id=kind) for kind in MODELS] + [
    pytest.param("gemini", gemini_array(tool_answer("gemini")), id="gemini-array")]


async def charged_exactly(gw: Gateway, before: int, model: str, bill: dict[str, Any]) -> None:
    """The key paid what the answer's usage (10 prompt, 7 output tokens) costs, as billed, and holds nothing."""
    balance, usage, held = await ledger(gw)
    price = gw.app[RUNTIME].snapshot.catalog.routes[model].price
    cost = billing.token_cost(price, Usage(prompt_tokens=10, completion_tokens=7))
    assert cost > 0 and held == 0 and bill["estimated"] is False
    assert before - balance == usage == nano(bill["request_cost"]) == cost


@pytest.mark.parametrize(("kind", "answer"), WHOLE_CASES)
async def test_a_json_answer_to_a_stream_is_streamed_and_billed(odd: tuple[Gateway, RawUpstream], log_lines: Any,
                                                                kind: str, answer: bytes) -> None:
    """A server (or a proxy) that ignores `stream: true` and answers the whole JSON answer: the client got a 200
    stream ending in `upstream_truncated` and the answer the operator paid for was free. It is the stream the
    client asked for (role, text, tool call, finish with the bill, usage, [DONE]), billed from the answer's usage."""
    gw, up = odd
    up.answer = answer
    before, _, _ = await ledger(gw)
    stream = await gw.openai().chat.completions.create(
        model=MODELS[kind], messages=MESSAGES, max_tokens=50, tools=TOOLS, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Let me look."
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or ()]
    assert [(call.function.name, json.loads(call.function.arguments)) for call in calls  # type: ignore[union-attr]
            ] == [("lookup", {"q": "x"})]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (10, 7)
    await charged_exactly(gw, before, MODELS[kind], last.model_extra["billing"])  # type: ignore[index]
    assert len(up.requests) == 1
    assert not [line for line in log_lines() if line.get("level") == "error"]


@pytest.mark.parametrize(("kind", "answer"), WHOLE_CASES)
async def test_a_json_answer_to_a_messages_stream_is_streamed_and_billed(odd: tuple[Gateway, RawUpstream],
                                                                         kind: str, answer: bytes) -> None:
    """The same on /v1/messages: the Anthropic SDK's stream gets the whole message as Anthropic's events."""
    gw, up = odd
    up.answer = answer
    before, _, _ = await ledger(gw)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    try:
        async with client.messages.stream(model=MODELS[kind], max_tokens=50, messages=MESSAGES,  # type: ignore[arg-type]
                                          tools=[{"name": "lookup", "input_schema": {"type": "object"}}]) as stream:
            events = [event async for event in stream]
            message = await stream.get_final_message()
    finally:
        await client.close()
    names = [event.type for event in events]
    assert names[0] == "message_start" and names[-1] == "message_stop"
    assert [(b.type, getattr(b, "text", None) or getattr(b, "input", None)) for b in message.content] == [
        ("text", "Let me look."), ("tool_use", {"q": "x"})]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 7)
    # the bill rides on message_delta, which the SDK keeps as an unknown field of the event
    bill = next(event.model_extra["billing"] for event in events if event.type == "message_delta")  # type: ignore[index]
    await charged_exactly(gw, before, MODELS[kind], bill)


UNREADABLE = {
    "openai": json.dumps({"error": {"message": "model overloaded", "type": "server_error", "code": None}}).encode(),
    "anthropic": json.dumps({"type": "error", "error": {"type": "api_error", "message": "model overloaded"}}).encode(),
    "gemini": json.dumps({"error": {"code": 500, "message": "model overloaded", "status": "INTERNAL"}}).encode(),
}


@pytest.mark.parametrize("body", ["error", "garbage", "error-array"])
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"], ids=["chat", "messages"])
async def test_a_json_error_or_garbage_for_a_stream_is_a_502(odd: tuple[Gateway, RawUpstream], log_lines: Any,
                                                            path: str, kind: str, body: str) -> None:
    """A 200 JSON body to a streamed request that is an error object or no JSON at all: no answer to stream and
    nothing to bill, so the 502 an unreadable answer gets, before any header went out, not a free 200."""
    gw, up = odd
    raw = {"error": UNREADABLE[kind], "garbage": b'{"choices": [', "error-array": b"[" + UNREADABLE[kind] + b"]"}[body]
    up.answer = http(200, raw)
    before, _, _ = await ledger(gw)
    status, out = await call(gw, path, {"model": MODELS[kind], "messages": MESSAGES, "max_tokens": 50, "stream": True})
    assert status == 502, out
    payload = json.loads(out)
    if path == "/v1/messages":
        assert payload["type"] == "error" and payload["error"]["type"] == "api_error"
    else:
        validate(payload, "ErrorResponse")
    assert payload["error"]["code"] == "upstream_bad_response"
    assert await ledger(gw) == (before, 0, 0)
    assert len(up.requests) == 1  # it answered: not resent
    assert not [line for line in log_lines() if line.get("level") == "error"]



async def test_an_answer_over_the_size_limit_is_a_502_bad_response(odd: tuple[Gateway, RawUpstream],
                                                                   monkeypatch: Any) -> None:
    """A 200 JSON answer larger than any chat answer (64 MB; lowered here) is unreadable: the README's 502
    `upstream_bad_response`, nothing charged, not resent."""
    gw, up = odd
    monkeypatch.setattr(relay, "MAX_UPSTREAM_BODY", 4096)
    answer = json.loads(chat_answer("openai", 5, stream=False).split(b"\r\n\r\n", 1)[1])
    answer["choices"][0]["message"]["content"] = "x" * 8192
    up.answer = http(200, json.dumps(answer).encode())
    before, _, _ = await ledger(gw)
    status, out = await call(gw, "/v1/chat/completions", {"model": MODELS["openai"], "messages": MESSAGES,
                                                           "max_tokens": 50})
    assert status == 502, out
    payload = json.loads(out)
    validate(payload, "ErrorResponse")
    assert payload["error"]["code"] == "upstream_bad_response"
    assert await ledger(gw) == (before, 0, 0)
    assert len(up.requests) == 1


async def test_a_big_answer_arrives_whole(odd: tuple[Gateway, RawUpstream]) -> None:
    """A 3 MB answer comes in many reads, kept as pieces and joined once (relay.read_body): every byte of its
    text reaches the client in order."""
    gw, up = odd
    answer = json.loads(chat_answer("openai", 5, stream=False).split(b"\r\n\r\n", 1)[1])
    text = "".join(f"{i:07d} ünïcødé ✓ " for i in range(150_000))  # ~3 MB of UTF-8, no two runs alike
    answer["choices"][0]["message"]["content"] = text
    up.answer = http(200, json.dumps(answer).encode())
    status, out = await call(gw, "/v1/chat/completions", {"model": MODELS["openai"], "messages": MESSAGES,
                                                           "max_tokens": 50})
    assert status == 200, out[:300]
    assert json.loads(out)["choices"][0]["message"]["content"] == text

# -- a Gemini stream that ends in a bare JSON error ------------------------------------------------------

def gemini_error_tail() -> bytes:
    """The unframed error body Gemini writes after a stream's events when it fails mid-answer, as recorded
    (wire/gemini/vertexai/streaming-failure-error-mid-stream.txt), with the operator's key in its message."""
    raw = (GEMINI_WIRE / "vertexai" / "streaming-failure-error-mid-stream.txt").read_bytes()
    tail = raw[raw.rindex(b"\n\ndata: ") + 2:].split(b"\n\n", 1)[1]
    assert tail.lstrip().startswith(b"{") and b"CANCELLED" in tail
    keyed = b"The operation was cancelled (key " + GEMINI_KEY.encode() + b")."
    return tail.replace(b"The operation was cancelled.", keyed)


def gemini_chunk(text: str, output_tokens: int) -> dict[str, Any]:
    """An unfinished chunk (no finishReason), usage counted so far, as Gemini streams them."""
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": output_tokens, "totalTokenCount": 10},
            "modelVersion": "gemini-2.0-flash", "responseId": "r1"}


@pytest.mark.parametrize("framed", [False, True], ids=["bare-json", "error-event"])
async def test_a_gemini_stream_ending_in_a_bare_json_error_ends_in_that_error(
        odd: tuple[Gateway, RawUpstream], log_lines: Any, framed: bool) -> None:
    """Gemini's `streamGenerateContent?alt=sse` failing mid-answer writes its error body unframed after the
    events. It was ignored (the client heard only 'closed before it finished'); it is the stream's error event,
    scrubbed, and billed as the same error sent as an `error` event (`error-event`, how it was billed already)."""
    gw, up = odd
    tail = gemini_error_tail()
    error = b"data: " + json.dumps(json.loads(tail)).encode() + b"\n\n" if framed else tail
    up.answer = sse(gemini_chunk("First ", 2), gemini_chunk("Second ", 4), error)
    before, _, _ = await ledger(gw)
    stream = await gw.openai().chat.completions.create(model=MODELS["gemini"], messages=MESSAGES, max_tokens=50,
                                                       stream=True)  # type: ignore[arg-type]
    text = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
    assert text == "First Second "
    message = str(info.value.message)
    assert "The operation was cancelled" in message and GEMINI_KEY not in message, message
    assert info.value.code == "upstream_error"
    balance, usage, held = await ledger(gw)
    route = gw.app[RUNTIME].snapshot.catalog.routes[MODELS["gemini"]]
    # the prompt and the output counted so far: Gemini's running count, or the text relayed when that is more
    output = max(4, billing.estimate_tokens(len("First Second ")))
    assert held == 0 and before - balance == usage == billing.token_cost(
        route.price, Usage(prompt_tokens=10, completion_tokens=output))
    assert not [line for line in log_lines() if line.get("level") == "error"]


async def test_an_event_stream_labelled_json_is_still_relayed(odd: tuple[Gateway, RawUpstream]) -> None:
    """A server that streams SSE under `Content-Type: application/json` sends events, not an answer: its body
    is relayed as a stream, not read whole as a JSON answer (which it is not)."""
    gw, up = odd
    head, _, body = chat_answer("openai", 7, True).partition(b"\r\n\r\n")
    up.answer = head.replace(b"text/event-stream", b"application/json") + b"\r\n\r\n" + body
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES,
                                                          "max_tokens": 50, "stream": True})
    assert status == 200 and b'"content":"Hello"' in raw and raw.endswith(b"data: [DONE]\n\n"), raw
    await charged_exactly(gw, before, "oai/gpt-4o", stream_bill(raw))
