"""What a demanding user of /v1/chat/completions asks of Claude and Gemini models, through the official
openai SDK, the running gateway and the fake upstreams (each replaying its provider's recorded wire shapes):
structured outputs on Claude, fields no translation can honour, fallbacks past such a field, and the usage
chunk of a stream whose upstream reported no usage."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from apis_config import ANTHROPIC_KEY, GEMINI_KEY, OPENAI_KEY, Upstreams
from fakes.gemini_upstream import recorded_chunks
from harness import Gateway, start_gateway, validate
from openai.types.chat import ChatCompletionMessage
from pydantic import BaseModel

from gateway import billing
from gateway.config_load import parse
from gateway.state import RUNTIME
from providers.anthropic_request import JSON_TOOL

MESSAGES = [{"role": "user", "content": "Name a famous mathematician."}]
NO_USAGE_STREAM = "googleai/streaming-success-finish-message.txt"  # a recorded Gemini stream without usageMetadata
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]


class Person(BaseModel):
    name: str
    born: int


ADA = {"name": "Ada Lovelace", "born": 1815}


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def gw(request: pytest.FixtureRequest, aiohttp_server: Any, all_upstreams: Upstreams) -> AsyncIterator[Gateway]:
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    doc = {
        "store": {"url": store_url, "prefix": f"t{uuid.uuid4().hex}:"},
        "retries": {"max_retries": 0},
        "providers": {
            "claude": {"kind": "anthropic", "base_url": all_upstreams.urls["anthropic"], "api_key": ANTHROPIC_KEY},
            "oai": {"kind": "openai", "base_url": all_upstreams.urls["openai"], "api_key": OPENAI_KEY},
            "google": {"kind": "gemini", "base_url": all_upstreams.urls["gemini"], "api_key": GEMINI_KEY},
        },
        "models": {
            "claude/sonnet": {"upstream": "claude-sonnet-4-5", "max_output_tokens": 1024,
                              "price": {"input_per_mtok": 3, "output_per_mtok": 15}, "fallbacks": ["oai/gpt-4o"]},
            "claude/solo": {"upstream": "claude-sonnet-4-5", "max_output_tokens": 1024,
                            "price": {"input_per_mtok": 3, "output_per_mtok": 15}, "fallbacks": ["google/flash"]},
            "claude/old": {"upstream": "claude-sonnet-4-0", "max_output_tokens": 1024,  # no strict tools yet
                           "price": {"input_per_mtok": 3, "output_per_mtok": 15}},
            "oai/gpt-4o": {"price": {"input_per_mtok": 2.5, "output_per_mtok": 10}},
            "oai/then-claude": {"upstream": "gpt-4o", "price": {"input_per_mtok": 2.5, "output_per_mtok": 10},
                                "fallbacks": ["claude/sonnet"]},
            "google/flash": {"upstream": "gemini-2.0-flash", "max_output_tokens": 8192,
                             "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}},
        },
    }
    gateway = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), all_upstreams.openai)
    yield gateway
    await gateway.close()


async def balance(gw: Gateway) -> int:
    await gw.app[RUNTIME].settlements.drain(5)
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None
    return record.balance


# -- 1. response_format on Claude -------------------------------------------------------------------


async def test_structured_output_on_claude_parsed_by_the_sdk(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.anthropic.forced_tool_input = ADA
    completion = await gw.openai().chat.completions.parse(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                          response_format=Person)
    message = completion.choices[0].message
    assert message.parsed == Person(**ADA)
    assert not message.tool_calls and completion.choices[0].finish_reason == "stop"
    sent = all_upstreams.anthropic.last.body
    assert sent["tool_choice"] == {"type": "tool", "name": JSON_TOOL}
    (tool,) = sent["tools"]
    assert tool["name"] == JSON_TOOL and tool["input_schema"]["properties"].keys() == {"name", "born"}
    assert tool["strict"] is True  # the SDK's schema is strict: Claude's strict tool holds the answer to it
    assert "response_format" not in sent
    assert completion.model == "claude/sonnet" and (completion.model_extra or {})["billing"]["request_cost"] > 0


async def test_structured_output_on_claude_streamed(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.anthropic.forced_tool_input = ADA
    async with gw.openai().chat.completions.stream(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                   response_format=Person) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.parsed == Person(**ADA)
    assert not choice.message.tool_calls and choice.finish_reason == "stop"
    assert all_upstreams.anthropic.last.body["stream"] is True


async def test_json_object_on_claude_raw_answers_validate(gw: Gateway, all_upstreams: Upstreams) -> None:
    body = {"model": "claude/sonnet", "messages": MESSAGES, "response_format": {"type": "json_object"}}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/chat/completions", json=body, headers=gw.auth()) as resp:
            answer = await resp.json()
        async with http.post(gw.url + "/v1/chat/completions", json={**body, "stream": True},
                             headers=gw.auth()) as resp:
            events = [line.removeprefix(b"data: ").strip() async for line in resp.content if line.startswith(b"data: ")]
    validate(answer, "CreateChatCompletionResponse")
    recorded = json.loads(answer["choices"][0]["message"]["content"])  # the fake's recorded tool input
    assert recorded == {"location": "SF", "units": "c"}
    assert all_upstreams.anthropic.last.body["tools"][0]["input_schema"] == {"type": "object"}
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    content = "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"])
    assert json.loads(content) == {"location": "Paris"}  # the recorded stream's tool input
    assert [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]] == ["stop"]


async def test_structured_output_beside_client_tools(gw: Gateway, all_upstreams: Upstreams) -> None:
    """The model must call one of the client's tools or answer in the format; here it calls a tool."""
    all_upstreams.anthropic.tool_response = True
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": Person.model_json_schema()}}
    completion = await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                           tools=TOOLS, response_format=fmt)  # type: ignore[arg-type]
    sent = all_upstreams.anthropic.last.body
    assert [t["name"] for t in sent["tools"]] == ["get_weather", JSON_TOOL] and sent["tool_choice"] == {"type": "any"}
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["parse", "tools"])
async def test_a_strict_schema_on_an_older_claude_is_its_best_effort(gw: Gateway, all_upstreams: Upstreams,
                                                                    how: str) -> None:
    """The SDK's `.parse()` and `pydantic_function_tool` send `strict: true`. Claude before 4.5 has no strict
    tools and refuses the field: it gets the schema as an ordinary tool, as it always did, and `/v1/models`
    does not list `structured_outputs` for it (test_models_e2e)."""
    if how == "parse":
        all_upstreams.anthropic.forced_tool_input = ADA
        completion = await gw.openai().chat.completions.parse(model="claude/old", messages=MESSAGES,  # type: ignore[arg-type]
                                                              response_format=Person)
        assert completion.choices[0].message.parsed == Person(**ADA)
    else:
        await gw.openai().chat.completions.create(model="claude/old", messages=MESSAGES,  # type: ignore[arg-type]
                                                  tools=[openai.pydantic_function_tool(Person)])
    tools = all_upstreams.anthropic.last.body["tools"]
    assert tools and all("strict" not in tool for tool in tools)


async def test_strict_client_tools_stay_strict_on_claude(gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.anthropic.forced_tool_input = ADA
    forced: Any = {"type": "function", "function": {"name": "Person"}}
    async with gw.openai().chat.completions.stream(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                   tools=[openai.pydantic_function_tool(Person)],
                                                   tool_choice=forced) as stream:
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert call.function.parsed_arguments == Person(**ADA)  # type: ignore[union-attr]
    (tool,) = all_upstreams.anthropic.last.body["tools"]
    assert (tool["name"], tool["strict"]) == ("Person", True)


# -- 2. fields no translation can honour ------------------------------------------------------------


@pytest.mark.parametrize(("fields", "param"), [
    ({"logprobs": True}, "logprobs"), ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"response_format": {"type": "grammar", "grammar": "root ::= \"yes\""}}, "response_format"),
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": {"type": "allowed_tools", "allowed_tools": {
          "mode": "auto", "tools": [{"type": "function", "function": {"name": "g"}}]}}}, "tool_choice"),
], ids=["logprobs", "top_logprobs", "functions", "function_call", "response_format_grammar", "logit_bias",
        "web_search_options", "moderation", "audio_out", "allowed_tools_not_in_tools"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
@pytest.mark.parametrize("model", ["google/flash", "claude/solo"])  # claude/solo falls back to google/flash
async def test_untranslatable_field_is_a_400_naming_it(gw: Gateway, all_upstreams: Upstreams, fields: dict[str, Any],
                                                       param: str, stream: bool, model: str) -> None:
    """Each field asks for something the answer of a Claude or Gemini model would silently lack (log
    probabilities, a function call, a grammar, banned tokens, a searched or moderated answer, audio)."""
    before = await balance(gw)
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model=model, messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=stream, extra_body=fields)
    assert info.value.code == "untranslatable" and info.value.param == param and param in info.value.message
    assert (all_upstreams.gemini.requests, all_upstreams.anthropic.requests) == ([], [])
    assert await balance(gw) == before  # the hold was returned


async def test_fields_asking_for_nothing_still_pass(gw: Gateway, all_upstreams: Upstreams) -> None:
    for model in ("google/flash", "claude/solo"):
        completion = await gw.openai().chat.completions.create(  # type: ignore[call-overload]
            model=model, messages=MESSAGES, logprobs=False, logit_bias={}, modalities=["text"],
            extra_body={"web_search_options": None, "moderation": None})
        assert completion.model == model and completion.choices[0].message.content
    for sent in (all_upstreams.anthropic.last.body, all_upstreams.gemini.last.body):
        assert not {"logprobs", "logit_bias", "modalities", "web_search_options", "moderation"} & set(sent)


# -- 2b. assistant turns whose words are not in `content` ----------------------------------------


def history_with(answer: dict[str, Any]) -> list[Any]:
    """A conversation whose earlier answer is `answer`, as the SDK's returned message dumps it."""
    message = ChatCompletionMessage.model_validate({"role": "assistant", "content": None, **answer})
    return [MESSAGES[0], message.model_dump(exclude_unset=True), {"role": "user", "content": "Why not?"}]


def sent_turns(model: str, ups: Upstreams) -> list[tuple[str, str]]:
    """(role, text) of each turn the upstream of `model` was sent."""
    if model.startswith("google/"):
        return [(c["role"], " ".join(p["text"] for p in c["parts"])) for c in ups.gemini.last.body["contents"]]
    return [(t["role"], t["content"] if isinstance(t["content"], str) else " ".join(b["text"] for b in t["content"]))
            for t in ups.anthropic.last.body["messages"]]


@pytest.mark.parametrize("model", ["claude/solo", "google/flash"])
@pytest.mark.parametrize("answer", [{"refusal": "I can't help with that."},
                                    {"audio": {"id": "audio_abc", "data": "UklGRg==", "expires_at": 1_900_000_000,
                                               "transcript": "I can't help with that."}}], ids=["refusal", "audio"])
async def test_an_answer_without_content_stays_in_the_history(gw: Gateway, all_upstreams: Upstreams, model: str,
                                                              answer: dict[str, Any]) -> None:
    """A refusal (`message.refusal`, content null) or an audio answer (its `transcript`) from an OpenAI model,
    sent back on a Claude or Gemini model, is the assistant's turn in words: dropped, the model would not know
    what it had answered and the two user turns would run together."""
    await gw.openai().chat.completions.create(model=model, messages=history_with(answer))
    assistant = "model" if model.startswith("google/") else "assistant"
    assert sent_turns(model, all_upstreams) == [
        ("user", MESSAGES[0]["content"]), (assistant, "I can't help with that."), ("user", "Why not?")]


async def test_an_audio_answer_known_only_by_its_id_is_refused(gw: Gateway, all_upstreams: Upstreams) -> None:
    """OpenAI's own way to send an audio answer back is its `id`: only OpenAI can read it back."""
    history = [MESSAGES[0], {"role": "assistant", "audio": {"id": "audio_abc"}}, {"role": "user", "content": "Go on"}]
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="claude/solo", messages=history)  # type: ignore[arg-type]
    assert info.value.code == "untranslatable" and info.value.param == "messages"
    assert "messages[1].audio" in info.value.message
    assert (all_upstreams.gemini.requests, all_upstreams.anthropic.requests) == ([], [])


# -- 5. fallbacks past an untranslatable candidate --------------------------------------------------


async def test_untranslatable_on_claude_falls_back_to_the_openai_model(gw: Gateway, all_upstreams: Upstreams) -> None:
    completion = await gw.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                           logprobs=True, top_logprobs=2)
    assert completion.model == "oai/gpt-4o"
    assert all_upstreams.anthropic.requests == []
    sent = all_upstreams.openai.last.body
    assert (sent["model"], sent["logprobs"], sent["top_logprobs"]) == ("gpt-4o", True, 2)
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, completion.id)
    assert record is not None and record["model"] == "oai/gpt-4o"
    # billed at the serving model's price (2.5 / 10 per Mtok; the fake OpenAI answers 19 + 10 tokens)
    assert round((completion.model_extra or {})["billing"]["request_cost"] * 1e9) == 19 * 2_500 + 10 * 10_000


async def test_no_candidate_can_take_it_is_the_400(gw: Gateway, all_upstreams: Upstreams) -> None:
    """claude/solo falls back to google/flash: neither has log probabilities."""
    before = await balance(gw)
    with pytest.raises(openai.BadRequestError) as info:
        await gw.openai().chat.completions.create(model="claude/solo", messages=MESSAGES,  # type: ignore[arg-type]
                                                  logprobs=True)
    assert info.value.code == "untranslatable" and info.value.param == "logprobs"
    assert (all_upstreams.anthropic.requests, all_upstreams.gemini.requests, all_upstreams.openai.requests) == (
        [], [], [])
    assert await balance(gw) == before


async def test_a_fallback_that_cannot_take_it_does_not_hide_the_primarys_answer(gw: Gateway,
                                                                                 all_upstreams: Upstreams) -> None:
    """The OpenAI primary answers 429 and its Claude fallback cannot express `logprobs`: the client gets the
    429 with its Retry-After (which the SDKs retry), not the fallback's 400 (which they never retry)."""
    before = await balance(gw)
    all_upstreams.openai.status, all_upstreams.openai.error_headers = 429, {"Retry-After": "7"}
    with pytest.raises(openai.RateLimitError) as info:
        await gw.openai().chat.completions.create(model="oai/then-claude", messages=MESSAGES,  # type: ignore[arg-type]
                                                  logprobs=True)
    assert info.value.response.headers["Retry-After"] == "7"
    assert len(all_upstreams.openai.requests) == 1 and all_upstreams.anthropic.requests == []
    assert await balance(gw) == before


async def test_an_untranslatable_request_uses_none_of_the_keys_limits(gw: Gateway, all_upstreams: Upstreams) -> None:
    """Refused before admission: no request counted against rpm, no hold placed, so the key's one request a
    minute is still there for a request the model can take."""
    key, key_id = await gw.add_key("one-a-minute", rpm=1)
    client = gw.openai(api_key=key)
    for _ in range(3):
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(model="claude/solo", messages=MESSAGES,  # type: ignore[arg-type]
                                                 logprobs=True)
        assert info.value.code == "untranslatable"
    completion = await client.chat.completions.create(model="claude/solo", messages=MESSAGES)  # type: ignore[arg-type]
    assert completion.model == "claude/solo" and completion.choices[0].message.content
    with pytest.raises(openai.RateLimitError):  # and the limit itself still holds
        await client.chat.completions.create(model="claude/solo", messages=MESSAGES)  # type: ignore[arg-type]
    await gw.app[RUNTIME].settlements.drain(5)
    record = await gw.app[RUNTIME].store.get_key(key_id)
    assert record is not None and record.balance + record.usage == record.credits


# -- 4. the usage chunk of a stream without upstream usage -----------------------------------------


async def test_gemini_stream_without_usage_metadata_still_ends_with_usage(gw: Gateway,
                                                                          all_upstreams: Upstreams) -> None:
    all_upstreams.gemini.stream_recording = NO_USAGE_STREAM
    stream = await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES,  # type: ignore[arg-type]
                                                       stream=True, stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(part["text"] for chunk in recorded_chunks(NO_USAGE_STREAM)
                           for cand in chunk["candidates"] for part in cand["content"]["parts"])
    last = chunks[-1]
    validate(last.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == billing.estimate_tokens(len(text.encode()))  # the gateway's estimate
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    bill = (last.model_extra or {})["billing"]
    assert bill["request_cost"] > 0 and (last.usage.model_extra or {})["cost"] == bill["request_cost"]
    record = await gw.app[RUNTIME].store.get_generation(gw.key_id, last.id)
    assert record is not None and record["estimated"] == "1"  # the store's record says the usage is estimated
    assert int(record["tokens_completion"]) == last.usage.completion_tokens


async def test_gemini_stream_without_usage_and_no_include_usage_has_no_usage_chunk(
        gw: Gateway, all_upstreams: Upstreams) -> None:
    all_upstreams.gemini.stream_recording = NO_USAGE_STREAM
    stream = await gw.openai().chat.completions.create(model="google/flash", messages=MESSAGES,  # type: ignore[arg-type]
                                                       stream=True)
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks) and chunks[-1].choices[0].finish_reason == "stop"


# -- 3. OpenAI-compatible upstreams that leave required fields out ---------------------------------


async def raw_chat(gw: Gateway, body: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/chat/completions", json=body,
                                                          headers=gw.auth()) as resp:
        assert resp.status == 200, await resp.text()
        if not body.get("stream"):
            return await resp.json()
        return [line.removeprefix(b"data: ").strip() async for line in resp.content if line.startswith(b"data: ")]


@pytest.mark.parametrize("include_usage", [False, True], ids=["no_usage", "usage"])
async def test_sparse_compatible_upstream_relayed_valid(gw: Gateway, all_upstreams: Upstreams,
                                                        include_usage: bool) -> None:
    """Chunks without delta, index, logprobs or finish_reason, and answers without index, logprobs or refusal,
    reach the client complete: each validates against OpenAI's schema."""
    all_upstreams.openai.sparse = True
    body: dict[str, Any] = {"model": "oai/gpt-4o", "messages": MESSAGES}
    answer = await raw_chat(gw, body)
    validate(answer, "CreateChatCompletionResponse")
    assert (answer["choices"][0]["index"], answer["choices"][0]["message"]["content"]) == (
        0, "Hello! How can I assist you today?")
    body["stream"] = True
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    events = await raw_chat(gw, body)
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]] == ["stop"]
    assert (chunks[-1]["choices"] == []) == include_usage
    sent = [json.loads(e.removeprefix(b"data: ")) for e in all_upstreams.openai.stream_events(body)[:-1]]
    assert any("index" not in c for chunk in sent for c in chunk["choices"])  # the upstream did leave them out
    assert "".join(c["delta"].get("content") or "" for chunk in chunks for c in chunk["choices"]) == "".join(
        (c.get("delta") or {}).get("content") or "" for chunk in sent for c in chunk["choices"])
