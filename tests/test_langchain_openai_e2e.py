"""langchain-openai's ChatOpenAI and OpenAIEmbeddings against the running gateway, with an OpenAI-kind, a Claude
and a Gemini model behind it: invoke and stream (LangChain's `stream_usage` asks for the usage chunk), tool
loops, the `tool_choice` forms `bind_tools` sends, `with_structured_output` in each method, batches, retries on
a 429 or 503 with `Retry-After`, client timeouts and embeddings. What LangChain reports (usage_metadata,
response_metadata) must be what the gateway billed, once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from apis_config import Upstreams
from fakes.gemini_upstream import embedding_of
from fakes.openai_upstream import EMBEDDING
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
    start,
    tokens,
    upstream,
)
from langchain_kit import gw as gw  # the fixtures: a gateway on Redis, LangChain's clients for it
from langchain_kit import lc as lc
from langchain_kit import offline as offline  # autouse: no tiktoken download, no LangSmith
from prometheus_client import REGISTRY

ANSWER = "It is 18 degrees and sunny in SF."


@pytest.mark.parametrize("model", KINDS)
async def test_invoke_reports_the_usage_and_the_cost_billed(gw: Gateway, lc: LangChain, model: str) -> None:
    message = await lc.chat(model).ainvoke("Hello!")
    assert message.content and tokens(message.usage_metadata) == INVOKED[model]
    meta = message.response_metadata
    assert meta["model_name"] == model and meta["finish_reason"] == "stop"
    assert nano(meta["token_usage"]["cost"]) == cost(model, INVOKED[model]) == await ledger(gw)
    record = await generation(gw, meta["id"])  # the id LangChain keeps is the gateway's generation id
    assert (record["tokens_prompt"], record["tokens_completion"]) == INVOKED[model]


@pytest.mark.parametrize("model", KINDS)
async def test_stream_usage_is_counted_once_and_is_what_was_billed(gw: Gateway, lc: LangChain, model: str) -> None:
    chunks = [chunk async for chunk in lc.chat(model).astream("Hello!", stream_usage=True)]
    assert sum(chunk.usage_metadata is not None for chunk in chunks) == 1  # LangChain adds every chunk's up
    message = sum(chunks[1:], chunks[0])
    assert isinstance(message, AIMessageChunk) and message.content
    assert tokens(message.usage_metadata) == STREAMED[model]
    assert message.response_metadata["finish_reason"] == "stop"
    assert await ledger(gw) == cost(model, STREAMED[model])
    # without stream_usage LangChain reports none, and the gateway still bills the upstream's count
    chunks = [chunk async for chunk in lc.chat(model).astream("Hello!")]
    assert all(chunk.usage_metadata is None for chunk in chunks)
    assert await ledger(gw) == 2 * cost(model, STREAMED[model])


def tool_result_sent(gw: Gateway, model: str, call_id: str) -> Any:
    """The tool's result as the upstream got it in the loop's second request, in its own format."""
    body = upstream(gw, model).last.body
    if model == CHAT:
        assert body["messages"][-2]["tool_calls"][0]["id"] == call_id
        return {"id": body["messages"][-1]["tool_call_id"], "content": body["messages"][-1]["content"]}
    if model == CLAUDE:
        (result,) = body["messages"][-1]["content"]
        return {"id": result["tool_use_id"], "content": result["content"]}
    (part,) = body["contents"][-1]["parts"]
    return {"id": call_id, "name": part["functionResponse"]["name"], "content": part["functionResponse"]["response"]}


@pytest.mark.parametrize("model", KINDS)
async def test_tool_loop_with_bind_tools(gw: Gateway, lc: LangChain, model: str) -> None:
    llm = lc.chat(model).bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("What is the weather in SF?")]
    make_call(gw)
    asked = await llm.ainvoke(messages)
    (call,) = asked.tool_calls
    assert (call["name"], call["args"]) == (CALL["name"], CALL["arguments"]) and not asked.invalid_tool_calls
    assert asked.response_metadata["finish_reason"] == "tool_calls"
    result = await get_weather.ainvoke(call)  # a ToolMessage answering the call's id
    messages += [asked, result]
    make_text(gw, ANSWER)
    final = await llm.ainvoke(messages)
    assert final.content == (CLAUDE_TEXT if model == CLAUDE else ANSWER) and not final.tool_calls
    sent = tool_result_sent(gw, model, call["id"])
    assert sent["id"] == call["id"] and "18 degrees C and sunny in SF" in str(sent["content"])
    assert sent.get("name", CALL["name"]) == CALL["name"]
    # the same call streamed: LangChain puts it together from the tool-call deltas
    make_call(gw)
    streamed = [chunk async for chunk in llm.astream(messages[:1], stream_usage=True)]
    whole = sum(streamed[1:], streamed[0])
    assert isinstance(whole, AIMessageChunk)
    (call,) = whole.tool_calls
    expected = {"location": "Paris"} if model == CLAUDE else CALL["arguments"]  # Claude's recorded stream
    assert (call["name"], call["args"]) == (CALL["name"], expected) and call["id"]
    assert whole.usage_metadata is not None and whole.response_metadata["finish_reason"] == "tool_calls"


FORMS: list[Any] = ["auto", "none", "required", "any", "get_weather", True]
SENT_AS = {  # what each kind's upstream gets for each of LangChain's forms
    CHAT: ["auto", "none", "required", "required", {"type": "function", "function": {"name": "get_weather"}},
           "required"],
    CLAUDE: [{"type": "auto"}, {"type": "none"}, {"type": "any"}, {"type": "any"},
             {"type": "tool", "name": "get_weather"}, {"type": "any"}],
    GEMINI: [{"mode": "AUTO"}, {"mode": "NONE"}, {"mode": "ANY"}, {"mode": "ANY"},
             {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}, {"mode": "ANY"}],
}


@pytest.mark.parametrize("model", KINDS)
async def test_tool_choice_forms_of_bind_tools(gw: Gateway, lc: LangChain, model: str) -> None:
    make_call(gw)
    sent = []
    for form in FORMS:
        await lc.chat(model).bind_tools([get_weather], tool_choice=form).ainvoke("Weather in SF?")
        body = upstream(gw, model).last.body
        sent.append(body["toolConfig"]["functionCallingConfig"] if model == GEMINI else body["tool_choice"])
    assert sent == SENT_AS[model]


METHODS = [("json_schema", None), ("json_schema", True), ("function_calling", None), ("function_calling", True),
           ("json_mode", None)]


def strict_sent(gw: Gateway, model: str, method: str) -> bool:
    """Whether the upstream was held to the schema (OpenAI's strict, Claude's strict tool, Gemini's JSON schema)."""
    body = upstream(gw, model).last.body
    if model == CHAT:
        spec = body["response_format"]["json_schema"] if method == "json_schema" else body["tools"][0]["function"]
        return bool(spec.get("strict"))
    if model == CLAUDE:
        return bool(body["tools"][0].get("strict"))
    if method == "json_schema":
        return "responseJsonSchema" in body["generationConfig"]
    return "parametersJsonSchema" in body["tools"][0]["functionDeclarations"][0]


# the openai SDK's stream helper (LangChain streams json_schema through it) dumps an event whose `parsed` its
# model types as None: a warning of the SDK's own, about its own types
@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings:UserWarning")
@pytest.mark.parametrize("model", KINDS)
@pytest.mark.parametrize(("method", "strict"), METHODS)
async def test_with_structured_output(gw: Gateway, lc: LangChain, model: str, method: str,
                                      strict: bool | None) -> None:
    make_person(gw, "Person" if method == "function_calling" else None)
    structured = lc.chat(model).with_structured_output(Person, method=method, strict=strict, include_raw=True)
    out = await structured.ainvoke("Ada is 36. Answer in JSON.")
    assert out["parsing_error"] is None and out["parsed"] == Person(name="Ada", age=36)
    assert tokens(out["raw"].usage_metadata)
    if strict or method == "json_schema":  # LangChain makes json_schema strict by default
        assert strict_sent(gw, model, method)
    streamed = [part async for part in lc.chat(model).with_structured_output(Person, method=method,
                                                                             strict=strict).astream("Ada?")]
    assert streamed and streamed[-1] == Person(name="Ada", age=36)


async def test_batch_and_abatch_bill_every_request_once(gw: Gateway, lc: LangChain) -> None:
    prompts = [f"Question {i}" for i in range(5)]
    answers = await lc.chat(CLAUDE).abatch(prompts, config={"max_concurrency": 5})
    ids = {answer.response_metadata["id"] for answer in answers}
    assert len(ids) == 5 and all(answer.content == CLAUDE_TEXT for answer in answers)
    assert await ledger(gw) == 5 * cost(CLAUDE, INVOKED[CLAUDE])
    # the synchronous batch, in LangChain's thread pool (the gateway runs on this event loop)
    answers = await asyncio.to_thread(lc.chat(GEMINI).batch, prompts[:3], config={"max_concurrency": 2})
    assert len({answer.response_metadata["id"] for answer in answers}) == 3
    assert await ledger(gw) == 5 * cost(CLAUDE, INVOKED[CLAUDE]) + 3 * cost(GEMINI, INVOKED[GEMINI])
    assert len(upstream(gw, CLAUDE).requests) == 5 and len(upstream(gw, GEMINI).requests) == 3


async def test_max_retries_wait_the_retry_after_of_a_429_and_bill_once(gw: Gateway, lc: LangChain) -> None:
    fake = upstream(gw, CHAT)
    fake.status, fake.fail_times, fake.error_headers = 429, 1, {"Retry-After": "1"}
    with pytest.raises(openai.RateLimitError):  # without retries the client sees the 429, which costs nothing
        await lc.chat(CHAT).ainvoke("Hello!")
    assert await ledger(gw) == 0
    fake.fail_times = 1
    began = time.monotonic()
    message = await lc.chat(CHAT, max_retries=2).ainvoke("Hello!")
    assert time.monotonic() - began >= 1  # the SDK waited the Retry-After the gateway passed on
    assert len(fake.requests) == 3 and message.content
    assert await ledger(gw) == cost(CHAT, INVOKED[CHAT]) == nano(message.response_metadata["token_usage"]["cost"])


async def test_a_provider_at_its_max_concurrency_is_retried_after_its_503(aiohttp_server: Any, all_upstreams: Upstreams,
                                                                           redis_url: str) -> None:
    gw = await start(aiohttp_server, all_upstreams, redis_url, {"oai": {"max_concurrency": 1}})
    lc = LangChain(gw)
    try:
        all_upstreams.openai.delay_before_headers_s = 0.3  # the first holds the provider's one slot a while
        refused = REGISTRY.get_sample_value("gateway_provider_overloaded_total", {"provider": "oai"}) or 0
        answers = await lc.chat(CHAT, max_retries=2).abatch(["one", "two"])
        assert all(answer.content for answer in answers)
        assert (REGISTRY.get_sample_value("gateway_provider_overloaded_total", {"provider": "oai"}) or 0) > refused
        assert len(all_upstreams.openai.requests) == 2  # a refused attempt never reached the upstream
        assert await ledger(gw) == 2 * cost(CHAT, INVOKED[CHAT])
    finally:
        await lc.close()
        await gw.close()


async def test_a_client_timeout_is_retried_and_charges_nothing(gw: Gateway, lc: LangChain) -> None:
    fake = upstream(gw, CHAT)
    fake.delay_before_headers_s = 1.0
    with pytest.raises(openai.APITimeoutError):
        await lc.chat(CHAT, timeout=0.3, max_retries=1).ainvoke("Hello!")
    assert len(fake.requests) == 2  # LangChain's retry went through the gateway to the upstream again
    assert await ledger(gw) == 0  # both attempts abandoned before an answer: no charge, no hold left


@pytest.mark.parametrize(("model", "vector"), [("oai/text-embedding-3-small", EMBEDDING),
                                               ("google/embedding", embedding_of("hello"))])
async def test_embeddings(gw: Gateway, lc: LangChain, model: str, vector: list[float]) -> None:
    embeddings = lc.embeddings(model)
    documents = await embeddings.aembed_documents(["hello", "hello"])
    query = await embeddings.aembed_query("hello")
    assert documents == [pytest.approx(vector)] * 2 and query == pytest.approx(vector)
    charged = await ledger(gw)
    assert charged > 0
    if model.startswith("google/"):  # `dimensions` reaches Gemini as outputDimensionality
        short = await lc.embeddings(model, dimensions=4).aembed_query("hello")
        assert short == pytest.approx(embedding_of("hello", 4))
        assert upstream(gw, GEMINI).last.body["requests"][0]["outputDimensionality"] == 4
        # LangChain sends up to 1,000 texts a request; Gemini takes 100: a clear 400, or chunk_size=100
        with pytest.raises(openai.BadRequestError, match="input"):
            await embeddings.aembed_documents(["hello"] * 101)
        vectors = await lc.embeddings(model, chunk_size=100).aembed_documents(["hello"] * 101)
        assert vectors == [pytest.approx(vector)] * 101
    else:
        assert upstream(gw, CHAT).last.body["input"] == ["hello"]
        assert charged == 2 * 8 * 20  # the upstream's 8 prompt tokens, twice, at $0.02 a million


@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
async def test_gemini_3_tool_loop_goes_on_without_the_signature_langchain_drops(
        aiohttp_server: Any, all_upstreams: Upstreams, redis_url: str, stream: bool) -> None:
    """Gemini 3 refuses a turn whose function call lost its thought signature; LangChain keeps a tool call's
    name, arguments and id only (not the `extra_content` the signature rides in), so the gateway's stand-in
    must carry the loop."""
    gw = await start(aiohttp_server, all_upstreams, redis_url, models={
        "google/g3": {"upstream": "gemini-3-pro-preview", "price": {"input_per_mtok": 2, "output_per_mtok": 12}}})
    lc = LangChain(gw)
    try:
        llm = lc.chat("google/g3", reasoning_effort="low").bind_tools([get_weather])
        messages: list[Any] = [HumanMessage("What is the weather in SF?")]
        all_upstreams.gemini.function_call = CALL  # a signed call, as Gemini 3 makes them
        if stream:
            chunks = [chunk async for chunk in llm.astream(messages)]
            asked = sum(chunks[1:], chunks[0])
        else:
            asked = await llm.ainvoke(messages)
        (call,) = asked.tool_calls
        messages += [asked, await get_weather.ainvoke(call)]
        all_upstreams.gemini.function_call, all_upstreams.gemini.text = None, ANSWER
        assert (await llm.ainvoke(messages)).content == ANSWER
        (turn,) = [c for c in all_upstreams.gemini.last.body["contents"] if c["role"] == "model"]
        assert turn["parts"][0]["thoughtSignature"] == "skip_thought_signature_validator"
    finally:
        await lc.close()
        await gw.close()
