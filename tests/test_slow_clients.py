"""Clients that read slowly, hang up, or never finish: what the gateway keeps, frees and bills.

The clients here are raw sockets (a small receive buffer, reading stopped or closed at a chosen point);
the upstream is an endless OpenAI-format stream written as fast as the gateway takes it, counting what
it wrote, so a test sees whether the gateway keeps reading from it while the client reads nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from fakes.openai_upstream import FakeOpenAI
from harness import Gateway, gateway_config, start_gateway

from gateway import billing, metrics, sse
from gateway.app import create_app
from gateway.state import RUNTIME

CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-4o",
         "choices": [{"index": 0, "delta": {"content": " token"}, "logprobs": None, "finish_reason": None}]}
EVENT = b"data: " + orjson.dumps(CHUNK) + b"\n\n"


class Endless:
    """An upstream that streams content chunks for as long as its reader takes them."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.events_sent = 0
        self.closed = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        batch = EVENT * 64
        try:
            while True:
                await response.write(batch)
                self.bytes_sent += len(batch)
                self.events_sent += 64
                await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.closed.set()
        return response


async def endless_gateway(aiohttp_server: Any, store_url: str = "", **server: Any) -> tuple[Gateway, Endless]:
    upstream = Endless()
    up = await aiohttp_server(upstream.app())
    config = gateway_config(str(up.make_url("/v1")), store_url, prefix=f"t{uuid.uuid4().hex}:", **server)
    return await start_gateway(aiohttp_server, config, FakeOpenAI()), upstream


def request_bytes(gateway: Gateway, body: dict[str, Any], key: str | None = None) -> bytes:
    raw = json.dumps(body).encode()
    port = gateway.url.rsplit(":", 1)[1]
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key or gateway.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw


async def raw_client(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client socket with a small receive buffer and a small read-ahead: when it stops reading, the
    gateway's writes soon meet a full window."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = gateway.url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await asyncio.open_connection(sock=sock, limit=1024)


def active_streams() -> float:
    return float(metrics.ACTIVE_STREAMS._value.get())


MESSAGES = [{"role": "user", "content": "hi"}]


async def read_response_head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def test_a_stopped_reader_gets_backpressure_not_buffering(aiohttp_server: Any) -> None:
    """A client that reads nothing: the gateway stops reading the upstream once the client's socket is
    full (what the upstream could write stays within the kernel's socket buffers, a few MB), rather than
    buffering the endless answer."""
    gateway, upstream = await endless_gateway(aiohttp_server)
    reader, writer = await raw_client(gateway)
    writer.write(request_bytes(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}))
    await read_response_head(reader)
    await asyncio.sleep(1.0)
    plateau = upstream.bytes_sent
    await asyncio.sleep(1.0)
    assert upstream.bytes_sent == plateau and plateau < 32 * 1024 * 1024
    writer.close()
    await asyncio.wait_for(upstream.closed.wait(), 10)
    await gateway.close()


async def test_a_client_that_stops_reading_for_good_frees_its_stream(aiohttp_server: Any, log_lines: Any,
                                                                       monkeypatch: Any) -> None:
    """A client that keeps its connection open but reads nothing more (a suspended laptop, a wedged
    proxy): once nothing could be sent to it for `sse.SEND_STALL_S`, the gateway gives up on it as on a
    client that hung up: the upstream is closed, the stream gauge, the key's stream slot and the hold are
    freed, the request is logged 499 and billed for what was relayed, and the client's connection is
    closed (its body was cut: it must not be reused). Before, the relay waited for the client's window for
    ever, holding all of it."""
    monkeypatch.setattr(sse, "SEND_STALL_S", 1.0, raising=False)
    gateway, upstream = await endless_gateway(aiohttp_server)
    capped, capped_id = await gateway.add_key("capped", max_streams=1)
    body = {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}
    reader, writer = await raw_client(gateway)
    writer.write(request_bytes(gateway, body, capped))
    await read_response_head(reader)
    try:
        await asyncio.wait_for(upstream.closed.wait(), 10)  # the client never reads again
        assert active_streams() == 0
        # the client's connection was closed: reading what reached it ends, without the body's last chunk
        received = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                received += chunk
        assert not received.endswith(b"0\r\n\r\n")
        # the key's one stream slot is free again
        again, again_writer = await raw_client(gateway)
        again_writer.write(request_bytes(gateway, body, capped))
        assert (await read_response_head(again)).startswith(b"HTTP/1.1 200"), "the stream slot was never freed"
        again_writer.close()
    finally:
        writer.close()
    assert not [line for line in log_lines() if line.get("level") == "error"]
    lines = [line for line in log_lines() if line.get("event") == "request"]
    assert lines[0]["status"] == 499, lines[0]
    store = gateway.app[RUNTIME].store
    record = await store.get_generation(capped_id, lines[0]["generation_id"])
    assert record is not None and record["cancelled"] == "1" and record["estimated"] == "1"
    assert int(record["charged"]) > 0 and record["status"] == "499"
    await gateway.close()


async def settled_key(gateway: Gateway, key_id: str) -> Any:
    """The key once no hold of it is left (its streams' settlements run after the relay ends)."""
    store = gateway.app[RUNTIME].store
    for _ in range(100):
        key = await store.get_key(key_id)
        if key is not None and key.balance + key.usage == key.credits:
            return key
        await asyncio.sleep(0.05)
    raise AssertionError(f"a hold was never given back: {key}")


@pytest.fixture
async def production(fake_openai: tuple[FakeOpenAI, str]) -> AsyncIterator[Any]:
    """Start the gateway app as `serve` runs it: aiohttp's defaults, so a handler is NOT cancelled when its
    client hangs up (the test server cancels it, which hides what production does)."""
    runners: list[web.AppRunner] = []
    made: list[Gateway] = []

    async def make(**options: Any) -> Gateway:
        fake, upstream_url = fake_openai
        app = create_app(gateway_config(upstream_url, prefix=f"t{uuid.uuid4().hex}:", **options))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        gateway = Gateway(url=f"http://127.0.0.1:{port}", app=app, fake=fake)
        gateway.key, gateway.key_id = await gateway.add_key()
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.close()
    for runner in runners:
        await runner.cleanup()


async def test_a_client_gone_while_the_upstream_thinks_is_a_499_not_a_crash(production: Any, log_lines: Any) -> None:
    """A streamed request whose client hangs up before the upstream's headers came: once they come, the
    gateway's own headers meet a closed connection. That is the client's leaving (logged 499, its record
    cancelled, the upstream closed), not an unhandled error with a traceback and a 500 counted against the
    gateway (aiohttp's server does not cancel a handler whose client left; the test server does)."""
    gateway = await production()
    line = await hung_up_before_headers(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True},
                                        log_lines)
    await settled_key(gateway, gateway.key_id)
    record = await gateway.app[RUNTIME].store.get_generation(gateway.key_id, line["generation_id"])
    assert record is not None and record["status"] == "499" and record["cancelled"] == "1", record
    assert active_streams() == 0


async def hung_up_before_headers(gateway: Any, body: dict[str, Any], log_lines: Any) -> dict[str, Any]:
    """`body` sent by a client that hangs up while the upstream has not answered yet (1 s): the request's
    access line, after checking it says 499 and nothing was logged as an error."""
    gateway.fake.delay_before_headers_s = 1.0
    _reader, writer = await raw_client(gateway)
    writer.write(request_bytes(gateway, body))
    await asyncio.sleep(0.3)
    writer.close()
    lines = await request_logged(log_lines)
    assert not [line for line in lines if line.get("level") == "error"], lines
    [line] = [line for line in lines if line.get("event") == "request"]
    assert line["status"] == 499, line
    return line


async def request_logged(log_lines: Any, timeout_s: float = 5) -> list[dict[str, Any]]:
    """The log lines once the request's access line is among them."""
    for _ in range(int(timeout_s / 0.05)):
        lines: list[dict[str, Any]] = log_lines()
        if any(line.get("event") == "request" for line in lines):
            return lines
        await asyncio.sleep(0.05)
    raise AssertionError("the request was never logged")


async def test_a_client_gone_before_the_first_token_pays_for_its_prompt(production: Any, log_lines: Any) -> None:
    """The upstream accepted the request (200) and is working on the prompt (keep-alive comments go out
    meanwhile: a reasoning model may think for minutes); the client hangs up before any text came. The
    provider charges the operator for the prompt it read; the key is billed the estimate the README
    describes for a cut stream, "from the prompt and the text relayed", not nothing."""
    gateway = await production()
    gateway.fake.silence_s_before_first_chunk = 1.2
    body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "a long question " * 500}],
            "stream": True}
    reader, writer = await raw_client(gateway)
    writer.write(request_bytes(gateway, body))
    await asyncio.wait_for(reader.readuntil(b": keep-alive\n\n"), 5)
    writer.close()
    await asyncio.wait_for(gateway.fake.client_disconnected.wait(), 5)  # the upstream was closed
    [line] = [line for line in await request_logged(log_lines) if line.get("event") == "request"]
    assert line["status"] == 499, line
    key = await settled_key(gateway, gateway.key_id)
    record = await gateway.app[RUNTIME].store.get_generation(gateway.key_id, line["generation_id"])
    assert record is not None and record["cancelled"] == "1" and record["estimated"] == "1", record
    prompt = billing.estimate_prompt_tokens(body)
    assert int(record["tokens_prompt"]) == prompt and int(record["tokens_completion"]) == 0, record
    assert key.usage == int(record["charged"]) == prompt * 2_500  # fake/gpt-4o: $2.50 per million input tokens


async def test_an_answer_its_client_never_got_is_logged_499(production: Any, log_lines: Any) -> None:
    """A non-streamed request whose client hangs up while the upstream answers: the answer meets a closed
    connection. The access line (and the request metrics) say 499, as for a stream whose client left,
    not 200 for an answer nobody received."""
    gateway = await production()
    await hung_up_before_headers(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES}, log_lines)


async def test_streams_let_go_of_their_requests_when_they_end(production: Any) -> None:
    """A stream's stall watchdog (`sse.SEND_STALL_S`) ends with the stream. Left to run out, its timer held
    the request, body included, for up to a minute after every stream however short: a burst of short
    streams with large prompts (an image is a flat 1,600 tokens, whatever its bytes) kept a minute's worth of
    bodies, up to `server.max_body_bytes` each, in memory."""
    gateway = await production()
    body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "x" * 50_000}], "stream": True}
    async with aiohttp.ClientSession() as http:
        for i in range(20):
            async with http.post(gateway.url + "/v1/chat/completions", headers=gateway.auth(), json=body) as r:
                assert r.status == 200
                if i % 2:
                    await r.content.readline()  # abandoned after its first line
                else:
                    await r.read()
    await asyncio.sleep(0.3)  # the abandoned streams' relays find their clients gone
    gc.collect()
    held = [o for o in gc.get_objects() if isinstance(o, web.Request) and o.app is gateway.app]
    assert len(held) <= 2, f"{len(held)} requests of finished streams still in memory"
