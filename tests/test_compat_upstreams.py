"""OpenAI-compatible upstreams and their quirks, end to end: xAI's usage and error shapes, OpenRouter's and
DeepSeek's 402 on the operator's account, OpenRouter's 403 for flagged content, and generic servers that end
a stream without a finish reason, without usage, or send a streamed tool call's arguments as an object.

Each case checks what the client gets (OpenAI's schema, the status and code the README names) and, where
money moves, the ledger: the balance moved by exactly the cost the billing block states.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import test_upstream_oddities as oddities
from apis_config import config_doc
from fakes.openai_upstream import FakeOpenAI
from harness import SHARED, Gateway, start_gateway, validate
from test_upstream_oddities import RawUpstream, call, http, ledger, nano, sse

from gateway.config_load import parse
from gateway.state import RUNTIME, Snapshot

raw_upstream, odd = oddities.raw_upstream, oddities.odd  # its raw upstream and the gateway in front of it

MESSAGES = [{"role": "user", "content": "hi"}]
HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "grok-3-mini"}
OPENROUTER = SHARED / "wire" / "openrouter"
# oai/gpt-4o's prices in apis_config: 2.5 and 10 USD per million tokens
INPUT_NANO, OUTPUT_NANO = 2_500, 10_000


def chunks(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]


def answer(usage: dict[str, Any], stream: bool) -> bytes:
    """A one-word answer with `usage`, as a JSON body or a stream whose last chunk carries the usage."""
    if not stream:
        return http(200, json.dumps({
            "id": "x", "object": "chat.completion", "created": 1, "model": "grok-3-mini", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
        }).encode())
    return sse({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                     "finish_reason": None}]},
               {**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
               {**HEAD, "choices": [], "usage": usage}, "data: [DONE]\n\n")


def client_usage_and_bill(raw: bytes, stream: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    if not stream:
        body = json.loads(raw)
        validate(body, "CreateChatCompletionResponse")
        return body["usage"], body["billing"]
    got = chunks(raw)
    for chunk in got:
        validate(chunk, "CreateChatCompletionStreamResponse")
    tail = [c for c in got if c.get("usage")]
    assert len(tail) == 1, raw
    return tail[0]["usage"], tail[0]["billing"]


# -- xAI: reasoning tokens beside completion tokens, its cost in ticks -----------------------------------

# xAI's documented example (docs.x.ai, consumption and rate limits): 32 + 9 + 94 = 135, reasoning counted
# beside completion_tokens, in total_tokens only; and the price it charged the operator, in 1e-10 USD ticks
XAI_USAGE = {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 135,
             "prompt_tokens_details": {"text_tokens": 32, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 94, "audio_tokens": 0,
                                           "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
             "num_sources_used": 0, "cost_in_usd_ticks": 1_234_000}
# the same generation as OpenAI reports it: reasoning inside completion_tokens
OPENAI_USAGE = {"prompt_tokens": 32, "completion_tokens": 103, "total_tokens": 135,
                "completion_tokens_details": {"reasoning_tokens": 94}}


async def chat_reporting(odd: tuple[Gateway, RawUpstream], usage: dict[str, Any],
                         stream: bool) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """A chat request (usage asked for when streamed) answered with `usage`: the raw answer, the usage the
    client got and its bill."""
    gw, up = odd
    up.answer = answer(json.loads(json.dumps(usage)), stream)
    body = {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    status, raw = await call(gw, "/v1/chat/completions", body)
    assert status == 200, raw
    got, bill = client_usage_and_bill(raw, stream)
    return raw, got, bill


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("usage", [XAI_USAGE, OPENAI_USAGE], ids=["xai", "openai"])
async def test_reasoning_tokens_counted_beside_completion_are_billed_as_output(
        odd: tuple[Gateway, RawUpstream], usage: dict[str, Any], stream: bool) -> None:
    """xAI bills its reasoning tokens as output but leaves them out of `completion_tokens`: the gateway billed
    9 output tokens of 103 (a ninth of the output), and told the client the same."""
    gw, _ = odd
    before = await ledger(gw)
    _, got, bill = await chat_reporting(odd, usage, stream)
    assert (got["prompt_tokens"], got["completion_tokens"], got["total_tokens"]) == (32, 103, 135)
    assert got["completion_tokens_details"]["reasoning_tokens"] == 94
    cost = 32 * INPUT_NANO + 103 * OUTPUT_NANO
    assert nano(bill["request_cost"]) == cost and bill["estimated"] is False
    after = await ledger(gw)
    assert before[0] - after[0] == cost and after[2] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_xai_cost_in_ticks_never_reaches_the_client(odd: tuple[Gateway, RawUpstream], stream: bool) -> None:
    """`usage.cost_in_usd_ticks` is what xAI charged the operator: like OpenRouter's `cost_details`, it is the
    operator's business, and `usage.cost` says what the request cost the key."""
    raw, got, bill = await chat_reporting(odd, XAI_USAGE, stream)
    assert b"cost_in_usd_ticks" not in raw and b"1234000" not in raw
    assert got["cost"] == bill["request_cost"]


# xAI answers a key it does not know with a 400 in its own shape (a string `error`, a sentence as `code`)
XAI_BAD_KEY = {"code": "Client specified an invalid argument",
               "error": "Incorrect API key provided: xa***ab. You can obtain an API key from https://console.x.ai."}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"], ids=["chat", "messages"])
async def test_xai_refusing_the_operators_key_with_a_400_is_the_operators_502(odd: tuple[Gateway, RawUpstream],
                                                                              path: str) -> None:
    """Relayed as the client's own 400 "Incorrect API key provided", the client believed its gateway key was
    wrong (and no alert told the operator); a 401 on the operator's key is a 502 upstream_auth_failed."""
    gw, up = odd
    up.answer = http(400, json.dumps(XAI_BAD_KEY).encode())
    body: dict[str, Any] = {"model": "oai/gpt-4o", "messages": MESSAGES, "max_tokens": 16}
    status, raw = await call(gw, path, body)
    payload = json.loads(raw)
    assert status == 502, payload
    assert payload["error"]["code"] == "upstream_auth_failed"
    if path == "/v1/chat/completions":
        validate(payload, "ErrorResponse")
        assert payload["error"]["type"] == "upstream_error"
    else:
        assert payload["type"] == "error" and payload["error"]["type"] == "api_error"


# -- 402: the operator's account at the provider ran dry -------------------------------------------------

OPENROUTER_402 = json.loads((OPENROUTER / "api-chat-completions.errors.json").read_text())["responses"]["402"][
    "example"]
DEEPSEEK_402 = {"error": {"message": "Insufficient Balance", "type": "unknown_error", "param": None,
                          "code": "invalid_request_error"}}


async def post(gw: Gateway, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http_, http_.post(gw.url + path, json=body, headers=gw.auth()) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"], ids=["chat", "messages"])
@pytest.mark.parametrize("refusal", [OPENROUTER_402, DEEPSEEK_402], ids=["openrouter", "deepseek"])
async def test_an_upstream_402_on_the_operators_key_is_not_the_clients_402(gateway: Gateway, refusal: dict[str, Any],
                                                                           path: str, stream: bool) -> None:
    """OpenRouter's "Insufficient credits" and DeepSeek's "Insufficient Balance" went to the client as a 402,
    the status the gateway answers when the client's own balance is short (Anthropic SDK: billing_error).
    The client's balance is fine: the operator's account upstream is empty, a 503 until they top it up."""
    gateway.fake.status, gateway.fake.error_body = 402, refusal
    status, payload = await post(gateway, path, {"model": "fake/gpt-4o", "messages": MESSAGES, "max_tokens": 16,
                                                 "stream": stream})
    assert status == 503, payload
    assert payload["error"]["code"] == "upstream_insufficient_credits"
    assert refusal["error"]["message"] in payload["error"]["message"]
    if path == "/v1/chat/completions":
        validate(payload, "ErrorResponse")
        assert payload["error"]["type"] == "service_unavailable"
    else:
        assert payload["error"]["type"] == "api_error"
    _, spent, held = await ledger(gateway)
    assert spent == 0 and held == 0


async def test_an_upstream_402_on_the_clients_own_key_stays_the_clients_402(gateway: Gateway) -> None:
    gateway.fake.status, gateway.fake.error_body = 402, OPENROUTER_402
    status, payload = await post(gateway, "/v1/chat/completions", {
        "model": "fake/gpt-4o", "messages": MESSAGES, "provider_api_key": "sk-or-mine-00000000000000"})
    assert status == 402, payload
    validate(payload, "ErrorResponse")


@pytest.mark.parametrize("own_key", [False, True], ids=["operators-key", "own-key"])
async def test_an_error_event_saying_the_quota_is_spent_names_whose_account(odd: tuple[Gateway, RawUpstream],
                                                                             own_key: bool) -> None:
    """An error event in a started stream went through the operator's rules even with the client's own key:
    "you exceeded your current quota" about the client's account read as the gateway's upstream credit."""
    gw, up = odd
    up.answer = sse({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                          "finish_reason": None}]},
                    {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                               "code": "insufficient_quota"}})
    body: dict[str, Any] = {"model": "oai/gpt-4o", "messages": MESSAGES, "max_tokens": 16, "stream": True}
    if own_key:
        body["provider_api_key"] = "sk-client-own-openai-key-000000000001"
    status, raw = await call(gw, "/v1/chat/completions", body)
    assert status == 200
    error = chunks(raw)[-1]["error"]
    validate({"error": error}, "ErrorResponse")
    if own_key:
        assert error["code"] != "upstream_insufficient_credits", error
        assert "You exceeded your current quota" in error["message"]
    else:
        assert error["code"] == "upstream_insufficient_credits", error

# -- 403: OpenRouter's moderation and guardrails refuse the content, not the key --------------------------

OPENROUTER_403 = {
    # errors-and-debugging.mdx: a moderation flag carries ModerationErrorMetadata
    "moderation": {"error": {"code": 403, "message": "meta-llama/llama-guard-3-8b requires moderation on Groq. "
                                                     "Your input was flagged for \"violent_crimes\". No credits were "
                                                     "charged.",
                             "metadata": {"reasons": ["violent_crimes"], "flagged_input": "how do I...",
                                          "provider_name": "Groq", "model_slug": "meta-llama/llama-3.3-70b"}}},
    # and a guardrail's block, the documented example
    "guardrail": {"error": {"code": 403, "message": "Request blocked: prompt injection patterns detected",
                            "metadata": {"patterns": ["ignore all previous instructions"]}}},
}


@pytest.mark.parametrize("case", list(OPENROUTER_403))
async def test_openrouter_refusing_flagged_content_is_the_clients_403(gateway: Gateway, case: str) -> None:
    """A 403 was always read as the provider refusing the operator's key: a flagged prompt came back as a 502
    "refused the gateway's configured credentials", which the SDKs retry (sending the prompt twice more)
    and which sends the operator looking at a key that works."""
    gateway.fake.status, gateway.fake.error_body = 403, OPENROUTER_403[case]
    status, payload = await post(gateway, "/v1/chat/completions", {"model": "fake/gpt-4o", "messages": MESSAGES})
    validate(payload, "ErrorResponse")
    assert status == 403, payload
    assert payload["error"]["code"] != "upstream_auth_failed"
    assert payload["error"]["message"] == OPENROUTER_403[case]["error"]["message"]


async def test_a_plain_403_on_the_operators_key_is_still_the_operators_502(gateway: Gateway) -> None:
    gateway.fake.status = 403
    gateway.fake.error_body = {"error": {"code": 403, "message": "Key disabled"}}
    status, payload = await post(gateway, "/v1/chat/completions", {"model": "fake/gpt-4o", "messages": MESSAGES})
    assert status == 502 and payload["error"]["code"] == "upstream_auth_failed", payload


# -- generic servers: a stream without its finish, without usage, with object arguments -----------------

ROLE = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hello"}, "finish_reason": None}]}
NULL_END = {**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": None}]}
CALL = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
    {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
    "finish_reason": None}]}


TEXT = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "llama3.2",
        "choices": [{"text": "Hello", "index": 0, "logprobs": None, "finish_reason": None}]}


@pytest.mark.parametrize(("events", "reason"), [
    pytest.param([ROLE, NULL_END], "stop", id="text"),
    pytest.param([CALL, NULL_END], "tool_calls", id="tool-call"),
])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"], ids=["chat", "completions"])
async def test_a_stream_ending_with_a_null_finish_reason_still_gets_its_finish_chunk_and_bill(
        odd: tuple[Gateway, RawUpstream], events: list[dict[str, Any]], reason: str, path: str) -> None:
    """A server whose last chunk says `finish_reason: null` before [DONE]: the client got no chunk with a
    finish reason (the README promises one, the non-streamed answer infers it) and, not having asked for
    usage, no bill at all, though it was charged."""
    await _null_finish(odd, events, reason, path, "oai/gpt-4o")


async def test_a_native_completion_stream_ending_with_a_null_finish_reason_gets_its_finish_chunk(
        odd: tuple[Gateway, RawUpstream]) -> None:
    await _null_finish(odd, [TEXT], "stop", "/v1/completions", "oai/gpt-3.5-turbo-instruct")


async def _null_finish(odd: tuple[Gateway, RawUpstream], events: list[dict[str, Any]], reason: str, path: str,
                       model: str) -> None:
    gw, up = odd
    up.answer = sse(*events, "data: [DONE]\n\n")
    before = await ledger(gw)
    body: dict[str, Any] = {"model": model, "stream": True}
    body.update({"messages": MESSAGES} if path == "/v1/chat/completions" else {"prompt": "hi"})
    status, raw = await call(gw, path, body)
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n"), raw
    got = chunks(raw)
    finished = [c for c in got if any(ch.get("finish_reason") for ch in c["choices"])]
    assert len(finished) == 1, raw
    last = finished[0]
    if path == "/v1/chat/completions":
        for chunk in got:
            validate(chunk, "CreateChatCompletionStreamResponse")
        assert last["choices"][0]["finish_reason"] == reason
    else:
        validate({k: v for k, v in last.items() if k != "billing"}, "CreateCompletionResponse")
        assert last["choices"][0]["finish_reason"] == "stop"  # the legacy enum has no tool_calls
    assert "billing" in last and last["billing"]["estimated"] is True
    after = await ledger(gw)
    assert before[0] - after[0] == nano(last["billing"]["request_cost"]) > 0 and after[2] == 0


async def test_a_complete_stream_without_usage_or_text_is_billed_its_prompt_as_a_json_answer_is(
        odd: tuple[Gateway, RawUpstream]) -> None:
    """A server that reports no usage and answers empty: the non-streamed answer is billed its prompt (the
    upstream read it), the streamed one was free."""
    gw, up = odd
    empty = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    stop = {**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    up.answer = http(200, json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]}).encode())
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES})
    assert status == 200, raw
    json_bill = json.loads(raw)["billing"]
    assert json_bill["estimated"] is True and nano(json_bill["request_cost"]) > 0
    up.answer = sse(empty, stop, "data: [DONE]\n\n")
    before = await ledger(gw)
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True})
    assert status == 200, raw
    bill = next(c for c in chunks(raw) if "billing" in c)["billing"]
    assert bill["estimated"] is True and bill["request_cost"] == json_bill["request_cost"]
    after = await ledger(gw)
    assert before[0] - after[0] == nano(bill["request_cost"]) and after[2] == 0


async def test_a_streamed_tool_call_with_object_arguments_is_relayed_as_text_and_billed(
        odd: tuple[Gateway, RawUpstream]) -> None:
    """A server that sends a streamed call's `arguments` whole as an object (as the non-streamed path already
    expects of some): relayed as is, the SDK's stream helpers cannot concatenate or parse it, the schema
    refuses it, and the estimate (no usage) never counted it."""
    gw, up = odd
    call_obj = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": {"location": "Paris, France"}}}]}, "finish_reason": None}]}
    done = {**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    up.answer = sse(call_obj, done, "data: [DONE]\n\n")
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True})
    assert status == 200, raw
    got = chunks(raw)
    for chunk in got:
        validate(chunk, "CreateChatCompletionStreamResponse")
    args = got[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(args) == {"location": "Paris, France"}
    bill = next(c for c in got if "billing" in c)["billing"]
    assert bill["estimated"] is True
    # the arguments (29 bytes) count: more than the prompt alone, which is what a 0-byte answer is billed
    up.answer = sse({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]}, done, "data: [DONE]\n\n")
    _, empty = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True})
    empty_bill = next(c for c in chunks(empty) if "billing" in c)["billing"]
    assert nano(bill["request_cost"]) > nano(empty_bill["request_cost"])


# DeepSeek's stream tail (deepseek-ai/DeepSeek-V2#29, its API docs): no usage-only chunk, the usage rides the
# finish chunk; DeepSeek's prompt-cache counts beside OpenAI's
DEEPSEEK_HEAD = {"id": "2c0e9145-0ef9-4037-a5b0-590c6df994b0", "created": 1715667871, "model": "deepseek-chat",
                 "system_fingerprint": None, "object": "chat.completion.chunk"}
DEEPSEEK_USAGE = {"prompt_tokens": 8, "completion_tokens": 27, "total_tokens": 35, "prompt_cache_hit_tokens": 0,
                  "prompt_cache_miss_tokens": 8}


@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage-asked", "usage-asked"])
async def test_usage_on_the_finish_chunk_reaches_the_client_once_and_only_when_asked(
        odd: tuple[Gateway, RawUpstream], wants_usage: bool) -> None:
    """The finish chunk kept DeepSeek's usage, and the usage chunk the gateway adds came too: a client that
    asked for usage got it twice (LangChain and the like add up the usage of every chunk: double the tokens),
    and one that did not ask got it anyway (the README: a client that did not ask for usage gets none)."""
    gw, up = odd
    up.answer = sse(
        {**DEEPSEEK_HEAD, "choices": [{"index": 0, "delta": {"content": "Hello", "role": "assistant"},
                                       "finish_reason": None, "logprobs": None}]},
        {**DEEPSEEK_HEAD, "choices": [{"index": 0, "delta": {"content": "", "role": None}, "finish_reason": "stop",
                                       "logprobs": None}], "usage": DEEPSEEK_USAGE},
        "data: [DONE]\n\n")
    body: dict[str, Any] = {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True}
    if wants_usage:
        body["stream_options"] = {"include_usage": True}
    status, raw = await call(gw, "/v1/chat/completions", body)
    assert status == 200, raw
    got = chunks(raw)
    with_usage = [c for c in got if c.get("usage")]
    assert len(with_usage) == (1 if wants_usage else 0), raw
    if wants_usage:
        assert with_usage[0]["choices"] == [] and with_usage[0]["usage"]["completion_tokens"] == 27
    bill = next(c for c in got if "billing" in c)["billing"]
    assert bill["estimated"] is False and nano(bill["request_cost"]) == 8 * INPUT_NANO + 27 * OUTPUT_NANO


async def test_deepseeks_null_role_in_a_delta_is_left_out(odd: tuple[Gateway, RawUpstream]) -> None:
    """DeepSeek's finish chunk says `"role": null`, which OpenAI's schema refuses (typed clients, .NET's
    Semantic Kernel, fail on it): a delta without a role says the same and validates."""
    gw, up = odd
    up.answer = sse(
        {**DEEPSEEK_HEAD, "choices": [{"index": 0, "delta": {"content": "Hello", "role": "assistant"},
                                       "finish_reason": None, "logprobs": None}]},
        {**DEEPSEEK_HEAD, "choices": [{"index": 0, "delta": {"content": " there", "role": None},
                                       "finish_reason": None, "logprobs": None}]},
        {**DEEPSEEK_HEAD, "choices": [{"index": 0, "delta": {"content": "", "role": None}, "finish_reason": "stop",
                                       "logprobs": None}], "usage": DEEPSEEK_USAGE},
        "data: [DONE]\n\n")
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True})
    assert status == 200, raw
    got = chunks(raw)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in got if c["choices"]) == "Hello there"
    for chunk in got:
        validate(chunk, "CreateChatCompletionStreamResponse")


# llama.cpp's llama-server (builds whose stream handler calls `server_sent_event(sink, "error", ...)`) writes a
# failure inside a 200 stream as an `error:` SSE field, not a `data:` line, then `data: [DONE]` as always
LLAMA_CPP_ERROR = ('error: {"code":400,"message":"the request exceeds the available context size, try increasing it",'
                   '"type":"exceed_context_size_error"}\n\n')
LLAMA_HEAD = {"id": "chatcmpl-Zx1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-3.5-turbo",
              "system_fingerprint": "b5350-9a390c48"}


@pytest.mark.parametrize("text", ["", "Hello"], ids=["before-any-text", "mid-answer"])
async def test_a_llama_cpp_error_field_ends_the_stream_in_that_error(odd: tuple[Gateway, RawUpstream],
                                                                      text: str) -> None:
    """An SSE field the spec does not know is ignored, so llama.cpp's `error:` line vanished and its [DONE] ended
    the stream as if answered: the client got an empty 200 stream without an error, and was billed its prompt.
    It is the stream's error event, with llama.cpp's words; billed as a cut stream (the text relayed, if any)."""
    gw, up = odd
    events: list[Any] = [LLAMA_CPP_ERROR, "data: [DONE]\n\n"]
    if text:
        events.insert(0, {**LLAMA_HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                                     "finish_reason": None}]})
    up.answer = sse(*events)
    before = await ledger(gw)
    stream = await gw.openai().chat.completions.create(model="oai/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                       stream=True)
    got = ""
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
            got += chunk.choices[0].delta.content or ""
    assert got == text
    assert "exceeds the available context size" in str(info.value.message), info.value.message
    balance, usage, held = await ledger(gw)
    assert held == 0 and before[0] - balance == usage - before[1]
    assert (usage - before[1] > 0) is bool(text)  # nothing generated, nothing charged; text relayed is billed


# vLLM with `stream_options: {"include_usage": true, "continuous_usage_stats": true}` (its documented extension):
# every chunk carries the running usage, the finish chunk too, then the `choices: []` usage chunk as OpenAI's
VLLM_HEAD = {"id": "chatcmpl-9b1f", "object": "chat.completion.chunk", "created": 1, "model": "Qwen/Qwen3-8B"}


def vllm_usage(completion: int) -> dict[str, int]:
    return {"prompt_tokens": 9, "total_tokens": 9 + completion, "completion_tokens": completion}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"], ids=["chat", "completions"])
async def test_usage_on_every_chunk_reaches_the_client_once(odd: tuple[Gateway, RawUpstream], path: str) -> None:
    """A usage-only chunk was held for every chunk that carried usage: a client asking vLLM for continuous usage
    stats got five usage chunks after the finish chunk (0, 1, 2, 3, 3 tokens), and one that adds up every chunk's
    usage counted 9 output tokens for 3. It gets one, the last count, which is the one billed."""
    gw, up = odd
    pieces = [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}, {"content": "!"}]
    events: list[Any] = [{**VLLM_HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                    "finish_reason": None}], "usage": vllm_usage(i)}
                         for i, delta in enumerate(pieces)]
    events += [{**VLLM_HEAD, "choices": [{"index": 0, "delta": {"content": ""}, "logprobs": None,
                                          "finish_reason": "stop", "stop_reason": None}], "usage": vllm_usage(3)},
               {**VLLM_HEAD, "choices": [], "usage": vllm_usage(3)}, "data: [DONE]\n\n"]
    up.answer = sse(*events)
    before = await ledger(gw)
    body: dict[str, Any] = {"model": "oai/gpt-4o", "stream": True,
                            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    body.update({"messages": MESSAGES} if path == "/v1/chat/completions" else {"prompt": "hi"})
    status, raw = await call(gw, path, body)
    assert status == 200, raw
    got = chunks(raw)
    with_usage = [c for c in got if c.get("usage")]
    assert len(with_usage) == 1 and with_usage[0] is got[-1], raw
    assert with_usage[0]["choices"] == [] and with_usage[0]["usage"]["completion_tokens"] == 3
    assert [c["choices"][0]["finish_reason"] for c in got if c["choices"] and c["choices"][0]["finish_reason"]] == [
        "stop"]
    if path == "/v1/chat/completions":
        for chunk in got:
            validate(chunk, "CreateChatCompletionStreamResponse")
    bill = with_usage[0]["billing"]
    assert bill["estimated"] is False and nano(bill["request_cost"]) == 9 * INPUT_NANO + 3 * OUTPUT_NANO
    assert up.requests[0]["body"]["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    after = await ledger(gw)
    assert before[0] - after[0] == nano(bill["request_cost"]) and after[2] == 0


def call_delta(index: int, function: dict[str, Any], role: bool = False) -> dict[str, Any]:
    """A streamed tool-call delta without an `id` (nor `type`), as some servers stream every delta of a call
    (vllm-project/vllm#18412, NVIDIA's and StepFun's endpoints)."""
    delta: dict[str, Any] = {"tool_calls": [{"index": index, "function": function}]}
    if role:
        delta["role"] = "assistant"
    return {**VLLM_HEAD, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}


async def test_a_streamed_tool_call_without_an_id_gets_one(odd: tuple[Gateway, RawUpstream]) -> None:
    """A non-streamed call without an id got one made up; a streamed one was relayed without: the SDK's final
    message had `id=None` and the client had no `tool_call_id` to answer each call with. Each call gets its own,
    on the delta that opens it, and keeps it (the SDKs join the ids of a call's deltas)."""
    gw, up = odd
    up.answer = sse(call_delta(0, {"name": "get_weather", "arguments": ""}, role=True),
                    call_delta(0, {"arguments": '{"city": "Paris"}'}),
                    call_delta(1, {"name": "get_time", "arguments": ""}),
                    call_delta(1, {"arguments": '{"tz": "CET"}'}),
                    {**VLLM_HEAD, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                               "finish_reason": "tool_calls"}]}, "data: [DONE]\n\n")
    async with gw.openai().chat.completions.stream(model="oai/gpt-4o", messages=MESSAGES) as stream:  # type: ignore[arg-type]
        async for event in stream:
            if event.type == "chunk":
                validate(event.chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
    ids = [c.id for c in calls]
    assert all(isinstance(i, str) and i.startswith("call_") for i in ids) and len(set(ids)) == 2, ids
    assert final.choices[0].finish_reason == "tool_calls"


# -- Mistral: refuses stream_options, ends its streams with usage anyway ---------------------------------

MISTRAL_422 = {"object": "error", "message": {"detail": [{
    "type": "extra_forbidden", "loc": ["body", "stream_options", "include_usage"],
    "msg": "Extra inputs are not permitted", "input": True}]}, "type": "invalid_request_error", "param": None,
    "code": None}


class RefusesStreamOptions(RawUpstream):
    """Mistral's chat endpoint: 422 extra_forbidden to `stream_options`, else a stream with usage on its end."""

    refusal = http(422, json.dumps(MISTRAL_422).encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (
            line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:] if line)}
        body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
        self.requests.append({"body": body})
        writer.write(self.refusal if "stream_options" in body else self.answer)
        await writer.drain()
        writer.close()


@pytest.fixture
async def mistral(aiohttp_server: Any, redis_url: str) -> AsyncIterator[tuple[Gateway, RefusesStreamOptions]]:
    up = RefusesStreamOptions()
    server = await asyncio.start_server(up._serve, "127.0.0.1", 0)
    up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    doc = config_doc({"openai": up.url + "/v1", "anthropic": up.url, "gemini": up.url}, redis_url,
                     f"t{uuid.uuid4().hex}:")
    doc["models"]["oai/mistral-large"] = {"upstream": "mistral-large-latest", "params": {"drop": ["stream_options"]},
                                          "price": {"input_per_mtok": 2, "output_per_mtok": 6}}
    gw = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), FakeOpenAI())
    yield gw, up
    await gw.close()
    server.close()
    await server.wait_closed()


async def test_a_server_that_refuses_stream_options_streams_and_bills(mistral: tuple[Gateway,
                                                                                   RefusesStreamOptions]) -> None:
    """Every streamed request to Mistral failed: the gateway added `stream_options.include_usage`, which it
    refuses (422). A model whose `params.drop` names it (Mistral's hosts drop it by default) is streamed
    without it; Mistral's last chunk carries the usage, which the client gets and is billed."""
    gw, up = mistral
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    up.answer = sse({**HEAD, "model": "mistral-large-latest", "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
                    {**HEAD, "model": "mistral-large-latest", "usage": usage,
                     "choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]},
                    "data: [DONE]\n\n")
    before, _, _ = await ledger(gw)
    status, raw = await call(gw, "/v1/chat/completions", {
        "model": "oai/mistral-large", "messages": MESSAGES, "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200
    assert "stream_options" not in up.requests[-1]["body"]
    got, bill = client_usage_and_bill(raw, stream=True)
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, 2)
    after, _, held = await ledger(gw)
    assert before - after == nano(bill["request_cost"]) == 9 * 2_000 + 2 * 6_000 and held == 0


# Other strict servers (Pydantic's `extra="forbid"`): FastAPI's own 422, and a 400 in OpenAI's error shape
EXTRA_FORBIDDEN = [{"type": "extra_forbidden", "loc": ["body", "stream_options"],
                    "msg": "Extra inputs are not permitted", "input": {"include_usage": True}}]
STRICT_REFUSALS = {
    "fastapi-422": http(422, json.dumps({"detail": EXTRA_FORBIDDEN}).encode()),
    "openai-shaped-400": http(400, json.dumps({"error": {
        "message": str(EXTRA_FORBIDDEN), "type": "BadRequestError", "param": None, "code": 400}}).encode()),
}
STRICT_USAGE = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
STRICT_CHAT = sse({**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"},
                                         "finish_reason": None}]},
                  {**HEAD, "usage": STRICT_USAGE, "choices": [{"index": 0, "delta": {"content": "!"},
                                                               "finish_reason": "stop"}]},
                  "data: [DONE]\n\n")
STRICT_TEXT = sse({**TEXT, "choices": [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": None}]},
                  {**TEXT, "usage": STRICT_USAGE,
                   "choices": [{"text": "!", "index": 0, "logprobs": None, "finish_reason": "stop"}]},
                  "data: [DONE]\n\n")
# (client API, model, upstream's stream, its prices in nano-dollars per token): a chat model's completions go
# upstream as chat; a native one's (apis_config: 1.5 and 2 USD per million tokens) pass through
STRICT_CASES = {
    "chat": ("chat", "oai/gpt-4o", STRICT_CHAT, (INPUT_NANO, OUTPUT_NANO)),
    "completions": ("completions", "oai/gpt-4o", STRICT_CHAT, (INPUT_NANO, OUTPUT_NANO)),
    "native-completions": ("completions", "oai/gpt-3.5-turbo-instruct", STRICT_TEXT, (1_500, 2_000)),
}


async def stream_through_sdk(gw: Gateway, api: str, model: str = "oai/gpt-4o",
                             **extra: Any) -> tuple[str, dict[str, Any]]:
    """A stream asked with the official SDK: its text and its bill."""
    client = gw.openai()
    if api == "chat":
        stream: Any = await client.chat.completions.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                                           stream=True, **extra)
    else:
        stream = await client.completions.create(model=model, prompt="hi", stream=True, **extra)
    text, bill = "", {}
    async for chunk in stream:
        bill = (chunk.model_extra or {}).get("billing") or bill
        for choice in chunk.choices:
            text += (choice.delta.content or "") if api == "chat" else choice.text
    return text, bill


@pytest.mark.parametrize("case", list(STRICT_CASES))
@pytest.mark.parametrize("refusal", list(STRICT_REFUSALS))
async def test_a_strict_server_refusing_the_stream_options_the_gateway_added_streams_without_them(
        mistral: tuple[Gateway, RefusesStreamOptions], log_lines: Any, refusal: str, case: str) -> None:
    """The gateway adds `stream_options.include_usage` to every stream; a strict server (Pydantic's
    `extra="forbid"`) answers 400 or 422 `extra_forbidden`, and every stream to it failed with an error about a
    field the client never sent. It is sent once more without it (nothing was generated), and the provider
    is remembered: its next streams go without it at once. Billed from the usage on the stream's end."""
    gw, up = mistral
    api, model, up.answer, (input_nano, output_nano) = STRICT_CASES[case]
    up.refusal = STRICT_REFUSALS[refusal]
    cost = 9 * input_nano + 2 * output_nano
    before = await ledger(gw)
    for _ in range(2):
        text, bill = await stream_through_sdk(gw, api, model)
        assert text == "Hi!"
        assert nano(bill["request_cost"]) == cost and bill["estimated"] is False
    bodies = [r["body"] for r in up.requests]
    assert ["stream_options" in b for b in bodies] == [True, False, False]  # retried once, then remembered
    assert {k: v for k, v in bodies[0].items() if k != "stream_options"} == bodies[1] == bodies[2]
    after = await ledger(gw)
    assert before[0] - after[0] == 2 * cost and after[2] == 0
    learned = [line for line in log_lines() if "stream_options" in line["event"]]
    assert [line["level"] for line in learned] == ["warning"], learned
    assert learned[0]["provider"] == "oai"


async def test_a_client_that_sent_stream_options_itself_gets_the_strict_servers_refusal(
        mistral: tuple[Gateway, RefusesStreamOptions]) -> None:
    """The field is the client's own: the server's 422 is its answer, as it would be without the gateway;
    nothing is sent again and nothing is charged."""
    gw, up = mistral
    up.refusal, up.answer = STRICT_REFUSALS["fastapi-422"], STRICT_CHAT
    before = await ledger(gw)
    status, raw = await call(gw, "/v1/chat/completions", {"model": "oai/gpt-4o", "messages": MESSAGES, "stream": True,
                                                          "stream_options": {"include_usage": True}})
    payload = json.loads(raw)
    assert 400 <= status < 500, payload
    validate(payload, "ErrorResponse")
    assert "Extra inputs are not permitted" in payload["error"]["message"]
    assert len(up.requests) == 1
    assert await ledger(gw) == before


async def test_what_a_provider_refuses_is_forgotten_on_reload(mistral: tuple[Gateway, RefusesStreamOptions]) -> None:
    """A reload builds a new catalog: the server may have been fixed, or the provider's URL now points at
    another; its streams ask for usage again (and learn again if still refused)."""
    gw, up = mistral
    up.answer = STRICT_CHAT
    runtime = gw.app[RUNTIME]
    assert (await stream_through_sdk(gw, "chat"))[0] == "Hi!"
    runtime.snapshot = Snapshot.of(runtime.snapshot.config)
    assert (await stream_through_sdk(gw, "chat"))[0] == "Hi!"
    assert ["stream_options" in r["body"] for r in up.requests] == [True, False, True, False]
