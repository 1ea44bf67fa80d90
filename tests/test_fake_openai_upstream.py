"""The fake OpenAI upstream speaks the recorded wire format and its controls do what they say."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from fakes.openai_upstream import WIRE, FakeOpenAI, make_app
from harness import validate

from providers.framing import SSEDecoder
from providers.types import SSEEvent

Client = TestClient[Any, Any]
MSGS = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
async def client(fake: FakeOpenAI, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(make_app(fake))


async def read_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    decoder = SSEDecoder()
    events: list[bytes] = []
    async for chunk in resp.content.iter_any():
        events.extend(e.data for e in decoder.feed(chunk))
    return events


def content_of(events: list[bytes]) -> str:
    chunks = [json.loads(e) for e in events if e != b"[DONE]"]
    return "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])


async def test_non_streamed_answer_is_recorded_response(client: Client, fake: FakeOpenAI) -> None:
    resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS},
                             headers={"Authorization": "Bearer sk-test"})
    assert resp.status == 200
    expected = json.loads((WIRE / "docs-chat-default.response.json").read_text()) | {"model": "gpt-4o"}
    assert await resp.json() == expected
    assert fake.last.path == "/v1/chat/completions"
    assert fake.last.headers["Authorization"] == "Bearer sk-test"
    assert fake.last.body == {"model": "gpt-4o", "messages": MSGS}


@pytest.mark.parametrize(("include_usage", "tool_stream", "count"), [
    (True, False, 34), (False, False, 33), (True, True, 11), (None, True, 10),
], ids=["text_usage", "text_no_usage", "tool_usage", "tool_no_stream_options"])
async def test_stream_replays_recording(client: Client, fake: FakeOpenAI, include_usage: bool | None,
                                        tool_stream: bool, count: int) -> None:
    fake.tool_stream = tool_stream
    name = "sdk-stream-tool-call.sse" if tool_stream else "sdk-stream-text-with-usage.sse"
    recorded = [b.removeprefix(b"data: ") for b in (WIRE / name).read_bytes().split(b"\n\n") if b.strip()]
    body: dict[str, Any] = {"model": "gpt-4o", "messages": MSGS, "stream": True}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = await read_events(resp)
    assert events[-1] == b"[DONE]"
    assert len(events) == count
    usage_chunk = recorded[-2]
    assert (usage_chunk in events) == bool(include_usage)
    assert events == [e for e in recorded if include_usage or e != usage_chunk]


async def test_error_status_and_body(client: Client, fake: FakeOpenAI) -> None:
    recorded = json.loads((WIRE / "error-429-rate-limit-exceeded.json").read_text())
    fake.status, fake.error_body = recorded["_status"], recorded["body"]
    resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS})
    assert (resp.status, await resp.json()) == (429, recorded["body"])
    fake.status, fake.error_body = 502, b"<html>bad gateway</html>"
    resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": MSGS})
    assert (resp.status, await resp.read()) == (502, b"<html>bad gateway</html>")


async def test_stall_sets_client_disconnected(client: Client, fake: FakeOpenAI) -> None:
    fake.stall_after_chunks = 2
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    while len(events) < 2:
        events.extend(decoder.feed(await resp.content.readany()))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(resp.content.readany(), 0.2)
    assert not fake.client_disconnected.is_set()
    resp.close()
    await asyncio.wait_for(fake.client_disconnected.wait(), 2)
    assert fake.chunks_sent == 2


async def test_close_mid_stream_breaks_the_body(client: Client, fake: FakeOpenAI) -> None:
    fake.close_mid_stream_after = 3
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
    with pytest.raises(aiohttp.ClientPayloadError):
        await read_events(resp)
    assert fake.chunks_sent == 3


async def test_silence_after_headers(client: Client, fake: FakeOpenAI) -> None:
    fake.silence_s_before_first_chunk = 0.4
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
    assert resp.status == 200 and loop.time() - started < 0.3  # headers came before the silence ended
    events = await read_events(resp)
    assert loop.time() - started >= 0.4
    assert events[-1] == b"[DONE]"


async def test_giant_chunk_is_one_data_line(client: Client, fake: FakeOpenAI) -> None:
    fake.giant_chunk_bytes = 1024 * 1024
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS, "stream": True})
    events = await read_events(resp)
    assert content_of(events) == "x" * (1024 * 1024)
    assert len(events) == 4  # role, giant, finish, [DONE]


async def test_delays_models_and_reset(client: Client, fake: FakeOpenAI) -> None:
    fake.delay_before_headers_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": MSGS})
    assert resp.status == 200 and loop.time() - started >= 0.2
    resp = await client.get("/v1/models")
    assert [m["id"] for m in (await resp.json())["data"]] == fake.models
    assert [r.path for r in fake.requests] == ["/v1/chat/completions", "/v1/models"]
    fake.reset()
    assert (fake.requests, fake.delay_before_headers_s, fake.status) == ([], 0.0, 200)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_scripted_text_and_call_keep_the_wire_format(client: Client, fake: FakeOpenAI, stream: bool) -> None:
    """`content` and `tool_call` change what the answer says, not its shape: OpenAI's schemas still hold."""
    body = {"model": "gpt-4o", "messages": MSGS, "stream": stream, "stream_options": {"include_usage": True}}
    fake.content = '{"name": "Ada", "age": 36}'
    resp = await client.post("/v1/chat/completions", json=body)
    if stream:
        events = await read_events(resp)
        for event in events[:-1]:
            validate(json.loads(event), "CreateChatCompletionStreamResponse")
        assert content_of(events) == fake.content and len(events) == 34  # as many events as recorded
    else:
        answer = await resp.json()
        validate(answer, "CreateChatCompletionResponse")
        assert answer["choices"][0]["message"]["content"] == fake.content
    fake.content, fake.tool_call = None, {"name": "Person", "arguments": {"name": "Ada", "age": 36}}
    resp = await client.post("/v1/chat/completions", json=body)
    if stream:
        events = await read_events(resp)
        chunks = [json.loads(e) for e in events[:-1]]
        for chunk in chunks:
            validate(chunk, "CreateChatCompletionStreamResponse")
        calls = [c for chunk in chunks for choice in chunk["choices"] for c in choice["delta"].get("tool_calls", ())]
        assert calls[0]["function"]["name"] == "Person" and len(events) == 11
        assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"name": "Ada", "age": 36}
    else:
        answer = await resp.json()
        validate(answer, "CreateChatCompletionResponse")
        (call,) = answer["choices"][0]["message"]["tool_calls"]
        assert call["function"] == {"name": "Person", "arguments": '{"name": "Ada", "age": 36}'}


@pytest.mark.parametrize(("model", "effort", "code"), [
    ("gpt-5", "minimal", None), ("gpt-5", "none", "unsupported_value"),
    ("gpt-4o", "low", "unsupported_parameter"), ("gpt-4o-mini", "xhigh", None),
], ids=["taken", "value-refused", "field-refused", "model-not-named"])
async def test_reasoning_efforts_refuse_what_the_model_does_not_take(client: Client, fake: FakeOpenAI, model: str,
                                                                     effort: str, code: str | None) -> None:
    fake.reasoning_efforts = {"gpt-5": ("minimal", "low", "medium", "high"), "gpt-4o": ()}
    resp = await client.post("/v1/chat/completions", json={"model": model, "messages": MSGS,
                                                           "reasoning_effort": effort})
    if code is None:
        assert resp.status == 200
        return
    error = (await resp.json())["error"]
    assert resp.status == 400 and (error["code"], error["param"]) == (code, "reasoning_effort")
    if code == "unsupported_value":
        assert error["message"] == ("Unsupported value: 'none' is not supported with the 'gpt-5' model. "
                                    "Supported values are: 'minimal', 'low', 'medium', 'high'.")
