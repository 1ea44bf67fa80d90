"""The fake Anthropic upstream speaks the real wire format: the official `anthropic` SDK reads it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import anthropic
import jsonschema
import pytest
from fakes.anthropic_upstream import WIRE, FakeAnthropic, make_app, recorded_events

from providers import anthropic as adapter
from providers.framing import SSEDecoder
from providers.types import ChatRequest, Target

MSGS: list[Any] = [{"role": "user", "content": "Hi"}]
KEY = "sk-ant-test"


@pytest.fixture
def fake() -> FakeAnthropic:
    return FakeAnthropic()


@pytest.fixture
async def base_url(fake: FakeAnthropic, aiohttp_server: Any) -> str:
    server = await aiohttp_server(make_app(fake))
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def sdk(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=base_url, api_key=KEY, max_retries=0)
    yield client
    await client.close()


def wire(name: str) -> Any:
    return json.loads((WIRE / name).read_text())


@pytest.mark.parametrize(("tool_response", "recording"), [
    (False, "sdk-messages-end-turn.response.json"), (True, "sdk-messages-tool-use.response.json"),
], ids=["end_turn", "tool_use"])
async def test_sdk_reads_message(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic, tool_response: bool,
                                 recording: str) -> None:
    fake.tool_response = tool_response
    message = await sdk.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MSGS)
    expected = wire(recording) | {"model": "claude-haiku-4-5"}
    assert message.model_dump(mode="json", exclude_unset=True) == expected
    assert message.usage.input_tokens == expected["usage"]["input_tokens"]
    sent = fake.last
    assert (sent.path, sent.headers["authorization"]) == ("/v1/messages", f"Bearer {KEY}")  # SDK 2.x: bearer
    assert sent.headers["anthropic-version"]  # the SDK's own version (2026-10-21 for 2.12); ours is 2023-06-01
    assert sent.body == {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": MSGS}


@pytest.mark.parametrize(("tool_stream", "text", "tool_input"), [
    (False, "Hello there!", None),
    (True, "I'll check the current weather in Paris for you.", {"location": "Paris"}),
], ids=["basic", "tool_use"])
async def test_sdk_reads_stream(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic, tool_stream: bool, text: str,
                                tool_input: dict[str, Any] | None) -> None:
    fake.tool_stream = tool_stream
    name = "sdk-stream-tool-use.sse" if tool_stream else "sdk-stream-basic.sse"
    async with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=MSGS) as stream:
        kinds = [event.type async for event in stream]
        message = await stream.get_final_message()
    assert fake.events_sent == len(recorded_events(name))
    assert "message_stop" in kinds and "text" in kinds
    assert "".join(b.text for b in message.content if b.type == "text") == text
    tools = [b.input for b in message.content if b.type == "tool_use"]
    assert tools == ([tool_input] if tool_input else [])
    assert message.stop_reason == ("tool_use" if tool_stream else "end_turn")
    assert fake.last.body["stream"] is True


async def test_sdk_raises_overloaded_on_529(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic) -> None:
    fake.status, fake.error_body = 529, FakeAnthropic.overloaded_body()
    with pytest.raises(anthropic.OverloadedError) as info:
        await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSGS)
    assert info.value.status_code == 529
    assert info.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


async def test_sdk_raises_on_error_event_mid_stream(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic) -> None:
    fake.error_event_after = 3
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        async with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=10, messages=MSGS) as stream:
            async for _ in stream:
                pass
    assert fake.events_sent == 4


@pytest.mark.parametrize(("headers", "status", "error_type"), [
    ({"anthropic-version": "2023-06-01"}, 401, "authentication_error"),
    ({"x-api-key": KEY}, 400, "invalid_request_error"),
    ({"x-api-key": KEY, "anthropic-version": "2023-06-01"}, 200, None),
], ids=["no_key", "no_version", "x_api_key"])
async def test_required_headers(base_url: str, fake: FakeAnthropic, headers: dict[str, str], status: int,
                                error_type: str | None) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": MSGS}
    async with aiohttp.ClientSession() as session, session.post(
            f"{base_url}/v1/messages", json=body, headers=headers) as resp:
        answer = await resp.json()
    assert resp.status == status
    if error_type:
        assert answer == {"type": "error", "error": {"type": error_type, "message": answer["error"]["message"]},
                          "request_id": answer["request_id"]}
    else:
        assert answer["type"] == "message"
    assert fake.last.body == body


async def test_reset_restores_controls(fake: FakeAnthropic, sdk: anthropic.AsyncAnthropic) -> None:
    fake.status, fake.tool_stream, fake.delay_before_headers_s = 429, True, 0.1
    with pytest.raises(anthropic.RateLimitError):
        await sdk.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MSGS)
    fake.reset()
    assert (fake.requests, fake.status, fake.tool_stream, fake.delay_before_headers_s) == ([], 200, False, 0.0)


# -- the adapter against the fake: what providers.anthropic sends, the fake accepts, and back -----------

TARGET = Target(provider="anthropic", base_url="", api_key=KEY, upstream_model="claude-haiku-4-5",
                public_model="anthropic/claude-haiku-4-5")


async def send(base_url: str, chat: ChatRequest) -> tuple[int, bytes]:
    upstream = adapter.build_request(chat, replace(TARGET, base_url=base_url))
    async with aiohttp.ClientSession() as session, session.request(
            upstream.method, upstream.url, headers=upstream.headers, data=upstream.body) as resp:
        return resp.status, await resp.read()


async def test_adapter_round_trip(base_url: str, fake: FakeAnthropic) -> None:
    status, raw = await send(base_url, ChatRequest(body={"model": "anthropic/claude-haiku-4-5", "messages": MSGS},
                                                   stream=False))
    assert status == 200
    assert fake.last.headers["x-api-key"] == KEY and fake.last.headers["anthropic-version"] == "2023-06-01"
    result = adapter.parse_response(raw, TARGET)
    assert result.body["choices"][0]["message"]["content"] == wire(
        "sdk-messages-end-turn.response.json")["content"][0]["text"]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (705, 25)


async def test_adapter_stream_round_trip(base_url: str, fake: FakeAnthropic) -> None:
    fake.tool_stream = True
    status, raw = await send(base_url, ChatRequest(body={"model": "m", "messages": MSGS}, stream=True))
    assert status == 200 and fake.last.headers["accept"] == "text/event-stream"
    state = adapter.new_stream_state(ChatRequest(body={}, stream=True), TARGET)
    chunks = [c for e in SSEDecoder().feed(raw) for c in adapter.parse_stream_event(state, e)]
    args = "".join(call["function"].get("arguments", "") for c in chunks for choice in c["choices"]
                   for call in choice["delta"].get("tool_calls", []))
    assert json.loads(args) == {"location": "Paris"}
    assert (state.done, state.finish_reason, state.usage.total_tokens) == (True, "tool_calls", 377 + 65)


async def test_adapter_reads_the_fakes_529(base_url: str, fake: FakeAnthropic) -> None:
    fake.status, fake.error_body = 529, FakeAnthropic.overloaded_body()
    status, raw = await send(base_url, ChatRequest(body={"model": "m", "messages": MSGS}, stream=False))
    err = adapter.parse_error(status, raw)
    assert (err.status, err.code, err.message, err.retryable) == (529, "overloaded_error", "Overloaded", True)


THINKING: dict[str, Any] = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.parametrize("redacted", [False, True])
async def test_thinking_answer_in_the_recorded_shape(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic,
                                                     redacted: bool) -> None:
    """The SDK reads the thinking answer; its thinking block is docs-stream-thinking.sse's, put together."""
    fake.tool_response, fake.redacted = True, redacted
    message = await sdk.messages.create(model="claude-sonnet-4-0", max_tokens=2000, messages=MSGS,
                                        thinking=THINKING)  # type: ignore[arg-type]
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", *(["redacted_thinking"] if redacted else []), "tool_use"]
    deltas = [json.loads(raw.strip().partition(b"\ndata: ")[2]).get("delta", {})
              for raw in recorded_events("docs-stream-thinking.sse")]
    thinking = message.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == "".join(d["thinking"] for d in deltas if d.get("type") == "thinking_delta")
    assert thinking.signature == "".join(d["signature"] for d in deltas if d.get("type") == "signature_delta")


@pytest.mark.parametrize("redacted", [False, True])
async def test_thinking_stream_the_sdk_puts_together(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic,
                                                     redacted: bool) -> None:
    fake.tool_stream, fake.redacted = True, redacted
    async with sdk.messages.stream(model="claude-sonnet-4-0", max_tokens=2000, messages=MSGS,
                                   thinking=THINKING) as stream:  # type: ignore[arg-type]
        message = await stream.get_final_message()
    plain = await sdk.messages.create(model="claude-sonnet-4-0", max_tokens=2000, messages=MSGS,
                                      thinking=THINKING)  # type: ignore[arg-type]
    assert message.content[0] == plain.content[0]  # the same thinking block, streamed or not
    assert [b.type for b in message.content] == ["thinking", *(["redacted_thinking"] if redacted else []),
                                                 "text", "tool_use"]
    assert message.usage.output_tokens > 0


@pytest.mark.parametrize(("fields", "message"), [
    ({"thinking": {"type": "enabled", "budget_tokens": 1000}}, "greater than or equal to 1024"),
    ({"thinking": {"type": "enabled", "budget_tokens": 2000}}, "must be greater than `thinking.budget_tokens`"),
    ({"thinking": THINKING, "temperature": 0.5}, "`temperature` may only be set to 1"),
    ({"thinking": THINKING, "top_k": 5}, "top_k"),
    ({"thinking": THINKING, "tools": [{"name": "t", "input_schema": {"type": "object"}}],
      "tool_choice": {"type": "any"}}, "forces tool use"),
    ({"thinking": THINKING, "messages": [*MSGS, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]},
     "must start with a thinking block"),
    ({"thinking": THINKING, "messages": [*MSGS, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "made up", "signature": "Zm9yZ2Vk"},
        {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}]},
     "Invalid `signature`"),
], ids=["budget_floor", "budget_above_max", "temperature", "top_k", "forced_tool", "unsigned_turn", "forged"])
async def test_thinking_refused_as_anthropic_refuses(sdk: anthropic.AsyncAnthropic, fields: dict[str, Any],
                                                     message: str) -> None:
    body: dict[str, Any] = {"model": "claude-sonnet-4-0", "max_tokens": 2000, "messages": MSGS, **fields}
    sampling = {name: body.pop(name) for name in ("temperature", "top_k") if name in body}  # not in this SDK
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(**body, extra_body=sampling)
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message in info.value.body["error"]["message"]  # type: ignore[index]


# -- output_config: effort and format, as the API takes them ---------------------------------------------------------

PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0},
    "role": {"enum": ["admin", "user"]}, "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1},
    "nickname": {"type": ["string", "null"]}},
    "required": ["name", "age", "role", "tags", "nickname"], "additionalProperties": False,
    "$defs": {"tag": {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"],
                      "additionalProperties": False}}}


@pytest.mark.parametrize("effort", ["low", "medium", "high", "xhigh", "max"])
async def test_every_effort_anthropic_has_is_taken(sdk: anthropic.AsyncAnthropic, effort: str) -> None:
    message = await sdk.messages.create(model="claude-opus-4-7", max_tokens=100, messages=MSGS,
                                        output_config={"effort": effort})  # type: ignore[typeddict-item]
    assert message.content[0].type == "text"


@pytest.mark.parametrize(("output_config", "says"), [
    ({"effort": "extreme"}, "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"),
    ({"effort": "none"}, "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"),
    ({"effort": ["high"]}, "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"),
    ("high", "output_config: Input should be a valid dictionary"),
    ({"format": {"type": "json_object"}}, "output_config.format.type: Input should be 'json_schema'"),
    ({"format": {"type": "json_schema"}}, "output_config.format.schema: Field required"),
], ids=["unknown", "openais-none", "a-list", "not-an-object", "json-object", "no-schema"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_output_config_refused_as_anthropic_refuses(sdk: anthropic.AsyncAnthropic, output_config: Any,
                                                          says: str, stream: bool) -> None:
    """The fake took any `output_config`, so a test sending a value Claude refuses proved nothing."""
    with pytest.raises(anthropic.BadRequestError) as info:
        await sdk.messages.create(model="claude-opus-4-7", max_tokens=100, messages=MSGS, stream=stream,
                                  extra_body={"output_config": output_config})
    assert info.value.body == {"type": "error", "error": {"type": "invalid_request_error", "message": says},
                               "request_id": "req_011CFakeAnthropicUpstream0001"}


@pytest.mark.parametrize("field", ["output_config", "output_format"])
async def test_a_format_is_answered_in_json_the_schema_takes(sdk: anthropic.AsyncAnthropic, fake: FakeAnthropic,
                                                             field: str) -> None:
    fmt = {"type": "json_schema", "schema": PERSON}
    extra = {"output_config": {"format": fmt}} if field == "output_config" else {"output_format": fmt}
    message = await sdk.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=MSGS, extra_body=extra)
    answer = json.loads(message.content[0].text)  # type: ignore[union-attr]
    jsonschema.validate(answer, PERSON)
    recorded = wire("sdk-messages-end-turn.response.json")
    assert message.model_dump(mode="json", exclude_unset=True) == recorded | {
        "model": "claude-sonnet-4-5", "content": [{"type": "text", "text": message.content[0].text}]}  # type: ignore[union-attr]
    async with sdk.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=MSGS,
                                   extra_body=extra) as stream:
        pieces = [text async for text in stream.text_stream]
    assert "".join(pieces) == message.content[0].text and len(pieces) > 1  # type: ignore[union-attr]
    assert fake.events_sent == len(recorded_events("sdk-stream-basic.sse"))  # the recorded events, texts aside
