"""The fake Gemini upstream speaks the recorded wire format and its controls do what they say."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from fakes.gemini_upstream import WIRE, FakeGemini, make_app, recorded_events

from providers import gemini
from providers.framing import SSEDecoder
from providers.types import ChatRequest, Target

Client = TestClient[Any, Any]
KEY = {"x-goog-api-key": "AIza-test"}
BODY = {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
UNARY_PATH = "/v1beta/models/gemini-2.0-flash:generateContent"
STREAM_PATH = "/v1beta/models/gemini-2.0-flash:streamGenerateContent"


@pytest.fixture
def fake() -> FakeGemini:
    return FakeGemini()


@pytest.fixture
async def client(fake: FakeGemini, aiohttp_client: Callable[..., Awaitable[Client]]) -> Client:
    return await aiohttp_client(make_app(fake))


def wire(name: str) -> Any:
    return json.loads((WIRE / name).read_text())


async def read_raw_writes(resp: aiohttp.ClientResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.content.iter_any()])


@pytest.mark.parametrize(("tool_mode", "recording"), [
    (False, "googleai/unary-success-basic-reply-short.json"),
    (True, "vertexai/unary-success-function-call-with-arguments.json"),
], ids=["text", "tool_mode"])
async def test_unary_answer_is_recording(client: Client, fake: FakeGemini, tool_mode: bool, recording: str) -> None:
    fake.tool_mode = tool_mode
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    assert (resp.status, await resp.json()) == (200, wire(recording))
    req = fake.last
    assert (req.path, req.model, req.method, req.body, req.query) == (UNARY_PATH, "gemini-2.0-flash",
                                                                       "generateContent", BODY, {})
    assert req.headers["x-goog-api-key"] == "AIza-test"


@pytest.mark.parametrize(("tool_mode", "recording"), [
    (False, "googleai/streaming-success-basic-reply-short.txt"),
    (True, "vertexai/streaming-success-function-call-short.txt"),
    (None, "googleai/streaming-success-thinking-reply-thought-summary.txt"),
], ids=["text", "tool_mode", "chosen_recording"])
async def test_stream_replays_recording_byte_for_byte(client: Client, fake: FakeGemini, tool_mode: bool | None,
                                                      recording: str) -> None:
    if tool_mode is None:
        fake.stream_recording = recording
    else:
        fake.tool_mode = tool_mode
    resp = await client.post(STREAM_PATH, params={"alt": "sse"}, json=BODY, headers=KEY)
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    raw = await read_raw_writes(resp)
    assert raw == (WIRE / recording).read_bytes()
    assert fake.chunks_sent == len(recorded_events(recording))
    events = SSEDecoder().feed(raw)
    assert [json.loads(e.data) for e in events] == [
        json.loads(b.strip().removeprefix(b"data: ")) for b in recorded_events(recording)]
    assert fake.last.query == {"alt": "sse"} and fake.last.method == "streamGenerateContent"


async def test_stream_one_event_per_write(client: Client, fake: FakeGemini) -> None:
    fake.delay_between_chunks_s = 0.05  # the client sees each event on its own
    resp = await client.post(STREAM_PATH, params={"alt": "sse"}, json=BODY, headers=KEY)
    writes = [chunk async for chunk in resp.content.iter_any()]
    assert writes == recorded_events("googleai/streaming-success-basic-reply-short.txt")


async def test_stream_without_alt_sse_is_a_json_array(client: Client) -> None:
    resp = await client.post(STREAM_PATH, json=BODY, headers=KEY)
    chunks = await resp.json()
    assert isinstance(chunks, list) and len(chunks) == 3
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.parametrize("headers,params", [({}, {}), ({"x-goog-api-key": ""}, {})], ids=["none", "empty"])
async def test_missing_key_is_recorded_api_key_error(client: Client, headers: dict[str, str],
                                                     params: dict[str, str]) -> None:
    resp = await client.post(UNARY_PATH, json=BODY, headers=headers, params=params)
    assert (resp.status, await resp.json()) == (400, wire("googleai/unary-failure-api-key.json"))


async def test_key_in_query_is_accepted(client: Client) -> None:
    resp = await client.post(UNARY_PATH, json=BODY, params={"key": "AIza-test"})
    assert resp.status == 200


async def test_unknown_model(client: Client, fake: FakeGemini) -> None:
    fake.models = {"gemini-2.5-pro"}
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    assert (resp.status, await resp.json()) == (404, wire("googleai/unary-failure-unknown-model.json"))


async def test_error_status_and_body(client: Client, fake: FakeGemini) -> None:
    fake.status, fake.error_body = 429, wire("vertexai/unary-failure-quota-exceeded.json")
    resp = await client.post(STREAM_PATH, params={"alt": "sse"}, json=BODY, headers=KEY)
    assert (resp.status, await resp.json()) == (429, fake.error_body)
    fake.status, fake.error_body = 503, b"<html>unavailable</html>"
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    assert (resp.status, await resp.read()) == (503, b"<html>unavailable</html>")
    fake.error_body = None
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    assert (resp.status, (await resp.json())["error"]["status"]) == (503, "INTERNAL")


async def test_bad_body_and_unknown_method(client: Client) -> None:
    resp = await client.post(UNARY_PATH, data=b"{not json", headers=KEY)
    assert (resp.status, (await resp.json())["error"]["status"]) == (400, "INVALID_ARGUMENT")
    resp = await client.post("/v1beta/models/gemini-2.0-flash:countTokens", json=BODY, headers=KEY)
    assert resp.status == 404


async def test_delay_and_reset(client: Client, fake: FakeGemini) -> None:
    fake.delay_before_headers_s = 0.2
    fake.tool_mode = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    assert resp.status == 200 and loop.time() - started >= 0.2
    assert len(fake.requests) == 1
    fake.reset()
    assert (fake.requests, fake.delay_before_headers_s, fake.status, fake.tool_mode) == ([], 0.0, 200, False)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_adapter_round_trip_through_fake(client: Client, fake: FakeGemini, stream: bool) -> None:
    """What providers.gemini sends is what the fake expects, and what the fake answers the adapter reads."""
    fake.tool_mode = True
    target = Target(provider="google", base_url="", api_key="AIza-test", upstream_model="gemini-2.5-flash",
                    public_model="google/gemini-2.5-flash")
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "Add 4 and 5"}]}
    upstream = gemini.build_request(ChatRequest(body=body, stream=stream), target)
    resp = await client.post(upstream.url, data=upstream.body, headers=upstream.headers)
    assert resp.status == 200
    assert fake.last.body == {"contents": [{"role": "user", "parts": [{"text": "Add 4 and 5"}]}]}
    if stream:
        state = gemini.new_stream_state(ChatRequest(body=body, stream=True), target)
        decoder = SSEDecoder()
        chunks = [c async for data in resp.content.iter_any() for e in decoder.feed(data)
                  for c in gemini.parse_stream_event(state, e)]
        chunks += [c for e in decoder.flush() for c in gemini.parse_stream_event(state, e)]
        chunks += gemini.parse_stream_end(state)  # the recording's STOP comes without usage: the body's end ends it
        calls = [call for c in chunks for choice in c["choices"] for call in choice["delta"].get("tool_calls", [])]
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
            ("getTemperature", '{"city":"San Jose"}')]
        assert (state.done, state.finish_reason) == (True, "tool_calls")
    else:
        message = gemini.parse_response(await resp.read(), target).body["choices"][0]["message"]
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
            ("sum", '{"y":5,"x":4}')]


THINKS = {**BODY, "generationConfig": {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 1024}}}


@pytest.mark.parametrize(("body", "tool_mode", "recording"), [
    (THINKS, False, "googleai/unary-success-thinking-reply-thought-summary.json"),
    (THINKS, True, "googleai/unary-success-thinking-function-call-thought-summary-signature.json"),
    ({**BODY, "generationConfig": {"thinkingConfig": {"includeThoughts": False, "thinkingBudget": 1024}}}, False,
     "googleai/unary-success-basic-reply-short.json"),
    ({**BODY, "generationConfig": {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 0}}}, False,
     "googleai/unary-success-basic-reply-short.json"),
], ids=["thoughts", "thoughts_tool_mode", "thoughts_hidden", "thinking_off"])
async def test_thought_summaries_when_asked(client: Client, fake: FakeGemini, body: dict[str, Any], tool_mode: bool,
                                            recording: str) -> None:
    fake.tool_mode = tool_mode
    resp = await client.post(UNARY_PATH, json=body, headers=KEY)
    assert (resp.status, await resp.json()) == (200, wire(recording))


async def test_thought_summaries_streamed_byte_for_byte(client: Client) -> None:
    recording = "googleai/streaming-success-thinking-reply-thought-summary.txt"
    resp = await client.post(STREAM_PATH, params={"alt": "sse"}, json=THINKS, headers=KEY)
    assert await read_raw_writes(resp) == (WIRE / recording).read_bytes()


async def test_scripted_text_and_call_are_read_as_the_recordings_are(client: Client, fake: FakeGemini) -> None:
    """`text` and `function_call` change what the answer says, not its shape: the adapter reads them as it
    reads the recordings, streamed in as many events as recorded, with their own line ends."""
    target = Target(provider="google", base_url="", api_key="AIza-test", upstream_model="gemini-2.0-flash",
                    public_model="google/flash")
    fake.text = '{"name": "Ada", "age": 36}'
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    reply = gemini.parse_response(await resp.read(), target)
    assert reply.body["choices"][0]["message"]["content"] == fake.text
    raw = await read_raw_writes(await client.post(STREAM_PATH, params={"alt": "sse"}, json=BODY, headers=KEY))
    recorded = (WIRE / "googleai/streaming-success-basic-reply-short.txt").read_bytes()
    assert raw.count(b"\r\n\r\n") == recorded.count(b"\r\n\r\n") and fake.chunks_sent == 3
    texts = [part["text"] for e in SSEDecoder().feed(raw) for part in
             json.loads(e.data)["candidates"][0]["content"]["parts"]]
    assert "".join(texts) == fake.text and len(texts) == 3
    fake.text, fake.function_call = None, {"name": "Person", "arguments": {"name": "Ada", "age": 36}}
    resp = await client.post(UNARY_PATH, json=BODY, headers=KEY)
    (call,) = gemini.parse_response(await resp.read(), target).body["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "Person"
    assert json.loads(call["function"]["arguments"]) == {"name": "Ada", "age": 36}


@pytest.mark.parametrize(("budget", "status", "message"), [
    (24576, 200, None), (-1, 200, None), (0, 200, None),
    (24577, 400, "The thinking budget (24577) is invalid."),
], ids=["most", "dynamic", "off", "above"])
async def test_thinking_budgets_refuse_a_budget_out_of_the_models_range(
        client: Client, fake: FakeGemini, budget: int, status: int, message: str | None) -> None:
    fake.thinking_budgets = {"gemini-2.5-flash": (range(0, 24577),), "gemini-2.5-pro": (range(128, 32769),)}
    body = {**BODY, "generationConfig": {"thinkingConfig": {"thinkingBudget": budget}}}
    resp = await client.post("/v1beta/models/gemini-2.5-flash:generateContent", json=body, headers=KEY)
    assert resp.status == status
    if message:
        assert (await resp.json())["error"] == {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}
    resp = await client.post("/v1beta/models/gemini-2.5-pro:generateContent",
                             json={**BODY, "generationConfig": {"thinkingConfig": {"thinkingBudget": 0}}}, headers=KEY)
    assert resp.status == 400 and "only works in thinking mode" in (await resp.json())["error"]["message"]
    resp = await client.post(UNARY_PATH, json=body, headers=KEY)  # a model it does not name takes any
    assert resp.status == 200
