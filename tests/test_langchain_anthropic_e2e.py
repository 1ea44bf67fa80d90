"""langchain-anthropic's ChatAnthropic against the gateway's `/v1/messages`, with a Claude model (served natively)
and an OpenAI-kind and a Gemini model (translated) behind it: invoke, stream, tools and a tool loop, structured
output, retries. What LangChain reports must be what the gateway billed: ChatAnthropic takes a stream's usage
from its `message_delta` event alone (the input tokens too), and the answer's bill from `response_metadata`."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import pytest
from harness import Gateway
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_kit import (
    CALL,
    CHAT,
    CLAUDE,
    CLAUDE_TEXT,
    GEMINI,
    INVOKED,
    KINDS,
    STREAMED,
    LangChain,
    Person,
    cost,
    generation,
    get_weather,
    ledger,
    make_call,
    make_person,
    make_text,
    nano,
    tokens,
    upstream,
)
from langchain_kit import gw as gw  # the fixtures: a gateway on Redis, LangChain's clients for it
from langchain_kit import lc as lc
from langchain_kit import offline as offline  # autouse: no tiktoken download, no LangSmith

ANSWER = "It is 18 degrees and sunny in SF."


@pytest.mark.parametrize("model", KINDS)
async def test_invoke_carries_the_usage_and_the_bill(gw: Gateway, lc: LangChain, model: str) -> None:
    message = await lc.claude(model).ainvoke("Hello!")
    assert message.content and tokens(message.usage_metadata) == INVOKED[model]
    meta = message.response_metadata
    assert meta["model_name"] == model and meta["stop_reason"] == "end_turn"
    assert nano(meta["billing"]["request_cost"]) == cost(model, INVOKED[model]) == await ledger(gw)
    record = await generation(gw, meta["id"])
    assert (record["tokens_prompt"], record["tokens_completion"]) == INVOKED[model]


@pytest.mark.parametrize("model", KINDS)
async def test_stream_reports_the_tokens_billed(gw: Gateway, lc: LangChain, model: str) -> None:
    """ChatAnthropic counts a stream's tokens from `message_delta` only: Claude's own `message_delta` states
    the output tokens alone (the input ones are in `message_start`), so the gateway's must state both, or
    LangChain reports a Claude stream's prompt as 0 tokens though the gateway billed it."""
    chunks = [chunk async for chunk in lc.claude(model).astream("Hello!")]
    assert sum(chunk.usage_metadata is not None for chunk in chunks) == 1
    message = sum(chunks[1:], chunks[0])
    assert isinstance(message, AIMessageChunk) and message.text
    assert message.response_metadata["stop_reason"] == "end_turn"
    assert tokens(message.usage_metadata) == STREAMED[model]
    assert await ledger(gw) == cost(model, STREAMED[model])


@pytest.mark.parametrize("model", KINDS)
async def test_tool_loop(gw: Gateway, lc: LangChain, model: str) -> None:
    llm = lc.claude(model).bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("What is the weather in SF?")]
    make_call(gw)
    asked = await llm.ainvoke(messages)
    (call,) = asked.tool_calls
    assert (call["name"], call["args"]) == (CALL["name"], CALL["arguments"])
    assert asked.response_metadata["stop_reason"] == "tool_use"
    messages += [asked, await get_weather.ainvoke(call)]
    make_text(gw, ANSWER)
    final = await llm.ainvoke(messages)
    assert final.text == (CLAUDE_TEXT if model == CLAUDE else ANSWER) and not final.tool_calls
    body = upstream(gw, model).last.body
    results = {CHAT: lambda: body["messages"][-1]["content"],
               CLAUDE: lambda: body["messages"][-1]["content"][0]["content"],
               GEMINI: lambda: body["contents"][-1]["parts"][0]["functionResponse"]["response"]}
    assert "18 degrees C and sunny in SF" in str(results[model]())
    # streamed: the call put together from `input_json_delta` events
    make_call(gw)
    chunks = [chunk async for chunk in llm.astream(messages[:1])]
    whole = sum(chunks[1:], chunks[0])
    assert isinstance(whole, AIMessageChunk)
    (call,) = whole.tool_calls
    expected = {"location": "Paris"} if model == CLAUDE else CALL["arguments"]  # Claude's recorded stream
    assert (call["name"], call["args"]) == (CALL["name"], expected) and call["id"]
    assert whole.response_metadata["stop_reason"] == "tool_use"


@pytest.mark.parametrize("model", KINDS)
async def test_structured_output_by_a_forced_tool(gw: Gateway, lc: LangChain, model: str) -> None:
    make_person(gw, "Person")
    person = await lc.claude(model).with_structured_output(Person).ainvoke("Ada is 36.")
    assert person == Person(name="Ada", age=36)


@pytest.mark.parametrize("model", [CHAT, GEMINI])  # Claude itself gets `output_config` as sent (the fake ignores it)
async def test_structured_output_by_json_schema_on_translated_models(gw: Gateway, lc: LangChain, model: str) -> None:
    make_person(gw, None)
    structured = lc.claude(model).with_structured_output(Person, method="json_schema")
    assert await structured.ainvoke("Ada is 36.") == Person(name="Ada", age=36)
    body = upstream(gw, model).last.body
    schema = (body["response_format"]["json_schema"]["schema"] if model == CHAT
              else body["generationConfig"]["responseJsonSchema"])
    assert set(schema["properties"]) == {"name", "age"}
    streamed = [part async for part in structured.astream("Ada is 36.")]
    assert streamed[-1] == Person(name="Ada", age=36)


async def test_max_retries_wait_the_retry_after_and_bill_once(gw: Gateway, lc: LangChain) -> None:
    fake = upstream(gw, CHAT)
    fake.status, fake.fail_times, fake.error_headers = 429, 1, {"Retry-After": "1"}
    with pytest.raises(anthropic.RateLimitError):
        await lc.claude(CHAT).ainvoke("Hello!")
    fake.fail_times = 1
    began = time.monotonic()
    message = await lc.claude(CHAT, max_retries=2).ainvoke("Hello!")
    assert time.monotonic() - began >= 1 and message.content
    assert len(fake.requests) == 3
    assert await ledger(gw) == cost(CHAT, INVOKED[CHAT]) == nano(message.response_metadata["billing"]["request_cost"])
