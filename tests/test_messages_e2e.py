"""Anthropic's Messages API through the running gateway with the official anthropic SDK, on both stores:
natively to an Anthropic upstream and translated to OpenAI and Gemini ones, plain and streamed, billed,
rate-limited, recorded, and with errors in Anthropic's shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import anthropic
import pytest
from apis_config import OPENAI_KEY, Upstreams, config_doc
from fakes.anthropic_upstream import WIRE as ANTHROPIC_WIRE
from fakes.gemini_upstream import recorded_chunks
from fakes.openai_upstream import REASONING
from fakes.openai_upstream import WIRE as OPENAI_WIRE
from harness import Gateway, clear_of_minute_boundary, start_gateway
from pdfs import make_pdf
from test_apis_e2e import assert_charged, generation
from test_billing_e2e import key_state, nano

from gateway import billing, validation
from gateway.billing import PDF_PAGE_TOKENS
from gateway.catalog import Catalog
from gateway.config_load import parse
from gateway.errors import InvalidRequest
from gateway.state import RUNTIME
from providers.types import Usage

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]
CLAUDE_COST = 705 * 3_000 + 25 * 15_000  # sdk-messages-end-turn.response.json at 3 / 15 USD per Mtok
CLAUDE_STREAM_COST = 11 * 3_000 + 6 * 15_000  # sdk-stream-basic.sse
GPT4O_COST = 19 * 2_500 + 10 * 10_000  # docs-chat-default.response.json at 2.5 / 10 USD per Mtok


def _openai_stream_usage() -> tuple[int, int]:
    raw = (OPENAI_WIRE / "sdk-stream-text-with-usage.sse").read_bytes()
    for block in raw.split(b"\n\n"):
        data = block.removeprefix(b"data: ").strip()
        if data.startswith(b"{") and json.loads(data).get("usage"):
            usage = json.loads(data)["usage"]
            return usage["prompt_tokens"], usage["completion_tokens"]
    raise AssertionError("no usage chunk")


def _openai_stream_text() -> str:
    raw = (OPENAI_WIRE / "sdk-stream-text-with-usage.sse").read_bytes()
    text = ""
    for block in raw.split(b"\n\n"):
        data = block.removeprefix(b"data: ").strip()
        if data.startswith(b"{"):
            for choice in json.loads(data)["choices"]:
                text += choice["delta"].get("content") or ""
    return text


# -- native pass-through ---------------------------------------------------------------------------


async def test_messages_create_natively_to_anthropic(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(api_gateway)
    message = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES,
                                           system="Be brief.", extra_headers={"anthropic-beta": "tools-2024-04-04"})
    recorded = json.loads((ANTHROPIC_WIRE / "sdk-messages-end-turn.response.json").read_text())
    assert message.content[0].text == recorded["content"][0]["text"]  # type: ignore[union-attr]
    assert message.model == "claude/sonnet" and message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 705 and message.usage.output_tokens == 25
    bill = (message.model_extra or {})["billing"]
    assert nano(bill["request_cost"]) == CLAUDE_COST and bill["using_own_key"] is False
    sent = api_gateway.extra["upstreams"].anthropic.last
    assert sent.body == {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": MESSAGES, "system": "Be brief."}
    assert sent.headers["x-api-key"] == "sk-ant-test-key-0000000000000000"  # the provider's key, not the client's
    assert sent.headers["anthropic-beta"] == "tools-2024-04-04"
    record = await assert_charged(api_gateway, before, CLAUDE_COST, message.id, "messages")
    assert record["provider_name"] == "claude" and record["finish_reason"] == "stop"


async def test_messages_stream_natively_to_anthropic(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(api_gateway)
    async with claude.messages.stream(model="claude/sonnet", max_tokens=100, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello there!"
    assert final.content[0].text == "Hello there!"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6 and final.usage.input_tokens == 11
    await assert_charged(api_gateway, before, CLAUDE_STREAM_COST, final.id, "messages")


async def test_stream_events_carry_the_bill_on_message_delta(api_gateway: Gateway,
                                                             claude: anthropic.AsyncAnthropic) -> None:
    stream = await claude.messages.create(model="claude/sonnet", max_tokens=100, messages=MESSAGES, stream=True)
    events = [event async for event in stream]
    assert events[0].type == "message_start" and events[-1].type == "message_stop"
    delta = next(e for e in events if e.type == "message_delta")
    bill = (delta.model_extra or {})["billing"]
    assert nano(bill["request_cost"]) == CLAUDE_STREAM_COST and bill["currency"] == "USD"
    assert events[0].message.id.startswith("gen-")  # type: ignore[union-attr]


# -- translated to other kinds -------------------------------------------------------------------------


async def test_messages_create_translated_to_openai(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(api_gateway)
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=50, messages=MESSAGES,
                                           system="Be brief.", stop_sequences=["END"])
    recorded = json.loads((OPENAI_WIRE / "docs-chat-default.response.json").read_text())
    assert message.content[0].text == recorded["choices"][0]["message"]["content"]  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.model == "oai/gpt-4o"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (19, 10)
    sent = api_gateway.fake.last.body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, *MESSAGES]
    assert sent["max_tokens"] == 50 and sent["stop"] == ["END"] and sent["model"] == "gpt-4o"
    await assert_charged(api_gateway, before, GPT4O_COST, message.id, "messages")


async def test_cache_marks_reach_only_openai_kind_upstreams_that_take_them(aiohttp_server: Any,
                                                                            all_upstreams: Upstreams) -> None:
    """Claude Code marks its system prompt and last turn with `cache_control`; translated for a strict
    OpenAI-compatible upstream they are left behind, for one configured to take them (OpenRouter) kept."""
    doc = config_doc(all_upstreams.urls)
    doc["providers"]["router"] = {"kind": "openai", "base_url": all_upstreams.urls["openai"], "api_key": OPENAI_KEY,
                                  "cache_control": True}
    doc["models"]["router/gpt-4o"] = {"upstream": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10}}
    gw = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    mark = {"type": "ephemeral"}
    try:
        for model in ("oai/gpt-4o", "router/gpt-4o"):
            message = await client.messages.create(
                model=model, max_tokens=50, system=[{"type": "text", "text": "Be brief.", "cache_control": mark}],
                messages=[{"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": mark}]}])
            assert message.model == model and message.content
        plain, marked = [request.body["messages"] for request in all_upstreams.openai.requests[-2:]]
        assert plain == [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                         {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
        assert marked == [{"role": "system", "content": [{"type": "text", "text": "Be brief.", "cache_control": mark}]},
                          {"role": "user", "content": [{"type": "text", "text": "Hello", "cache_control": mark}]}]
    finally:
        await client.close()
        await gw.close()


async def test_messages_stream_translated_to_openai(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(api_gateway)
    async with claude.messages.stream(model="oai/gpt-4o", max_tokens=50, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == _openai_stream_text() and final.content[0].text == text  # type: ignore[union-attr]
    prompt, completion = _openai_stream_usage()
    assert (final.usage.input_tokens, final.usage.output_tokens) == (prompt, completion)
    assert final.stop_reason == "end_turn"
    await assert_charged(api_gateway, before, prompt * 2_500 + completion * 10_000, final.id, "messages")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_openai_kind_reasoning_becomes_a_thinking_block(api_gateway: Gateway, claude: anthropic.AsyncAnthropic,
                                                              field: str) -> None:
    """Claude Code on a reasoning model behind an OpenAI-compatible server: the reasoning comes back as a
    `thinking` block (streamed: thinking deltas) before the text, whether the server names it
    `reasoning_content` (DeepSeek) or `reasoning` (OpenRouter, Ollama's /v1, vLLM)."""
    api_gateway.fake.reasoning_field = field
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=50, messages=MESSAGES)
    recorded = json.loads((OPENAI_WIRE / "docs-chat-default.response.json").read_text())
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == REASONING  # type: ignore[union-attr]
    assert message.content[1].text == recorded["choices"][0]["message"]["content"]  # type: ignore[union-attr]
    thinking = ""
    async with claude.messages.stream(model="oai/gpt-4o", max_tokens=50, messages=MESSAGES) as stream:
        async for event in stream:
            if event.type == "thinking":
                thinking += event.thinking
        final = await stream.get_final_message()
    assert thinking == REASONING and [block.type for block in final.content] == ["thinking", "text"]
    assert final.content[1].text == _openai_stream_text()  # type: ignore[union-attr]


async def test_messages_stream_translated_to_gemini(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(model="google/flash", max_tokens=50, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    chunks = recorded_chunks("googleai/streaming-success-basic-reply-short.txt")
    expected = "".join(p.get("text", "") for c in chunks for cand in c.get("candidates", [])
                       for p in (cand.get("content") or {}).get("parts", []))
    assert text == expected and final.usage.output_tokens > 0
    sent = api_gateway.extra["upstreams"].gemini.last
    assert sent.method == "streamGenerateContent" and sent.body["contents"][0]["parts"] == [{"text": "Hello"}]


@pytest.mark.parametrize("recording", ["vertexai/streaming-failure-unknown-finish-enum.txt",
                                       "vertexai/streaming-failure-error-mid-stream.txt"], ids=["whole", "error"])
async def test_messages_stream_from_gemini_with_a_finish_reason_on_every_chunk(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic, recording: str) -> None:
    """Vertex AI streams recorded with STOP on every chunk and no usage: the first chunk's STOP ended the message,
    one chunk of text long. Every chunk's text arrives, then `end_turn` with the bill (the estimate of the text),
    or the error body that follows the chunks, billed as a cut stream."""
    api_gateway.extra["upstreams"].gemini.stream_recording = recording
    before, _, _ = await key_state(api_gateway)
    body: dict[str, Any] = {"model": "google/flash", "max_tokens": 8000, "messages": MESSAGES}
    texts: list[str] = []
    final, error = None, None
    async with claude.messages.stream(**body) as stream:
        try:
            async for piece in stream.text_stream:
                texts.append(piece)
            final = await stream.get_final_message()
        except anthropic.APIStatusError as exc:
            error = exc
    text = "".join(texts)
    assert text == "".join(p.get("text", "") for c in recorded_chunks(recording) for cand in c["candidates"]
                           for p in cand["content"]["parts"])
    route = api_gateway.app[RUNTIME].snapshot.catalog.routes["google/flash"]
    cost = billing.token_cost(route.price, Usage(prompt_tokens=billing.estimate_prompt_tokens(body),
                                                 completion_tokens=billing.estimate_tokens(len(text.encode()))))
    if recording.endswith("unknown-finish-enum.txt"):
        assert error is None and final is not None and final.stop_reason == "end_turn"
        assert final.usage.output_tokens == billing.estimate_tokens(len(text.encode()))
        gen_id = final.id
    else:
        assert final is None and error is not None and "The operation was cancelled" in str(error.message)
        gen_id = stream.current_message_snapshot.id
    await assert_charged(api_gateway, before, cost, gen_id, "messages")


SIGNED = "googleai/{}-success-thinking-function-call-thought-summary-signature.{}"
NOW_TOOL: list[Any] = [{"name": "now", "description": "The current date and time",
                        "input_schema": {"type": "object", "properties": {}}}]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_gemini_thought_signature_survives_the_sdk_tool_loop(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic, stream: bool) -> None:
    """The Anthropic SDK user's loop (Claude Code's): append the answer's content as the assistant turn, the
    tool results as the next user turn, ask again. Gemini 3 gets its functionCall part back as recorded,
    signature and all; an OpenAI model asked next never sees it."""
    fake = api_gateway.extra["upstreams"].gemini
    fake.unary_recording, fake.stream_recording = SIGNED.format("unary", "json"), SIGNED.format("streaming", "txt")
    messages: list[Any] = [{"role": "user", "content": "How many days until New Year's Eve?"}]
    if stream:
        async with claude.messages.stream(model="google/flash", max_tokens=1000, messages=messages,
                                          tools=NOW_TOOL) as events:
            message = await events.get_final_message()
        parts = [p for c in recorded_chunks(fake.stream_recording) for p in c["candidates"][0]["content"]["parts"]]
    else:
        message = await claude.messages.create(model="google/flash", max_tokens=1000, messages=messages, tools=NOW_TOOL)
        parts = fake.unary_answer()["candidates"][0]["content"]["parts"]
    [part] = [p for p in parts if "functionCall" in p]
    thinking, tool_use = message.content
    assert thinking.type == "thinking" and thinking.signature == "gemini:" + part["thoughtSignature"]
    assert thinking.thinking == "".join(p["text"] for p in parts if p.get("thought"))
    assert tool_use.type == "tool_use" and tool_use.name == "now" and message.stop_reason == "tool_use"
    messages += [{"role": "assistant", "content": message.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                               "content": "2025-07-28"}]}]
    await claude.messages.create(model="google/flash", max_tokens=1000, messages=messages, tools=NOW_TOOL)
    assert fake.last.body["contents"][1] == {"role": "model", "parts": [part]}  # signature and all, as recorded
    await claude.messages.create(model="oai/gpt-4o", max_tokens=1000, messages=messages, tools=NOW_TOOL)
    assert api_gateway.fake.last.body["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": tool_use.id, "type": "function", "function": {"name": "now", "arguments": "{}"}}]}


# -- errors, keys, limits ------------------------------------------------------------------------------


async def test_errors_come_in_anthropics_shape(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="nope/nope", max_tokens=10, messages=MESSAGES)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    async with aiohttp.ClientSession() as http:
        async with http.post(api_gateway.url + "/v1/messages", json={"model": "claude/sonnet", "messages": MESSAGES},
                             headers={"x-api-key": api_gateway.key, "anthropic-version": "2023-06-01"}) as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["type"] == "invalid_request_error"
            assert "max_tokens" in body["error"]["message"] and body["request_id"] == r.headers["X-Request-Id"]
        async with http.post(api_gateway.url + "/v1/messages", json={}, headers={"x-api-key": "gw-wrong"}) as r:
            body = await r.json()
            assert r.status == 401 and body == {"type": "error", "request_id": r.headers["X-Request-Id"],
                                                "error": {"type": "authentication_error", "code": "invalid_api_key",
                                                          "message": body["error"]["message"]}}
    bad = anthropic.AsyncAnthropic(base_url=api_gateway.url, api_key="gw-not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await bad.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    await bad.close()


BAD_TURNS = {
    "system_role": ([{"role": "system", "content": "Be brief."}, *MESSAGES], "messages.0.role"),
    "tool_role": ([*MESSAGES, {"role": "assistant", "content": "Hi"}, {"role": "tool", "content": "x"}],
                  "messages.2.role"),
    "assistant_first": ([{"role": "assistant", "content": "Hi!"}, *MESSAGES], 'first message must use the "user" role'),
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize(("messages", "said"), BAD_TURNS.values(), ids=list(BAD_TURNS))
async def test_turns_claude_refuses_are_refused_before_the_upstream(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic, messages: list[Any], said: str, stream: bool) -> None:
    """What Claude would answer 400 to costs no round trip, holds nothing and counts no request."""
    fake = api_gateway.extra["upstreams"].anthropic
    seen, before = len(fake.requests), await key_state(api_gateway)
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model="claude/sonnet", max_tokens=10, messages=messages, stream=stream)
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error" and said in body["error"]["message"]
    assert body["error"]["code"] == "invalid_value" and body["request_id"]
    assert len(fake.requests) == seen and await key_state(api_gateway) == before
    ok = await claude.messages.with_raw_response.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    assert ok.headers["x-ratelimit-remaining-requests"] == "59"  # the refused request was never admitted


async def test_an_assistant_first_conversation_still_reaches_other_kinds(api_gateway: Gateway,
                                                                         claude: anthropic.AsyncAnthropic) -> None:
    """Chat takes an opening assistant turn (a greeting a UI shows): only Claude's route refuses it."""
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=10,
                                           messages=[{"role": "assistant", "content": "Hi!"}, *MESSAGES])
    assert message.content and api_gateway.fake.last.body["messages"][0] == {"role": "assistant", "content": "Hi!"}


async def test_gateway_key_in_x_api_key(api_gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            api_gateway.url + "/v1/messages", json={"model": "claude/sonnet", "max_tokens": 10, "messages": MESSAGES},
            headers={"x-api-key": api_gateway.key, "anthropic-version": "2099-01-01"}) as r:
        assert r.status == 200
        body = await r.json()
    assert body["type"] == "message" and body["billing"]["request_cost"] > 0


async def test_upstream_refusal_keeps_anthropics_type(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    fake = api_gateway.extra["upstreams"].anthropic
    fake.status, fake.error_body = 529, fake.overloaded_body()
    with pytest.raises(anthropic.APIStatusError) as info:
        await claude.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    balance, usage, credits = await key_state(api_gateway)
    assert usage == 0 and balance == credits


async def test_mid_stream_error_is_an_anthropic_error_event(api_gateway: Gateway,
                                                            claude: anthropic.AsyncAnthropic) -> None:
    api_gateway.extra["upstreams"].anthropic.error_event_after = 3
    with pytest.raises(anthropic.APIStatusError) as info:
        async with claude.messages.stream(model="claude/sonnet", max_tokens=10, messages=MESSAGES) as stream:
            async for _ in stream.text_stream:
                pass
    assert info.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


async def test_models_the_key_may_not_use_are_403(api_gateway: Gateway) -> None:
    key, _ = await api_gateway.add_key("scoped", models=("oai/*", "claude/son*"))
    client = anthropic.AsyncAnthropic(base_url=api_gateway.url, api_key=key, max_retries=0)
    await client.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        await client.messages.create(model="google/flash", max_tokens=10, messages=MESSAGES)
    await client.close()
    assert "google/flash" in info.value.message
    assert info.value.body["error"]["type"] == "permission_error"  # type: ignore[index]


async def test_messages_count_in_the_rate_limit(make_api_gateway: Any) -> None:
    await clear_of_minute_boundary()
    gw = await make_api_gateway({"claude/sonnet": {"limits": {"rpm": 1}}})
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    raw = await client.messages.with_raw_response.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model="claude/sonnet", max_tokens=10, messages=MESSAGES)
    await client.close()
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(info.value.response.headers["retry-after"]) >= 1


async def test_generation_record_of_a_message(api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(model="oai/gpt-4o", max_tokens=10, messages=MESSAGES)
    record = await generation(api_gateway, message.id)
    assert record["model"] == "oai/gpt-4o" and record["endpoint"] == "messages" and record["streamed"] is False


async def test_count_tokens_is_answered_by_the_gateway_for_any_provider(
        api_gateway: Gateway, claude: anthropic.AsyncAnthropic) -> None:
    before, _, _ = await key_state(api_gateway)
    seen = len(api_gateway.fake.requests)
    short = await claude.messages.count_tokens(model="oai/gpt-4o", messages=MESSAGES)
    long = await claude.messages.count_tokens(model="oai/gpt-4o", system="Be brief. " * 50,
                                              messages=[{"role": "user", "content": "x" * 3000}])
    assert 0 < short.input_tokens < long.input_tokens
    assert long.input_tokens >= 1000  # 3,000 bytes of text: the estimate errs high, never low
    assert len(api_gateway.fake.requests) == seen  # no upstream call
    assert (await key_state(api_gateway))[0] == before  # nothing charged
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude.messages.count_tokens(model="no/such-model", messages=MESSAGES)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_a_pdf_is_held_at_its_pages_not_its_base64(aiohttp_server: Any, all_upstreams: Upstreams) -> None:
    """A 600 kB three-page PDF to Claude from a key holding 30 cents: estimated by its base64 (~270k tokens at
    3 USD/Mtok) the hold was a 402; at three pages' allowance it is served, and count_tokens says the same.
    (The fake upstream, an aiohttp app, takes bodies up to 1 MB; Anthropic's own limit is 32 MB.)"""
    doc = config_doc(all_upstreams.urls)
    doc["server"]["max_body_bytes"] = 4 * 1024 * 1024
    gw = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
    gw.key, gw.key_id = await gw.add_key("thrifty", balance=300_000_000)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    data = base64.b64encode(make_pdf(3, padding=600_000, object_stream=True)).decode()
    messages: Any = [{"role": "user", "content": [
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": data}},
        {"type": "text", "text": "Summarise the report."}]}]
    try:
        counted = await client.messages.count_tokens(model="claude/sonnet", messages=messages)
        assert 3 * PDF_PAGE_TOKENS <= counted.input_tokens < 3 * PDF_PAGE_TOKENS + 100
        assert counted.input_tokens * 15 < len(data) // 3  # what its base64 read as text came to
        message = await client.messages.create(model="claude/sonnet", max_tokens=100, messages=messages)
        assert message.content and (message.model_extra or {})["billing"]["reserved"] < 0.3
        sent = all_upstreams.anthropic.last.body["messages"][0]["content"][0]
        assert sent["source"]["data"] == data  # the document itself went upstream untouched
    finally:
        await client.close()
        await gw.close()


def test_only_claude_candidates_are_held_to_a_first_user_turn() -> None:
    """On /v1/messages a Claude fallback is skipped for an assistant-first conversation and a Claude primary
    refuses it; other endpoints and kinds are not concerned by this check."""
    catalog = Catalog(parse(json.dumps(config_doc({"openai": "http://127.0.0.1:1", "anthropic": "http://127.0.0.1:2",
                                                   "gemini": "http://127.0.0.1:3"})), {}))
    claude_route, oai = catalog.resolve("claude/sonnet"), catalog.resolve("oai/gpt-4o")
    opening = {"messages": [{"role": "assistant", "content": "Hi!"}, *MESSAGES]}
    assert not validation.serves(opening, claude_route, "messages")
    assert validation.serves(opening, oai, "messages") and validation.serves(opening, claude_route, "chat")
    assert validation.serves({"messages": MESSAGES}, claude_route, "messages")
    with pytest.raises(InvalidRequest, match="first message") as info:
        validation.check_route(opening, claude_route, "messages")
    assert (info.value.status, info.value.param) == (400, "messages[0].role")


@pytest.mark.parametrize("model", ["oai/gpt-4o", "google/flash"])
async def test_translated_stream_states_its_input_tokens_on_message_start(
        claude: anthropic.AsyncAnthropic, model: str) -> None:
    """Anthropic's message_start carries the prompt's input_tokens; clients that read them there (not from
    the final message_delta) saw 0 from a translated stream. OpenAI and Gemini report usage only at the end,
    so message_start states the estimate count_tokens gives; the final message_delta has the upstream's count."""
    counted = await claude.messages.count_tokens(model=model, system="Be brief.", messages=MESSAGES)
    stream = await claude.messages.create(model=model, max_tokens=50, system="Be brief.", messages=MESSAGES,
                                          stream=True)
    events = [event async for event in stream]
    start = events[0]
    assert start.type == "message_start"
    assert start.message.usage.input_tokens == counted.input_tokens > 0
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.usage.input_tokens  # the upstream's own count, which the SDK's final message keeps
