"""Upstreams that close idle keep-alive connections, as the servers of local models do (uvicorn, so vLLM,
SGLang and LiteLLM, after 5 s; gunicorn's uvicorn workers after 2 s; llama-server after 5 s).

A request sent on a pooled connection just as the server closes it is lost, and the gateway rightly never
resends a POST whose body went out: the client would get a 502 `upstream_disconnected`. `IdleClosing` makes
that race deterministic: a request arriving on a connection idle longer than its `idle_s` is dropped
unanswered, the connection closed, which is what the client sees when its request meets the server's close.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import openai
import pytest
import yaml
from fakes.openai_upstream import WIRE, FakeOpenAI
from harness import Gateway, start_gateway
from proxies import Microsocks

from egress.proxy import POOL_IDLE_S
from gateway.config import LOCAL_POOL_IDLE_S, ProviderConfig
from gateway.config_load import parse

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass
class IdleClosing:
    """An OpenAI-compatible server on loopback keeping connections alive (HTTP/1.1), answering chat in
    OpenAI's recorded wire format: JSON with a Content-Length, a stream chunked."""

    idle_s: float
    url: str = ""
    connections: int = 0  # that carried a request (a proxy's health probe opens one and sends nothing)
    answered: int = 0
    dropped: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        idle_since, served = loop.time(), 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not served:
                    self.connections += 1
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:]
                                                                        if line)}
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                if loop.time() - idle_since > self.idle_s:  # the server's idle timer went off: closed, unanswered
                    self.dropped += 1
                    return
                writer.write(_answer(body))
                await writer.drain()
                self.answered, served, idle_since = self.answered + 1, served + 1, loop.time()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client closed the connection
        finally:
            writer.close()


def _answer(body: dict[str, Any]) -> bytes:
    if body.get("stream"):
        events = (WIRE / "sdk-stream-text-with-usage.sse").read_bytes()
        return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(events):x}\r\n".encode() + events + b"\r\n0\r\n\r\n")
    answer = json.loads((WIRE / "docs-chat-default.response.json").read_bytes())
    answer["model"] = body["model"]
    data = json.dumps(answer).encode()
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data)


Start = Callable[..., Awaitable[tuple[Gateway, IdleClosing]]]


@pytest.fixture
async def local_model(aiohttp_server: Any) -> AsyncIterator[Start]:
    """`await local_model(idle_s, timeouts={...}, proxy=url)`: a gateway with provider `local` (model
    `local/llama`) in front of an `IdleClosing` server, directly or through a proxy pool."""
    servers: list[asyncio.Server] = []
    made: list[Gateway] = []

    async def start(idle_s: float, timeouts: dict[str, Any] | None = None,
                    proxy: str | None = None) -> tuple[Gateway, IdleClosing]:
        up = IdleClosing(idle_s)
        server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
        servers.append(server)
        up.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        provider: dict[str, Any] = {"kind": "openai", "base_url": up.url, "timeouts": timeouts or {}}
        doc: dict[str, Any] = {"providers": {"local": provider}, "models": {"local/llama": {"upstream": "llama3.2"}}}
        if proxy is not None:
            doc["egress"] = {"pools": {"p": {"proxies": [{"name": "a", "url": proxy}],
                                             "health": {"interval_s": 60}}}}
            provider["egress"] = "p"
        gw = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), FakeOpenAI())
        made.append(gw)
        return gw, up

    yield start
    for gw in made:
        await gw.close()
    for server in servers:
        server.close()
        await server.wait_closed()


async def ask(gw: Gateway, stream: bool = False) -> str:
    client = gw.openai()
    if not stream:
        done = await client.chat.completions.create(model="local/llama", messages=MESSAGES)  # type: ignore[arg-type]
        return done.choices[0].message.content or ""
    chunks = await client.chat.completions.create(model="local/llama", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


@pytest.mark.parametrize(("route", "stream"), [("direct", False), ("direct", True), ("socks5", False)])
async def test_a_request_after_the_servers_idle_timeout_is_answered_not_lost(local_model: Start, route: str,
                                                                             stream: bool) -> None:
    """Two requests 1.4 s apart to a server that closes connections idle for 1.2 s (a gunicorn-run uvicorn
    closes at 2 s): the second went out on the pooled connection and was lost, a 502 upstream_disconnected.
    A local upstream's connections are now reused only within 1 s, so it gets a fresh one."""
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(Microsocks()) if route == "socks5" else None
        gw, up = await local_model(1.2, proxy=proxy.url if proxy else None)
        assert await ask(gw, stream)
        await asyncio.sleep(1.4)  # longer than the server's idle timeout, and than the gateway's reuse
        assert await ask(gw, stream)  # was openai.InternalServerError (502 upstream_disconnected)
        assert (up.answered, up.dropped, up.connections) == (2, 0, 2)  # a fresh connection (tunnel) for it


async def test_pool_idle_s_serves_an_upstream_closing_idle_connections_sooner(local_model: Start) -> None:
    """A server closing idle connections after 0.4 s is below the 1 s default: the operator sets less."""
    gw, up = await local_model(0.4, timeouts={"pool_idle_s": 0.2})
    for _ in range(2):
        assert await ask(gw)
        await asyncio.sleep(0.6)
    assert await ask(gw)
    assert (up.answered, up.dropped) == (3, 0)


async def test_pool_idle_s_zero_never_reuses_a_connection(local_model: Start) -> None:
    gw, up = await local_model(60, timeouts={"pool_idle_s": 0})
    for _ in range(3):
        assert await ask(gw)
    assert (up.answered, up.connections) == (3, 3)


async def test_a_connection_used_again_within_the_limit_is_still_reused(local_model: Start) -> None:
    """The limit closes idle connections only: back-to-back requests (and a provider set to the pool's longest,
    as cloud providers are by default, across a pause) share one connection, as before."""
    gw, up = await local_model(60)
    for _ in range(3):
        assert await ask(gw)
    assert up.connections == 1
    kept, up2 = await local_model(60, timeouts={"pool_idle_s": POOL_IDLE_S})
    assert await ask(kept)
    await asyncio.sleep(1.4)  # past the local default
    assert await ask(kept)
    assert (up2.answered, up2.connections) == (2, 1)


@pytest.mark.parametrize(("base_url", "idle_s"), [
    ("https://api.openai.com/v1", POOL_IDLE_S), ("https://api.anthropic.com", POOL_IDLE_S),
    ("https://openrouter.ai/api/v1", POOL_IDLE_S),
    ("http://vllm.example.com:8000/v1", LOCAL_POOL_IDLE_S),  # plain http: a server of one's own
    ("http://localhost:11434/v1", LOCAL_POOL_IDLE_S), ("https://127.0.0.1:8443/v1", LOCAL_POOL_IDLE_S),
    ("https://10.1.2.3/v1", LOCAL_POOL_IDLE_S), ("https://192.168.1.20:8080/v1", LOCAL_POOL_IDLE_S),
    ("https://100.64.1.2/v1", LOCAL_POOL_IDLE_S), ("https://[fd00::5]:8000/v1", LOCAL_POOL_IDLE_S),
    ("https://ollama:11434/v1", LOCAL_POOL_IDLE_S), ("https://gpu-box.local/v1", LOCAL_POOL_IDLE_S),
    ("https://host.docker.internal:8000/v1", LOCAL_POOL_IDLE_S),
])
def test_the_default_reuse_window_is_short_for_local_servers_only(base_url: str, idle_s: float) -> None:
    assert ProviderConfig(kind="openai", base_url=base_url).pool_idle_s == idle_s
    set_ = ProviderConfig(kind="openai", base_url=base_url, timeouts={"pool_idle_s": 3})  # type: ignore[arg-type]
    assert set_.pool_idle_s == 3


def test_pool_idle_s_beyond_the_pools_own_limit_is_refused() -> None:
    doc = {"providers": {"p": {"kind": "openai", "base_url": "https://api.openai.com/v1",
                               "timeouts": {"pool_idle_s": 60}}}}
    with pytest.raises(Exception, match=r"providers\.p\.timeouts\.pool_idle_s: must be a number <= 15"):
        parse(yaml.safe_dump(doc), {})


async def test_a_lost_request_is_still_not_resent(local_model: Start) -> None:
    """The fix avoids the race; it does not resend: a request the server drops on a connection it reused is
    still a 502 upstream_disconnected, sent once."""
    gw, up = await local_model(0.3, timeouts={"pool_idle_s": 5})
    assert await ask(gw)
    await asyncio.sleep(0.5)
    with pytest.raises(openai.InternalServerError) as info:
        await ask(gw)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_disconnected"  # type: ignore[index]
    assert (up.answered, up.dropped) == (1, 1)
