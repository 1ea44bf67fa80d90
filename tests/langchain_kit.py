"""What the LangChain end-to-end tests share: a gateway on the real Redis store in front of the three fake
upstreams (`apis_config`), LangChain's own clients pointed at it, the figures the recorded answers carry and
what the gateway must charge for them.

LangChain runs offline here: tiktoken would download its encodings on first use and LangSmith would trace to
its cloud, so `offline` makes the first fail loudly and keeps the second off.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
import pytest
from apis_config import Upstreams, config_doc
from harness import Gateway, start_gateway
from langchain_anthropic import ChatAnthropic
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from gateway.config_load import parse
from gateway.state import RUNTIME

CHAT = "oai/gpt-4o"
CLAUDE = "claude/sonnet"
GEMINI = "google/flash"
KINDS = [CHAT, CLAUDE, GEMINI]
# nano-dollars per token (in, out): apis_config's prices per million tokens, times 1,000
PRICE = {CHAT: (2_500, 10_000), CLAUDE: (3_000, 15_000), GEMINI: (100, 400)}
# (input, output) tokens of the recorded answers: unstreamed, and streamed
INVOKED = {CHAT: (19, 10), CLAUDE: (705, 25), GEMINI: (7, 22)}
STREAMED = {CHAT: (14, 30), CLAUDE: (11, 6), GEMINI: (7, 10)}
# the call every kind is made to answer with (Claude's recorded tool-use message makes exactly this one)
CALL = {"name": "get_weather", "arguments": {"location": "SF", "units": "c"}}
CLAUDE_TEXT = "The weather in SF is currently **20°C** (68°F) and **Sunny**!"  # its recorded end_turn answer


@tool
def get_weather(location: str, units: str = "c") -> str:
    """The weather at a place now."""
    return f"18 degrees {units.upper()} and sunny in {location}"


class Person(BaseModel):
    """Someone the text names."""

    name: str
    age: int


ADA = Person(name="Ada", age=36)


def cost(model: str, tokens: tuple[int, int]) -> int:
    """Nano-dollars the gateway must charge for (input, output) tokens of `model`."""
    (price_in, price_out), (tokens_in, tokens_out) = PRICE[model], tokens
    return tokens_in * price_in + tokens_out * price_out


def nano(usd: float) -> int:
    return round(usd * 1_000_000_000)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tiktoken download and no LangSmith tracing; a test that would reach the internet fails instead."""
    import tiktoken.load

    def refuse(blobpath: str) -> bytes:
        raise AssertionError(f"tiktoken tried to download {blobpath}: the tests run offline")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    for name in ("LANGSMITH_TRACING", "LANGCHAIN_TRACING_V2", "LANGSMITH_API_KEY", "LANGCHAIN_API_KEY",
                 "OPENAI_BASE_URL", "OPENAI_API_BASE", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    yield


async def start(aiohttp_server: Any, ups: Upstreams, redis_url: str,
                providers: dict[str, dict[str, Any]] | None = None,
                models: dict[str, dict[str, Any]] | None = None) -> Gateway:
    """The gateway of `apis_config` on the real Redis store, with provider fields merged in (and models added)."""
    doc = config_doc(ups.urls, redis_url, f"t{uuid.uuid4().hex}:")
    for name, fields in (providers or {}).items():
        doc["providers"][name].update(fields)
    doc["models"].update(models or {})
    gw = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), ups.openai)
    gw.extra["upstreams"] = ups
    return gw


@dataclass
class LangChain:
    """LangChain's clients for one gateway, each on HTTP clients of its own, closed with the test (LangChain's
    default clients are cached process-wide per base URL and outlive the test's event loop)."""

    gw: Gateway
    closers: list[Any] = field(default_factory=list)

    def chat(self, model: str, **options: Any) -> ChatOpenAI:
        options.setdefault("max_retries", 0)
        return ChatOpenAI(base_url=self.gw.url + "/v1", api_key=self.gw.key, model=model, **self._http(), **options)

    def embeddings(self, model: str, **options: Any) -> OpenAIEmbeddings:
        return OpenAIEmbeddings(base_url=self.gw.url + "/v1", api_key=self.gw.key, model=model, max_retries=0,
                                check_embedding_ctx_length=False, **self._http(), **options)

    def claude(self, model: str, **options: Any) -> ChatAnthropic:
        options.setdefault("max_retries", 0)
        options.setdefault("max_tokens", 256)
        llm = ChatAnthropic(base_url=self.gw.url, api_key=self.gw.key, model=model, **options)
        # the clients LangChain would make (its own parameters), on HTTP clients not in its process-wide cache
        llm.__dict__["_async_client"] = anthropic.AsyncAnthropic(**llm._client_params)
        llm.__dict__["_client"] = anthropic.Anthropic(**llm._client_params)
        self.closers += [llm.__dict__["_async_client"].close, llm.__dict__["_client"].close]
        return llm

    def _http(self) -> dict[str, Any]:
        sync, async_ = openai.DefaultHttpxClient(), openai.DefaultAsyncHttpxClient()
        self.closers += [sync.close, async_.aclose]
        return {"http_client": sync, "http_async_client": async_}

    async def close(self) -> None:
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result


def upstream(gw: Gateway, model: str) -> Any:
    """The fake upstream behind `model`."""
    ups: Upstreams = gw.extra["upstreams"]
    return {CHAT: ups.openai, CLAUDE: ups.anthropic, GEMINI: ups.gemini}[model]


def make_call(gw: Gateway) -> None:
    """Every kind's next answer calls `CALL` (Claude: its recorded tool use, which streamed asks for Paris)."""
    ups: Upstreams = gw.extra["upstreams"]
    ups.openai.tool_call = ups.gemini.function_call = CALL
    ups.openai.content = ups.gemini.text = None
    ups.anthropic.tool_response = ups.anthropic.tool_stream = True


def make_text(gw: Gateway, text: str) -> None:
    """Every kind's next answer is text: `text` (Claude: its recorded answer, `CLAUDE_TEXT`)."""
    ups: Upstreams = gw.extra["upstreams"]
    ups.openai.tool_call = ups.gemini.function_call = None
    ups.openai.content = ups.gemini.text = text
    ups.anthropic.tool_response = ups.anthropic.tool_stream = False


def make_person(gw: Gateway, as_call: str | None) -> None:
    """Every kind's next answer gives `ADA`: as a call of `as_call`, else as JSON text (Claude: always the input
    of the tool it is forced to call, which is how the gateway gets structured output from it)."""
    ups: Upstreams = gw.extra["upstreams"]
    if as_call:
        ups.openai.tool_call = ups.gemini.function_call = {"name": as_call, "arguments": ADA.model_dump()}
    else:
        ups.openai.content = ups.gemini.text = ADA.model_dump_json()
    ups.anthropic.forced_tool_input = ADA.model_dump()


async def ledger(gw: Gateway) -> int:
    """Nano-dollars the key was charged so far, once every settlement is in and no hold is left open."""
    store = gw.app[RUNTIME].store
    async with asyncio.timeout(10):
        while True:
            pending = gw.app[RUNTIME].settlements.pending
            if pending:
                await asyncio.wait(list(pending))
            record = await store.get_key(gw.key_id)
            assert record is not None
            if record.balance + record.usage == record.credits:  # no hold open
                return record.usage
            await asyncio.sleep(0.05)  # a request the client gave up on is still being wound down


async def generation(gw: Gateway, generation_id: str) -> dict[str, Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(
            f"{gw.url}/v1/generation", params={"id": generation_id}, headers=gw.auth()) as resp:
        assert resp.status == 200, await resp.text()
        return dict((await resp.json())["data"])


@pytest.fixture
async def gw(aiohttp_server: Any, all_upstreams: Upstreams, redis_url: str) -> AsyncIterator[Gateway]:
    """The gateway of `start` (import it into a test module to use it)."""
    gateway = await start(aiohttp_server, all_upstreams, redis_url)
    yield gateway
    await gateway.close()


@pytest.fixture
async def lc(gw: Gateway) -> AsyncIterator[LangChain]:
    """LangChain's clients for `gw`, closed with the test."""
    clients = LangChain(gw)
    yield clients
    await clients.close()


def tokens(usage: Any) -> tuple[int, int]:
    """(input, output) tokens of LangChain's `usage_metadata`, whose total must add up."""
    assert usage is not None
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    return usage["input_tokens"], usage["output_tokens"]
