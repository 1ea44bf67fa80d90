"""Upstream faults through a TCP fault proxy (tests/faultproxy.py) between the gateway and the fake upstream.

Every case checks the three promises: the client gets a clear error or a clean end of its stream, the
ledger is exact (the key's balance moved by exactly what the generation record says was delivered, and
no hold is left), and no connection leaks (the fault proxy's open connections return to zero).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from fakes.openai_upstream import FakeOpenAI, recorded_events
from faultproxy import Fault, FaultProxy, after_events, after_headers, at_start
from harness import PROVIDER_KEY, Gateway, gateway_config, start_gateway, validate
from yarl import URL

from gateway import billing
from gateway.state import RUNTIME
from providers.types import Usage

MESSAGES = [{"role": "user", "content": "hi"}]
# retries and a fallback model everywhere: a fault that must not be resent proves it by one upstream request
RETRIES = {"max_retries": 2, "base_delay_s": 0.01, "max_delay_s": 0.05, "deadline_s": 10}
BODY = {"model": "fake/gpt-4o", "messages": MESSAGES, "models": ["fake/gpt-5"]}


@dataclass
class Rig:
    gw: Gateway
    proxy: FaultProxy
    fake: FakeOpenAI

    async def post(self, body: dict[str, Any]) -> tuple[int, bytes, Any]:
        async with aiohttp.ClientSession() as http, http.post(
                self.gw.url + "/v1/chat/completions", headers=self.gw.auth(), json=body) as r:
            return r.status, await r.read(), r.headers

    async def settled(self) -> None:
        pending = self.gw.app[RUNTIME].settlements.pending
        while pending:
            await asyncio.wait(list(pending))

    async def ledger(self) -> tuple[int, int, int]:
        await self.settled()
        record = await self.gw.app[RUNTIME].store.get_key(self.gw.key_id)
        assert record is not None
        return record.balance, record.usage, record.credits

    async def generation(self, generation_id: str) -> dict[str, str]:
        record = await self.gw.app[RUNTIME].store.get_generation(self.gw.key_id, generation_id)
        assert record is not None
        return record

    async def no_leak(self) -> None:
        """No connection in use any more, and every one open at the proxy is an idle one in the gateway's
        keep-alive pool (a broken one is never pooled): nothing half-open is left behind."""
        connector = self.gw.app[RUNTIME].egress.plan("direct")[0].session.connector
        assert connector is not None

        def idle() -> int:
            return sum(len(conns) for conns in connector._conns.values())  # aiohttp keeps no public count

        await self.proxy.until(lambda: self.proxy.open == idle() and not connector._acquired)
        assert idle() <= 1


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def rig(request: pytest.FixtureRequest, aiohttp_server: Any,
              fake_openai: tuple[FakeOpenAI, str]) -> AsyncIterator[Rig]:
    fake, url = fake_openai
    port = URL(url).port
    assert port is not None
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    async with FaultProxy(port) as proxy:
        config = gateway_config(proxy.url(), store_url, prefix=f"f{uuid.uuid4().hex}:", retries=RETRIES)
        gw = await start_gateway(aiohttp_server, config, fake)
        yield Rig(gw, proxy, fake)
        await gw.close()


def generation_of(log: list[dict[str, Any]]) -> str:
    lines = [line for line in log if line.get("event") == "request" and line.get("generation_id")]
    assert lines, log
    return str(lines[-1]["generation_id"])


def delivered_text(raw: bytes) -> tuple[str, list[dict[str, Any]]]:
    """The content the client received in a raw SSE body, and its error events."""
    text, errors = "", []
    for block in raw.split(b"\n\n"):
        if not block.startswith(b"data: {"):
            continue
        event = json.loads(block[6:])
        if "error" in event:
            errors.append(event)
            continue
        for choice in event.get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
    return text, errors


def expected_cost(rig: Rig, model: str, record: dict[str, str]) -> int:
    route = rig.gw.app[RUNTIME].snapshot.catalog.routes[model]
    usage = Usage(prompt_tokens=int(record["tokens_prompt"]), completion_tokens=int(record["tokens_completion"]))
    return billing.token_cost(route.price, usage)


# --- before any answer: never resent ------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_reset_before_headers_is_a_clear_502_and_never_resent(rig: Rig, stream: bool,
                                                                    log_lines: Callable[[], Any]) -> None:
    rig.proxy.fault = Fault("reset", at=at_start, times=1)
    before = await rig.ledger()
    status, raw, headers = await rig.post({**BODY, "stream": stream})
    payload = json.loads(raw)
    validate(payload, "ErrorResponse")
    assert status == 502 and payload["error"]["code"] == "upstream_disconnected", payload
    assert "not resent" in payload["error"]["message"] and PROVIDER_KEY not in raw.decode()
    assert len(rig.fake.requests) == 1  # the upstream got it once: no retry, no fallback to fake/gpt-5
    assert headers.get("x-should-retry") == "false"  # nor by the client's SDK, which would retry a 502
    assert rig.proxy.faults_fired == 1
    assert await rig.ledger() == before  # nothing charged, no hold left
    record = await rig.generation(generation_of(log_lines()))
    assert record["status"] == "502" and record["tokens_completion"] == "0"
    await rig.no_leak()
    again, _, _ = await rig.post({**BODY, "stream": stream})  # on a fresh connection: the broken one is gone
    assert again == 200 and rig.proxy.opened == 2


async def test_reset_after_headers_of_a_json_answer_is_a_clear_502(rig: Rig, log_lines: Callable[[], Any]) -> None:
    rig.proxy.fault = Fault("reset", at=after_headers)
    before = await rig.ledger()
    status, raw, _ = await rig.post(BODY)
    payload = json.loads(raw)
    assert status == 502 and payload["error"]["code"] == "upstream_disconnected", payload
    assert len(rig.fake.requests) == 1
    assert await rig.ledger() == before
    assert (await rig.generation(generation_of(log_lines())))["status"] == "502"
    await rig.no_leak()


# --- inside a stream: the client keeps what it got, the bill matches it ---------------------------------


@pytest.mark.parametrize(("fault", "events", "status", "code"), [
    pytest.param("reset", 0, 502, "upstream_stream_error", id="reset-after-headers"),
    pytest.param("reset", 4, 502, "upstream_stream_error", id="reset-mid-stream"),
    pytest.param("close", 4, 502, "upstream_stream_error", id="closed-mid-chunked-body"),
    pytest.param("stall", 4, 504, "upstream_stalled", id="stalled-mid-stream"),
])
async def test_stream_fault_ends_cleanly_and_bills_what_was_delivered(
        rig: Rig, fault: str, events: int, status: int, code: str) -> None:
    rig.proxy.fault = Fault(fault, at=after_events(events))  # type: ignore[arg-type]
    _, _, credits = await rig.ledger()
    async with aiohttp.ClientSession() as http, http.post(
            rig.gw.url + "/v1/chat/completions", headers=rig.gw.auth(), json={**BODY, "stream": True}) as r:
        assert r.status == 200
        raw = await r.read()  # a clean end: the chunked body terminates, no payload error
    text, errors = delivered_text(raw)
    assert [e["error"]["code"] for e in errors] == [code]
    assert raw.endswith(b"\n\n") and b"[DONE]" not in raw
    expected_text = "".join(_recorded_content()[:max(events - 1, 0)])  # event 1 is the role chunk
    assert text == expected_text
    assert len(rig.fake.requests) == 1
    generation_id = _stream_id(raw) or ""
    balance, usage, _ = await rig.ledger()
    assert balance + usage == credits  # no hold left
    if not text:  # nothing delivered: nothing charged (the fault came before any chunk reached us)
        assert usage == 0
        return
    record = await rig.generation(generation_id)
    assert record["status"] == str(status) and record["estimated"] == "1" and record["cancelled"] == "0"
    assert int(record["tokens_completion"]) == billing.estimate_tokens(len(text.encode()))
    assert usage == expected_cost(rig, "fake/gpt-4o", record) == int(record["charged"])
    await rig.no_leak()


def _recorded_content() -> list[str]:
    out = []
    for event in recorded_events("sdk-stream-text-with-usage.sse")[1:]:
        payload = event.removeprefix(b"data: ").strip()
        if payload == b"[DONE]":
            break
        for choice in json.loads(payload)["choices"]:
            out.append((choice.get("delta") or {}).get("content") or "")
    return out


def _stream_id(raw: bytes) -> str | None:
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: {"):
            event = json.loads(block[6:])
            if "id" in event:
                return str(event["id"])
    return None


async def test_stall_sends_keepalives_until_the_between_chunk_timeout(rig: Rig) -> None:
    rig.proxy.fault = Fault("stall", at=after_events(2))
    client = rig.gw.openai()
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 2 and "silent" in info.value.message
    await rig.no_leak()


# --- what the upstream says is broken ------------------------------------------------------------------


async def test_html_502_page_is_retried_then_a_readable_502(rig: Rig) -> None:
    rig.fake.status = 502
    rig.fake.error_body = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center>"
                           "<h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
    before = await rig.ledger()
    status, raw, _ = await rig.post({"model": "fake/gpt-4o", "messages": MESSAGES})
    payload = json.loads(raw)
    validate(payload, "ErrorResponse")
    assert status == 502 and payload["error"]["code"] == "upstream_error"
    assert payload["error"]["message"].endswith("an HTML error page (502 Bad Gateway)")
    assert "<" not in payload["error"]["message"]
    assert len(rig.fake.requests) == 3  # a status is an answer, not a lost request: retried (max_retries 2)
    assert await rig.ledger() == before
    await rig.no_leak()


class ScriptedUpstream:
    """An OpenAI-compatible upstream that answers with bytes a test scripts: broken JSON, broken SSE."""

    def __init__(self) -> None:
        self.status = 200
        self.content_type = "application/json"
        self.parts: list[bytes] = []
        self.requests = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.answer)
        return app

    async def answer(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.requests += 1
        response = web.StreamResponse(status=self.status, headers={"Content-Type": self.content_type})
        await response.prepare(request)
        for part in self.parts:
            await response.write(part)
        await response.write_eof()
        return response


@pytest.fixture
async def scripted(aiohttp_server: Any, redis_url: str) -> AsyncIterator[tuple[ScriptedUpstream, Rig]]:
    upstream = ScriptedUpstream()
    server = await aiohttp_server(upstream.app())
    async with FaultProxy(server.port) as proxy:
        config = gateway_config(proxy.url(), redis_url, prefix=f"s{uuid.uuid4().hex}:", retries=RETRIES)
        fake = FakeOpenAI()
        gw = await start_gateway(aiohttp_server, config, fake)
        yield upstream, Rig(gw, proxy, fake)
        await gw.close()


async def test_invalid_json_answer_is_a_clear_502_not_resent(scripted: tuple[ScriptedUpstream, Rig]) -> None:
    upstream, rig = scripted
    upstream.parts = [b'{"id": "chatcmpl-1", "choices": [{"message": {"content": "hel']
    before = await rig.ledger()
    status, raw, _ = await rig.post(BODY)
    payload = json.loads(raw)
    validate(payload, "ErrorResponse")
    assert status == 502 and payload["error"]["code"] == "upstream_bad_response", payload
    assert upstream.requests == 1  # it answered 200: resending would pay twice
    assert await rig.ledger() == before
    await rig.no_leak()


def _chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    event = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


@pytest.mark.parametrize(("bad", "code"), [
    pytest.param(b'data: {"id": "chatcmpl-1", "choices": [{"delta": {"content": "x\n\n', "upstream_stream_error",
                 id="invalid-json-event"),
    pytest.param(b"data: [1, 2, 3]\n\n", "upstream_stream_error", id="json-not-an-object"),
    pytest.param(b"<html><body>502 Bad Gateway</body></html>\n\n", None, id="non-sse-line-ignored"),
])
async def test_malformed_stream_event(scripted: tuple[ScriptedUpstream, Rig], bad: bytes, code: str | None) -> None:
    upstream, rig = scripted
    upstream.content_type = "text/event-stream"
    upstream.parts = [_chunk("Hello"), _chunk(" world"), bad, _chunk("!"), _chunk(finish="stop"), b"data: [DONE]\n\n"]
    _, _, credits = await rig.ledger()
    status, raw, _ = await rig.post({**BODY, "stream": True})
    assert status == 200
    text, errors = delivered_text(raw)
    balance, usage, _ = await rig.ledger()
    assert balance + usage == credits
    record = await rig.generation(_stream_id(raw) or "")
    if code is None:  # a line that is no SSE field is ignored, as the SSE spec says
        assert text == "Hello world!" and errors == [] and raw.endswith(b"data: [DONE]\n\n")
    else:
        assert text == "Hello world" and [e["error"]["code"] for e in errors] == [code]
        assert record["status"] == "502"
    assert int(record["tokens_completion"]) == billing.estimate_tokens(len(text.encode()))
    assert usage == expected_cost(rig, "fake/gpt-4o", record)
    assert upstream.requests == 1
    await rig.no_leak()


ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}
# OpenRouter's usage (shared/wire/openrouter/api-chat-completions.usage.json): its price to the operator
OPENROUTER_USAGE = {"prompt_tokens": 10, "completion_tokens": 15, "total_tokens": 25, "cost": 0.0012,
                    "cost_details": {"upstream_inference_cost": None, "upstream_inference_prompt_cost": 0.0008,
                                     "upstream_inference_completions_cost": 0.0004}, "is_byok": False}


async def test_an_answer_with_null_usage_is_estimated_billed_and_answered(
        scripted: tuple[ScriptedUpstream, Rig]) -> None:
    """`"usage": null` (a compatible server's way of saying none): estimated like an absent one, never a 500
    after the charge."""
    upstream, rig = scripted
    upstream.parts = [json.dumps({**ANSWER, "usage": None}).encode()]
    _, _, credits = await rig.ledger()
    status, raw, _ = await rig.post(BODY)
    answer = json.loads(raw)
    assert status == 200, answer
    validate(answer, "CreateChatCompletionResponse")
    assert answer["billing"]["estimated"] is True and answer["usage"]["completion_tokens"] > 0
    balance, usage, _ = await rig.ledger()
    assert usage > 0 and balance + usage == credits
    assert answer["usage"]["cost"] == answer["billing"]["request_cost"] == billing.nano_to_usd(usage)


async def test_an_upstreams_own_money_figures_never_reach_the_client(scripted: tuple[ScriptedUpstream, Rig]) -> None:
    """An OpenRouter upstream's `usage` tells the operator's price (`cost`, `cost_details`, `is_byok`): the
    client reads its own cost in `usage.cost` and nothing of the operator's."""
    upstream, rig = scripted
    upstream.parts = [json.dumps({**ANSWER, "usage": OPENROUTER_USAGE}).encode()]
    status, raw, _ = await rig.post(BODY)
    answer = json.loads(raw)
    assert status == 200, answer
    assert answer["usage"]["cost"] == answer["billing"]["request_cost"] != OPENROUTER_USAGE["cost"]
    assert "cost_details" not in answer["usage"] and "is_byok" not in answer["usage"]
    assert answer["usage"]["completion_tokens"] == 15


@pytest.mark.parametrize("usage_apart", [False, True], ids=["usage-on-finish", "usage-chunk"])
async def test_a_streams_upstream_money_figures_never_reach_the_client(scripted: tuple[ScriptedUpstream, Rig],
                                                                       usage_apart: bool) -> None:
    upstream, rig = scripted
    upstream.content_type = "text/event-stream"
    finish = json.loads(_chunk(finish="stop")[6:])
    tail = [{**finish, "choices": []}] if usage_apart else []
    (tail or [finish])[-1]["usage"] = OPENROUTER_USAGE
    upstream.parts = [_chunk("Hello"), b"data: " + json.dumps(finish).encode() + b"\n\n",
                      *(b"data: " + json.dumps(c).encode() + b"\n\n" for c in tail), b"data: [DONE]\n\n"]
    status, raw, _ = await rig.post({**BODY, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200
    events = [json.loads(block[6:]) for block in raw.split(b"\n\n") if block.startswith(b"data: {")]
    usages = [e["usage"] for e in events if e.get("usage")]
    assert usages and all("cost_details" not in u and "is_byok" not in u for u in usages), usages
    assert [u["cost"] for u in usages] == [e["billing"]["request_cost"] for e in events if e.get("usage")]
    _, used, _ = await rig.ledger()
    assert usages[-1]["cost"] == billing.nano_to_usd(used) and usages[-1]["completion_tokens"] == 15


# --- slow and late answers -----------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_answer_in_small_pieces_arrives_whole_and_billed(rig: Rig, stream: bool) -> None:
    rig.proxy.fault = Fault("slow", chunk=7)  # every 7 bytes a write of its own: SSE lines split anywhere
    _, _, credits = await rig.ledger()
    status, raw, _ = await rig.post({**BODY, "stream": stream})
    assert status == 200
    if stream:
        text, errors = delivered_text(raw)
        assert text == "".join(_recorded_content()) and errors == [] and raw.endswith(b"data: [DONE]\n\n")
    else:
        assert json.loads(raw)["choices"][0]["message"]["content"]
    assert rig.proxy.forwarded_down > 0
    balance, usage, _ = await rig.ledger()
    assert usage > 0 and balance + usage == credits
    await rig.no_leak()


async def test_answer_later_than_the_first_byte_timeout_is_a_504_not_resent(rig: Rig) -> None:
    rig.proxy.fault = Fault("latency", delay_s=5)  # first_byte_s is 1.5 (+ connect_s 1) in the test config
    before = await rig.ledger()
    status, raw, _ = await rig.post(BODY)
    payload = json.loads(raw)
    assert status == 504 and payload["error"]["code"] == "upstream_timeout", payload
    assert len(rig.fake.requests) == 1  # the body was sent: the upstream may be working on it
    assert await rig.ledger() == before
    await rig.no_leak()
