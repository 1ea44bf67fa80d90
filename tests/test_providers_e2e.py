"""Claude and Gemini as if they were OpenAI models: the official openai SDK through the running gateway to
fake upstreams that replay each provider's recorded wire format."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from apis_config import ANTHROPIC_KEY, GEMINI_KEY, Upstreams
from fakes.anthropic_upstream import WIRE as ANTHROPIC_WIRE
from fakes.anthropic_upstream import FakeAnthropic
from fakes.gemini_upstream import recorded_chunks
from harness import Gateway, start_gateway, validate
from pdfs import make_pdf
from test_apis_e2e import CLAUDE_COST, assert_charged
from test_billing_e2e import key_state, settled

from gateway import billing
from gateway.billing import PDF_DATA_URI, PDF_PAGE_TOKENS
from gateway.config_load import parse
from gateway.state import RUNTIME
from providers import gemini_request
from providers.types import Usage

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQ"
         "AAAABJRU5ErkJggg==")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture
async def gw(aiohttp_server: Any, all_upstreams: Upstreams) -> AsyncIterator[Gateway]:
    doc = {
        "retries": {"max_retries": 1, "base_delay_s": 0.01, "max_delay_s": 0.02},
        "providers": {
            "claude": {"kind": "anthropic", "base_url": all_upstreams.urls["anthropic"], "api_key": ANTHROPIC_KEY},
            "oai": {"kind": "openai", "base_url": all_upstreams.urls["openai"], "api_key": "sk-openai-test-000000000"},
            "google": {"kind": "gemini", "base_url": all_upstreams.urls["gemini"], "api_key": GEMINI_KEY},
        },
        "models": {
            "claude/sonnet": {"upstream": "claude-sonnet-4-0", "vision": True, "max_output_tokens": 1024,
                              "price": {"input_per_mtok": 3, "output_per_mtok": 15, "cached_input_per_mtok": 0.3},
                              "fallbacks": ["oai/gpt-4o"]},
            "oai/gpt-4o": {"upstream": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10}},
            "google/flash": {"upstream": "gemini-2.0-flash", "vision": True, "max_output_tokens": 8192,
                             "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}},
            "google/pro3": {"upstream": "gemini-3-pro-preview", "price": {"input_per_mtok": 2, "output_per_mtok": 12}},
        },
    }
    gateway = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), all_upstreams.openai)
    yield gateway
    await gateway.close()


def recorded_anthropic_text(name: str) -> str:
    body = json.loads((ANTHROPIC_WIRE / name).read_text())
    return "".join(block["text"] for block in body["content"] if block["type"] == "text")


def recorded_anthropic_stream(name: str) -> tuple[str, dict[str, Any]]:
    """(text, first tool input) spelled out by a recorded Anthropic stream, read naively."""
    text, partial = "", ""
    for block in (ANTHROPIC_WIRE / name).read_text().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                delta = event.get("delta") or {}
                text += delta.get("text", "")
                partial += delta.get("partial_json", "")
    return text, json.loads(partial) if partial else {}


async def test_claude_chat(gw: Gateway, all_upstreams: Upstreams) -> None:
    raw = await gw.openai().chat.completions.with_raw_response.create(model="claude/sonnet",
                                                                       messages=MESSAGES)  # type: ignore[arg-type]
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "claude/sonnet"
    assert body["choices"][0]["message"]["content"] == recorded_anthropic_text("sdk-messages-end-turn.response.json")
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["billing"]["request_cost"] > 0
    sent = all_upstreams.anthropic.last
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["model"] == "claude-sonnet-4-0" and sent.body["max_tokens"] == 1024
    assert sent.body["system"] == [{"type": "text", "text": "Be brief."}]
    assert sent.body["messages"] == [{"role": "user", "content": "Hello"}]


async def test_claude_stream_with_usage_and_bill(gw: Gateway) -> None:
    stream = await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                       stream=True, stream_options={"include_usage": True})
    text, finish, usage, bill = "", None, None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        else:
            usage = chunk.usage
        bill = (chunk.model_extra or {}).get("billing") or bill
    assert text == recorded_anthropic_stream("sdk-stream-basic.sse")[0]
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens > 0
    assert bill is not None and bill["request_cost"] > 0


async def test_claude_streamed_tool_call_reassembled_by_the_sdk(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.anthropic.tool_stream = True
    stream = await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                       tools=TOOLS, stream=True)
    args, name, finish = "", None, None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            if call.function:
                name = call.function.name or name
                args += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert json.loads(args) == recorded_anthropic_stream("sdk-stream-tool-use.sse")[1]
    assert name and finish == "tool_calls"
    assert all_upstreams.anthropic.last.body["tools"][0]["input_schema"]["required"] == ["city"]


async def test_claude_vision(gw: Gateway, all_upstreams: Upstreams) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                             {"type": "image_url", "image_url": {"url": PIXEL}}]}]
    await gw.openai().chat.completions.create(model="claude/sonnet", messages=messages)  # type: ignore[arg-type]
    blocks = all_upstreams.anthropic.last.body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": PIXEL.split(",", 1)[1]}}


async def test_overloaded_claude_falls_back_to_an_openai_model(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.anthropic.status, all_upstreams.anthropic.error_body = 529, FakeAnthropic.overloaded_body()
    raw = await gw.openai().chat.completions.with_raw_response.create(model="claude/sonnet",
                                                                       messages=MESSAGES)  # type: ignore[arg-type]
    body = json.loads(raw.content)
    assert body["model"] == "oai/gpt-4o"
    assert len(all_upstreams.anthropic.requests) == 2  # one try, one retry, then the fallback
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, body["id"])
    assert record is not None and record["model"] == "oai/gpt-4o"
    # billed at the serving model's price (2.5 / 10 per Mtok; the fake OpenAI answers 19 + 10 tokens)
    assert round(body["billing"]["request_cost"] * 1e9) == 147_500


async def test_overloaded_claude_without_fallback_is_503(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.anthropic.status, all_upstreams.anthropic.error_body = 529, FakeAnthropic.overloaded_body()
    all_upstreams.openai.status = 500
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 502  # the last candidate's failure (the OpenAI fallback's 500)
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                  extra_body={"models": []})
    assert len(all_upstreams.anthropic.requests) == 4


def gemini_text(chunks: list[Any]) -> str:
    return "".join(part.get("text", "") for chunk in chunks for cand in chunk.get("candidates", [])
                   for part in (cand.get("content") or {}).get("parts", []) if not part.get("thought"))


async def test_gemini_chat(gw: Gateway, all_upstreams: Upstreams) -> None:
    raw = await gw.openai().chat.completions.with_raw_response.create(model="google/flash",
                                                                       messages=MESSAGES)  # type: ignore[arg-type]
    body = json.loads(raw.content)
    validate(body, "CreateChatCompletionResponse")
    assert body["model"] == "google/flash"
    assert body["choices"][0]["message"]["content"] == gemini_text([all_upstreams.gemini.unary_answer()])
    assert body["usage"]["total_tokens"] > 0 and body["billing"]["request_cost"] > 0
    sent = all_upstreams.gemini.last
    assert sent.path == "/v1beta/models/gemini-2.0-flash:generateContent"
    assert sent.headers.get("x-goog-api-key", sent.headers.get("X-Goog-Api-Key")) == GEMINI_KEY
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent.body["contents"] == [{"role": "user", "parts": [{"text": "Hello"}]}]


async def test_gemini_stream(gw: Gateway, all_upstreams: Upstreams) -> None:
    stream = await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES,  # type: ignore[arg-type]
                                                       stream=True)
    text, finish = "", None
    async for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == gemini_text(recorded_chunks(all_upstreams.gemini.stream_name()))
    assert finish == "stop"
    assert all_upstreams.gemini.last.query.get("alt") == "sse"


async def test_gemini_streamed_tool_call(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.gemini.tool_mode = True
    stream = await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES,  # type: ignore[arg-type]
                                                       tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            if call.function:
                entry["name"] += call.function.name or ""
                entry["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    sent = [part["functionCall"] for chunk in recorded_chunks(all_upstreams.gemini.stream_name())
            for cand in chunk.get("candidates", []) for part in (cand.get("content") or {}).get("parts", [])
            if "functionCall" in part]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [(f["name"], f.get("args", {}))
                                                                                  for f in sent]
    assert finish == "tool_calls"
    declared = all_upstreams.gemini.last.body["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "get_weather"


# Vertex AI streams recorded with finishReason STOP on every chunk and no usageMetadata: the first chunk's STOP
# ended the answer, so the client got that chunk's text as the whole answer, billed for it alone
EVERY_CHUNK_STOP = "vertexai/streaming-failure-unknown-finish-enum.txt"  # six chunks, FAKE_ENUM on the last
ERROR_AFTER_TWO = "vertexai/streaming-failure-error-mid-stream.txt"  # two chunks, then a bare error body


async def estimated_bill(gateway: Gateway, body: dict[str, Any], text: str) -> tuple[Usage, int]:
    """The usage and cost billed for a stream without upstream usage: the gateway's estimate of the prompt and of
    the text relayed."""
    usage = Usage(prompt_tokens=billing.estimate_prompt_tokens(body),
                  completion_tokens=billing.estimate_tokens(len(text.encode())))
    return usage, billing.token_cost(gateway.app[RUNTIME].snapshot.catalog.routes[body["model"]].price, usage)


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
async def test_a_stream_with_a_finish_reason_on_every_chunk_reaches_the_client_whole(api_gateway: Gateway,
                                                                                     include_usage: bool) -> None:
    """Every chunk's text, one finish chunk with the last reason (an unknown enum: stop), billed the estimate of all
    the text (no usage was reported), the usage chunk saying so."""
    api_gateway.extra["upstreams"].gemini.stream_recording = EVERY_CHUNK_STOP
    before, _, _ = await key_state(api_gateway)
    body: dict[str, Any] = {"model": "google/flash", "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    chunks = [chunk async for chunk in await api_gateway.openai().chat.completions.create(**body)]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == gemini_text(recorded_chunks(EVERY_CHUNK_STOP)) and len(text) > 2000
    finishes = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert [chunk.choices[0].finish_reason for chunk in finishes] == ["stop"]
    usage, cost = await estimated_bill(api_gateway, body, text)
    assert round((finishes[0].model_extra or {})["billing"]["request_cost"] * 1e9) == cost
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (usage.prompt_tokens,
                                                                                        usage.completion_tokens)
    else:
        assert chunks[-1] is finishes[0]
    await assert_charged(api_gateway, before, cost, chunks[0].id, "chat")
    record = await api_gateway.app[RUNTIME].store.get_generation(api_gateway.key_id, chunks[0].id)
    assert record is not None
    assert (record["finish_reason"], record["estimated"], record["status"]) == ("stop", "1", "200")


async def test_a_stream_ending_in_an_error_body_after_finished_chunks_ends_in_that_error(api_gateway: Gateway) -> None:
    """Both chunks (each with STOP) reach the client, then the error body that follows them is the stream's error
    event (it was never read: the first STOP ended the stream as a success), billed as a cut stream: the estimate
    of the text relayed, no finish."""
    api_gateway.extra["upstreams"].gemini.stream_recording = ERROR_AFTER_TWO
    before, _, _ = await key_state(api_gateway)
    body: dict[str, Any] = {"model": "google/flash", "messages": MESSAGES, "stream": True}
    stream = await api_gateway.openai().chat.completions.create(**body)
    text, ids, finishes = "", set(), []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            ids.add(chunk.id)
            text += chunk.choices[0].delta.content or ""
            finishes += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
    assert text == gemini_text(recorded_chunks(ERROR_AFTER_TWO)) == "First Second "
    assert finishes == []
    assert "The operation was cancelled" in str(info.value.message) and info.value.code == "upstream_error"
    [gen_id] = ids
    await assert_charged(api_gateway, before, (await estimated_bill(api_gateway, body, text))[1], gen_id, "chat")
    record = await api_gateway.app[RUNTIME].store.get_generation(api_gateway.key_id, gen_id)
    assert record is not None
    assert (record["finish_reason"], record["estimated"], record["status"]) == ("", "1", "502")


async def test_gemini_vision_inline_and_no_fetch_of_private_urls(gw: Gateway, all_upstreams: Upstreams) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                             {"type": "image_url", "image_url": {"url": PIXEL}}]}]
    await gw.openai().chat.completions.create(model="google/flash", messages=messages)  # type: ignore[arg-type]
    parts = all_upstreams.gemini.last.body["contents"][0]["parts"]
    assert parts[1] == {"inlineData": {"mimeType": "image/png", "data": PIXEL.split(",", 1)[1]}}
    for url in (all_upstreams.urls["gemini"] + "/cat.png", "https://127.0.0.1/cat.png", "https://10.0.0.8/x.png",
                "https://localhost/x.png"):
        bad = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
        with pytest.raises(openai.BadRequestError) as info:
            await gw.openai().chat.completions.create(model="google/flash", messages=bad)  # type: ignore[arg-type]
        assert info.value.code == "invalid_image_url"
    assert len(all_upstreams.gemini.requests) == 1


async def balance(gw: Gateway) -> int:
    await gw.app[RUNTIME].settlements.drain(5)
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None
    return record.balance


def tool_turn(*image_urls: str) -> list[Any]:
    """A conversation whose last message is a tool result holding a text and images (as computer-use and
    screenshot tools return them)."""
    call = {"id": "call_shot", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    images = [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return [{"role": "user", "content": "Weather in Oslo? Show me."},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_shot", "content": [{"type": "text", "text": "rainy"}, *images]}]


async def test_gemini_tool_result_images_follow_the_function_response(gw: Gateway, all_upstreams: Upstreams) -> None:
    answer = await gw.openai().chat.completions.create(model="google/flash", messages=tool_turn(PIXEL),  # type: ignore[arg-type]
                                                       tools=TOOLS)
    assert answer.choices[0].message.content
    last = all_upstreams.gemini.last.body["contents"][-1]
    assert last == {"role": "user", "parts": [
        {"functionResponse": {"name": "get_weather",
                              "response": {"content": "rainy\n[1 image(s) follow the tool results]"}}},
        {"text": "[Image(s) of the result of tool call call_shot]"},
        {"inlineData": {"mimeType": "image/png", "data": PIXEL.split(",", 1)[1]}}]}


async def test_gemini_tool_result_image_urls_are_fetched_under_the_ssrf_guard(gw: Gateway,
                                                                              all_upstreams: Upstreams) -> None:
    before = await balance(gw)
    for url in (all_upstreams.urls["gemini"] + "/cat.png", "https://169.254.169.254/latest/meta-data/"):
        with pytest.raises(openai.BadRequestError) as info:
            await gw.openai().chat.completions.create(model="google/flash", messages=tool_turn(url),  # type: ignore[arg-type]
                                                      tools=TOOLS)
        assert info.value.code == "invalid_image_url"
    assert all_upstreams.gemini.requests == []
    assert await balance(gw) == before


SIGNED = "googleai/{}-success-thinking-function-call-thought-summary-signature.{}"


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
async def test_gemini_thought_signature_round_trip(gw: Gateway, all_upstreams: Upstreams, stream: bool) -> None:
    """The SDK user's ordinary loop (append the answer, append the tool result, ask again) gives Gemini 3 its
    signature back on the functionCall part, and an OpenAI model asked next never sees it."""
    fake = all_upstreams.gemini
    fake.unary_recording, fake.stream_recording = SIGNED.format("unary", "json"), SIGNED.format("streaming", "txt")
    client = gw.openai()
    messages: list[Any] = [{"role": "user", "content": "How many days until New Year's Eve?"}]
    if stream:
        async with client.chat.completions.stream(model="google/flash", messages=messages, tools=TOOLS) as events:
            async for _ in events:
                pass
            message = (await events.get_final_completion()).choices[0].message
        [part] = [p for chunk in recorded_chunks(fake.stream_recording) for c in chunk["candidates"]
                  for p in c["content"]["parts"] if "functionCall" in p]
    else:
        answer = await client.chat.completions.create(model="google/flash", messages=messages,  # type: ignore[arg-type]
                                                      tools=TOOLS)
        message = answer.choices[0].message
        [part] = [p for p in fake.unary_answer()["candidates"][0]["content"]["parts"] if "functionCall" in p]
    [call] = message.tool_calls or []
    messages += [message, {"role": "tool", "tool_call_id": call.id, "content": "2025-07-28"}]
    await client.chat.completions.create(model="google/flash", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert fake.last.body["contents"][1] == {"role": "model", "parts": [part]}  # signature and all, as recorded
    await client.chat.completions.create(model="oai/gpt-4o", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    sent_call = all_upstreams.openai.last.body["messages"][1]["tool_calls"][0]
    assert "extra_content" not in sent_call and sent_call["id"] == call.id



async def test_a_tool_loop_begun_on_another_model_goes_on_with_gemini_3(gw: Gateway,
                                                                        all_upstreams: Upstreams) -> None:
    """Gemini 3 refuses a current-turn function call without its thought signature (the fake checks it as
    Google documents): a tool call an OpenAI model made carries none, so moving the conversation to Gemini 3
    was a 400. The gateway gives such a call Google's documented stand-in."""
    messages: list[Any] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    answer = await gw.openai().chat.completions.create(model="google/pro3", messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content
    [call] = all_upstreams.gemini.last.body["contents"][1]["parts"]
    assert call["thoughtSignature"] == gemini_request.SKIP_SIGNATURE

async def hang_up_after(gateway: Gateway, model: str, chunks: int) -> tuple[dict[str, str], int]:
    """Stream a chat, read `chunks` chunks, hang up: the generation record once settled, and the text bytes read."""
    received = 0
    async with aiohttp.ClientSession() as http:
        body = {"model": model, "messages": [{"role": "user", "content": "A long story."}], "stream": True}
        r = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth())
        first = json.loads((await r.content.readuntil(b"\n\n"))[6:])
        for _ in range(chunks):
            chunk = json.loads((await r.content.readuntil(b"\n\n"))[6:])
            received += len((chunk["choices"][0]["delta"].get("content") or "").encode())
        r.close()
    store = gateway.app[RUNTIME].store
    for _ in range(100):  # the gateway notices at its next write
        await asyncio.sleep(0.05)
        if (record := await store.get_generation(gateway.key_id, first["id"])) is not None:
            return record, received
    raise AssertionError("no generation record")


async def test_a_cut_gemini_stream_is_billed_for_the_text_it_relayed(api_gateway: Gateway) -> None:
    """Gemini puts a running `usageMetadata` on every chunk, with `candidatesTokenCount` only on the last
    (wire: googleai/streaming-success-basic-reply-long.txt): a client that leaves mid-stream pays for the text
    it received, estimated, not for its prompt alone."""
    gemini = api_gateway.extra["upstreams"].gemini
    gemini.stream_recording = "googleai/streaming-success-basic-reply-long.txt"
    gemini.delay_between_chunks_s = 0.05
    record, received = await hang_up_after(api_gateway, "google/flash", 10)
    assert record["cancelled"] == "1" and record["estimated"] == "1", record
    assert received > 200 and int(record["tokens_completion"]) >= billing.estimate_tokens(received)
    assert int(record["tokens_prompt"]) == 10  # the upstream's own count stays


async def test_a_cut_claude_stream_is_billed_its_exact_input(api_gateway: Gateway) -> None:
    """`message_start` carries the exact input tokens (wire: sdk-stream-basic.sse, 11): a stream cut before
    `message_stop` is billed those, not the gateway's prompt estimate, and its output estimated."""
    claude = api_gateway.extra["upstreams"].anthropic
    claude.delay_between_events_s = 0.1
    record, received = await hang_up_after(api_gateway, "claude/sonnet", 2)
    assert record["cancelled"] == "1" and record["estimated"] == "1", record
    assert int(record["tokens_prompt"]) == 11
    assert received and int(record["tokens_completion"]) >= billing.estimate_tokens(received)


def gemini_quota_body(retry_delay: str) -> dict[str, Any]:
    """Gemini's 429 as the Developer API sends it: no Retry-After header, the wait only in the body's
    `google.rpc.RetryInfo` (a protobuf Duration, e.g. "38s" or "45.837906927s")."""
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                      "message": "You exceeded your current quota, please check your plan and billing details.",
                      "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                          {"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                           "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                                  {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]}}


async def test_gemini_quota_retry_delay_is_the_retry_after(gw: Gateway, all_upstreams: Upstreams) -> None:
    """A 429 whose RetryInfo asks for 38 s (above `honor_retry_after_up_to_s`): no futile retry into the spent
    window, and the client is told when to come back, as with any upstream's Retry-After."""
    fake = all_upstreams.gemini
    fake.status, fake.error_body = 429, gemini_quota_body("37.2s")
    with pytest.raises(openai.RateLimitError) as info:
        await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.response.headers.get("Retry-After") == "38"
    assert len(fake.requests) == 1  # the retry would have met the same spent quota


# -- PDF files to Claude, allowed_tools to Claude and Gemini -----------------------------------------


def pdf_part(data: bytes, filename: str = "report.pdf") -> dict[str, Any]:
    """A chat `file` part as the openai SDK sends an inline PDF."""
    return {"type": "file", "file": {"filename": filename, "file_data": PDF_DATA_URI + base64.b64encode(data).decode()}}


async def test_claude_reads_a_pdf_file_part_as_a_document_held_by_its_pages(gw: Gateway,
                                                                            all_upstreams: Upstreams) -> None:
    """A 3-page PDF of 400 kB (133k tokens read as base64 text, 6 pages by its size) goes to Claude as a document
    block; the hold is 3 pages' allowance (a key short of it is refused, one with a page to spare served) and
    the bill is Claude's usage."""
    data = make_pdf(3, padding=300_000)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Summarise"}, pdf_part(data)]}]
    output = 10 * 15_000  # max_tokens=10 at 15 USD/Mtok
    short, _ = await gw.add_key("short", balance=3 * PDF_PAGE_TOKENS * 3_000 + output)  # the pages, not the text
    with pytest.raises(openai.APIStatusError) as info:
        await gw.openai(api_key=short).chat.completions.create(model="claude/sonnet", messages=messages,  # type: ignore[arg-type]
                                                               max_tokens=10)
    assert info.value.status_code == 402 and all_upstreams.anthropic.requests == []
    enough, enough_id = await gw.add_key("enough", balance=4 * PDF_PAGE_TOKENS * 3_000 + output)
    raw = await gw.openai(api_key=enough).chat.completions.with_raw_response.create(
        model="claude/sonnet", messages=messages, max_tokens=10)  # type: ignore[arg-type]
    assert json.loads(raw.content)["model"] == "claude/sonnet"
    assert all_upstreams.anthropic.last.body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "Summarise"},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                        "data": base64.b64encode(data).decode()}, "title": "report.pdf"}]}]
    await settled(gw)
    balance, usage, credits = await key_state(gw, enough_id)
    assert balance == 4 * PDF_PAGE_TOKENS * 3_000 + output - CLAUDE_COST and balance + usage == credits


async def test_a_tool_result_pdf_goes_to_claude_inside_its_tool_result(gw: Gateway, all_upstreams: Upstreams) -> None:
    data = make_pdf(1)
    messages = [*tool_turn()[:2], {"role": "tool", "tool_call_id": "call_shot",
                                   "content": [{"type": "text", "text": "the forecast"}, pdf_part(data, "oslo.pdf")]}]
    await gw.openai().chat.completions.create(model="claude/sonnet", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert all_upstreams.anthropic.last.body["messages"][-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_shot", "content": [
            {"type": "text", "text": "the forecast"},
            {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": base64.b64encode(data).decode()}, "title": "oslo.pdf"}]}]}


@pytest.mark.parametrize("file", [
    {"file_id": "file-abc123"},  # a file kept at OpenAI
    {"filename": "notes.txt", "file_data": "data:text/plain;base64," + base64.b64encode(b"hello").decode()},
    {"filename": "raw.pdf", "file_data": base64.b64encode(make_pdf(1)).decode()},  # not a data: URI
], ids=["file_id", "not_pdf", "not_data_uri"])
async def test_files_claude_cannot_read_are_refused_naming_messages(gw: Gateway, all_upstreams: Upstreams,
                                                                    file: dict[str, str]) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Read this"}, {"type": "file", "file": file}]}]
    claude_only, _ = await gw.add_key("claude-only", models=["claude/*"])  # its OpenAI fallback would take files
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai(api_key=claude_only).chat.completions.create(model="claude/sonnet",
                                                                     messages=messages)  # type: ignore[arg-type]
    assert (info.value.code, info.value.param) == ("untranslatable", "messages")
    assert "inline PDF" in info.value.message
    assert all_upstreams.anthropic.requests == []


def allowed(mode: str, *names: str) -> dict[str, Any]:
    return {"type": "allowed_tools", "allowed_tools": {
        "mode": mode, "tools": [{"type": "function", "function": {"name": name}} for name in names]}}


CLOCK = {"type": "function", "function": {"name": "get_time", "description": "Time in a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {}}}}


@pytest.mark.parametrize(("mode", "claude", "gemini"), [("auto", "auto", "AUTO"), ("required", "any", "ANY")])
async def test_allowed_tools_send_only_those_tools_with_the_mode(gw: Gateway, all_upstreams: Upstreams, mode: str,
                                                                 claude: str, gemini: str) -> None:
    tools = [*TOOLS, SEARCH, CLOCK]
    choice = allowed(mode, "get_time", "get_weather")
    await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES, tools=tools,  # type: ignore[arg-type]
                                              tool_choice=choice)  # type: ignore[arg-type]
    sent = all_upstreams.anthropic.last.body
    assert [tool["name"] for tool in sent["tools"]] == ["get_weather", "get_time"]  # in the order of `tools`
    assert sent["tool_choice"] == {"type": claude}
    await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES, tools=tools,  # type: ignore[arg-type]
                                              tool_choice=choice)  # type: ignore[arg-type]
    sent = all_upstreams.gemini.last.body
    assert [decl["name"] for decl in sent["tools"][0]["functionDeclarations"]] == ["get_weather", "get_time"]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": gemini}}


@pytest.mark.parametrize("model", ["claude/sonnet", "google/flash"])
async def test_allowed_tools_naming_an_unknown_tool_is_refused_naming_tool_choice(gw: Gateway, model: str,
                                                                                   all_upstreams: Upstreams) -> None:
    own, _ = await gw.add_key("own-models", models=["claude/*", "google/*"])  # not the OpenAI fallback
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai(api_key=own).chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS,  # type: ignore[arg-type]
                                                             tool_choice=allowed("auto", "get_weather", "launch"))  # type: ignore[arg-type]
    assert (info.value.code, info.value.param) == ("untranslatable", "tool_choice")
    assert "not in 'tools': 'launch'" in info.value.message
    assert all_upstreams.anthropic.requests == [] and all_upstreams.gemini.requests == []
