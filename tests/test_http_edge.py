"""The HTTP edge: what a client gets for a request aiohttp's HTTP parser refuses before any handler runs
(OpenAI's JSON error, nothing of the request echoed back), how long a request head may take, the `Server`
header of every answer, `Expect` (an unmet expectation, a 100 Continue only for an accepted key) and the
HTTP versions served.

Clients are raw sockets (asyncio streams) where no client library sends these bytes, else the official SDKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import Gateway, GatewayProcess, closed_port, gateway_config_text, trickle, validate

from gateway import metrics

SECRET = "sk-edge-secret-0123456789abcdef"
S = SECRET.encode()
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"

MALFORMED = [
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + S + b"\x01\r\n\r\n",
                 "invalid_http", id="control-char-in-authorization"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX Provider Api Key: " + S + b"\r\n\r\n",
                 "invalid_http", id="space-in-header-name"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + S + b"\r\n\r\n", "invalid_http", id="no-colon"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Provider-Api-Key: " + S + b"\r\n folded\r\n\r\n",
                 "invalid_http", id="obs-fold"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer " + S + b"A" * 9000 + b"\r\n\r\n",
                 "headers_too_large", id="header-over-8190-bytes"),
    pytest.param(b"GET /v1/models/" + S + b"u" * 9000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n", "headers_too_large",
                 id="request-line-over-8190-bytes"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\nHost: gw\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200))
                 + b"\r\n", "headers_too_large", id="too-many-headers"),
    pytest.param(b"GARBAGE " + S + b"\r\n\r\n", "invalid_http", id="garbage-request-line"),
    pytest.param(b"G(T /v1/models HTTP/1.1\r\nHost: gw\r\n\r\n", "invalid_http", id="bad-method"),
    pytest.param(b"GET /v1/mo\x00dels HTTP/1.1\r\nHost: gw\r\n\r\n", "invalid_http", id="nul-in-path"),
    pytest.param(b"GET /v1/models HTTP/3.1\r\nHost: gw\r\n\r\n", "invalid_http", id="unknown-http-version"),
    pytest.param(b"GET /v1/models HTTP/1.1\nHost: gw\n\n", "invalid_http", id="bare-lf"),
    pytest.param(b"GET /v1/models HTTP/1.1\r\n\r\n", "invalid_http", id="no-host"),
    pytest.param(CHAT + b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n", "invalid_http",
                 id="bad-chunk-size"),
    pytest.param(CHAT + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nBad Trailer: " + S + b"\r\n\r\n",
                 "invalid_http", id="bad-trailer"),
    pytest.param(CHAT + b"Transfer-Encoding: gzip\r\n\r\n", "invalid_http", id="unsupported-transfer-encoding"),
    pytest.param(CHAT + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "invalid_http",
                 id="transfer-encoding-and-content-length"),
    pytest.param(CHAT + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "invalid_http", id="two-lengths"),
    pytest.param(CHAT + b"Content-Length: " + S + b"\r\n\r\n", "invalid_http", id="content-length-not-a-number"),
    pytest.param(CHAT + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", "invalid_body",
                 id="unsupported-content-encoding"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "invalid_http", id="http2-prior-knowledge"),
    pytest.param(bytes.fromhex("16030100a5010000a10303") + bytes(40), "invalid_http", id="tls-on-the-http-port"),
]


async def exchange(url: str, data: bytes) -> bytes:
    """`data` sent on a fresh connection; everything the gateway answers until it closes the connection."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)  # the connection is closed after such an answer
    finally:
        writer.close()


def parsed(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def malformed_requests() -> float:
    return float(metrics.child(metrics.REQUESTS, "unmatched", metrics.UNKNOWN, metrics.UNKNOWN, "4xx")._value.get())


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
@pytest.mark.parametrize(("data", "code"), MALFORMED)
async def test_what_the_http_parser_refuses_is_an_openai_error_that_echoes_nothing(
        gateway: Gateway, data: bytes, code: str, caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp answers these itself, before any handler: a plain-text 400 quoting the offending line (an
    Authorization header's value included) and an ERROR log record with a traceback for each. The client
    gets OpenAI's error shape with a code of ours, nothing of what it sent, and the connection is closed."""
    counted = malformed_requests()
    answer = await exchange(gateway.url, data)
    assert S not in answer and SECRET.lower().encode() not in answer.lower(), answer
    status, headers, payload = parsed(answer)
    assert status == 400, answer  # aiohttp's status for every request its parser refuses
    assert headers["content-type"].startswith("application/json"), headers
    assert headers["x-request-id"].startswith("req_"), headers
    validate(payload, "ErrorResponse")
    assert payload["error"]["type"] == "invalid_request_error" and payload["error"]["code"] == code, payload
    assert payload["error"]["message"] and payload["error"]["param"] is None
    assert gateway.fake.requests == []
    assert malformed_requests() == counted + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client's malformed request is no error"


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_the_refusal_says_what_was_wrong_in_its_own_words(gateway: Gateway, log_lines: Any) -> None:
    """The message names the problem (llhttp's fixed reason, our words for limits), and the log line says
    the same, without the request's bytes."""
    answer = await exchange(gateway.url, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
                            + S + b"\x01\r\n\r\n")
    _, headers, payload = parsed(answer)
    assert "invalid header value char" in payload["error"]["message"].lower(), payload
    _, _, payload = parsed(await exchange(gateway.url, b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-A: "
                                          + b"a" * 9000 + b"\r\n\r\n"))
    assert "8190 bytes" in payload["error"]["message"], payload
    _, _, payload = parsed(await exchange(gateway.url, bytes.fromhex("16030100a5010000a10303") + bytes(40)))
    assert "http://" in payload["error"]["message"], payload
    lines = [line for line in log_lines() if line.get("event") == "malformed request refused"]
    assert [line["error"] for line in lines] == ["invalid_http", "headers_too_large", "invalid_http"], lines
    assert lines[0]["request_id"] == headers["x-request-id"] and lines[0]["status"] == 400
    assert SECRET not in json.dumps(log_lines())


def test_the_override_checks_aiohttps_hook_at_import() -> None:
    """The answer above is built in a method of aiohttp's RequestHandler: a release that renamed it or
    changed its parameters would silently bring back the plain-text answers, so the import refuses to."""
    from gateway import edge

    class Reshaped:
        def handle_error(self, request: Any, status: int = 500) -> None: ...

    class WithoutLogger:  # the hook as it is, but the keyword argument that marks the gateway's listeners gone
        def __init__(self, manager: Any, *, keepalive_timeout: float = 75) -> None: ...

        def handle_error(self, request: Any, status: int = 500, exc: Any = None, message: Any = None) -> None: ...

    for owner in (Reshaped, WithoutLogger, object):
        with pytest.raises(ImportError, match="handle_error"):
            edge.check_hook(owner)


def test_the_expect_handler_and_the_version_pin_are_checked_at_import() -> None:
    """The routes' default `Expect` handler (a module function aiohttp's routes take when they are made) and
    the request's cached `version` (set for a 505's HTTP/1.1 status line) are aiohttp internals too: a
    release that moved either refuses to import, rather than bringing back the early 100 Continue or
    answering in a version the gateway does not speak."""
    import types

    from aiohttp import web

    from gateway import edge

    async def reshaped(request: Any, extra: Any) -> None: ...

    async def current(request: Any) -> None: ...

    for hook in (None, reshaped, lambda request: None):  # gone, other parameters, not a coroutine
        module = types.SimpleNamespace(__name__="m", _default_expect_handler=hook)
        with pytest.raises(ImportError, match="_default_expect_handler"):
            edge.check_expect_hook(module)
    edge.check_expect_hook(types.SimpleNamespace(__name__="m", _default_expect_handler=current))

    class PlainVersion(web.BaseRequest):
        version = property(lambda self: self._version)

    class Uncached:
        version = web.BaseRequest.__dict__["version"]

    for owner in (PlainVersion, Uncached):
        with pytest.raises(ImportError, match="version"):
            edge.check_version_pin(owner)
    edge.check_version_pin(web.BaseRequest)


@pytest.fixture
def serve_config(tmp_path: Path, fake_openai: tuple[Any, str]) -> tuple[Path, int]:
    metrics_port = closed_port()
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(fake_openai[1], metrics_listen=f"127.0.0.1:{metrics_port}"))
    return path, metrics_port


async def test_the_serving_process_answers_in_json_on_every_listener(serve_config: tuple[Path, int]) -> None:
    """`python -m gateway serve` (run_app, and the side listener of `metrics_listen`) answers as the app does."""
    path, metrics_port = serve_config
    with GatewayProcess(path) as gw:
        for url in (gw.url, f"http://127.0.0.1:{metrics_port}"):
            for _ in range(100):  # the side listener is bound during startup, after the main port
                with contextlib.suppress(ConnectionRefusedError):
                    answer = await exchange(url, b"GET /metrics HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer "
                                            + S + b"\x01\r\n\r\n")
                    break
                await asyncio.sleep(0.1)
            assert S not in answer, answer
            status, headers, payload = parsed(answer)
            assert (status, payload["error"]["code"]) == (400, "invalid_http"), answer
            assert headers["content-type"].startswith("application/json") and headers["server"] == SERVER
        for url, path in ((gw.url, b"/healthz"), (f"http://127.0.0.1:{metrics_port}", b"/metrics")):
            reader, writer = await connect(url)
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
            status_line, headers, _ = await read_answer(reader)
            writer.close()
            assert (status_line, headers["server"]) == ("HTTP/1.1 200 OK", SERVER), (url, path, headers)
        assert SECRET not in gw.stdout() + gw.stderr()
        assert "Traceback" not in gw.stderr()


@pytest.mark.parametrize("second", [False, True], ids=["first-request", "after-a-request"])
async def test_a_request_head_that_trickles_for_ever_is_cut_off(make_gateway: Any, monkeypatch: pytest.MonkeyPatch,
                                                               second: bool) -> None:
    """A client that sends its request line and headers a byte at a time and never finishes them is cut
    off after `edge.KEEPALIVE_S` (aiohttp's keep-alive timer, set by the gateway for every way of running
    its app, not only `run_app`'s default): no handler ever runs, so nothing else would end it."""
    from gateway import edge

    monkeypatch.setattr(edge, "KEEPALIVE_S", 1.0)
    gateway = await make_gateway()
    host, port = gateway.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    if second:  # a keep-alive connection that served one request first
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(16), 5)  # {"status": "ok"}
    sender = asyncio.create_task(trickle(writer, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 1000,
                                         0.05))
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, no answer
    except TimeoutError:
        pytest.fail("a head still arriving after 10 s held its connection")
    finally:
        sender.cancel()
        writer.close()


# --- the Server header, Expect, HTTP versions ----------------------------------------------------------

SERVER = "llm-edge-gateway"  # no version: nothing for a scanner to look up
CHAT_BODY = b'{"model": "fake/gpt-5", "messages": [{"role": "user", "content": "hi"}]}'


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """One answer off a connection that may stay open: its status line, headers (names lower-cased) and the
    body its Content-Length announces (a 100 Continue is an answer of its own, without either)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status_line, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway closes the connection now (nothing more comes, then the end)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except TimeoutError:
        return False


def expect_head(path: bytes, expect: bytes, length: int, key: str | None) -> bytes:
    auth = b"Authorization: Bearer " + key.encode() + b"\r\n" if key else b""
    return (b"POST " + path + b" HTTP/1.1\r\nHost: gw\r\n" + auth + b"Content-Type: application/json\r\n"
            + b"Content-Length: %d\r\nExpect: " % length + expect + b"\r\n\r\n")


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_every_answer_names_the_gateway_and_no_library_or_version(
        gateway: Gateway, fake_openai: tuple[Any, str]) -> None:
    """aiohttp's default `Server: Python/3.11 aiohttp/3.x` tells a scanner which releases' flaws to try. Every
    answer of the gateway's listeners names the gateway instead, without a version: JSON and SSE answers,
    the middleware's errors, 404/405, what the HTTP parser refuses, /metrics and /healthz. Another aiohttp
    server in the process (here the fake upstream) keeps aiohttp's own."""
    client = gateway.openai()
    messages: Any = [{"role": "user", "content": "hi"}]
    answers: dict[str, tuple[int, Any]] = {}
    raw = await client.chat.completions.with_raw_response.create(model="fake/gpt-5", messages=messages)
    answers["chat"] = raw.status_code, raw.headers
    async with client.chat.completions.with_streaming_response.create(model="fake/gpt-5", messages=messages,
                                                                      stream=True) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        answers["stream"] = stream.status_code, stream.headers
        assert [line async for line in stream.iter_lines() if line][-1] == "data: [DONE]"
    async with aiohttp.ClientSession() as session:
        for name, method, path, headers, status in (
                ("models", "GET", "/v1/models", gateway.auth(), 200),
                ("no key", "GET", "/v1/models", {}, 401),
                ("unknown path", "GET", "/nope", {}, 404),
                ("wrong method", "GET", "/v1/chat/completions", gateway.auth(), 405),
                ("metrics", "GET", "/metrics", {}, 200),
                ("healthz", "GET", "/healthz", {}, 200)):
            async with session.request(method, gateway.url + path, headers=headers) as resp:
                answers[name] = resp.status, resp.headers
                assert resp.status == status, (name, await resp.text())
        async with session.get(fake_openai[1] + "/models") as resp:
            assert "aiohttp/" in resp.headers["Server"], resp.headers
    answer = await exchange(gateway.url, b"GET /v1/models HTTP/1.1\r\n\r\n")  # no Host: the parser refuses it
    status, headers, _ = parsed(answer)
    answers["parser refusal"] = status, headers
    for name, (status, headers) in answers.items():
        assert headers.get("server") == SERVER, (name, status, headers)
    assert b"aiohttp" not in answer.lower() and b"python" not in answer.lower(), answer


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
@pytest.mark.parametrize("path", [b"/v1/chat/completions", b"/v1/messages", b"/nope"])
async def test_an_expectation_other_than_100_continue_is_a_json_417(gateway: Gateway, path: bytes,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """aiohttp's route answers an `Expect` it does not know with a plain-text 417 before any middleware runs.
    The gateway's 417 is an error of the path's API (Anthropic's shape on /v1/messages), quotes nothing of
    the header, and closes the connection, whose body was never read."""
    reader, writer = await connect(gateway.url)
    try:
        writer.write(expect_head(path, b"x-" + S, len(CHAT_BODY), gateway.key) + CHAT_BODY)
        status_line, headers, body = await read_answer(reader)
        assert status_line == "HTTP/1.1 417 Expectation Failed", (status_line, body)
        assert S not in body, body
        assert headers["content-type"].startswith("application/json") and headers["server"] == SERVER, headers
        assert headers["x-request-id"].startswith("req_"), headers
        payload = json.loads(body)
        if path == b"/v1/messages":
            assert payload["type"] == "error" and payload["request_id"] == headers["x-request-id"], payload
        else:
            validate(payload, "ErrorResponse")
        assert (payload["error"]["type"], payload["error"]["code"]) == ("invalid_request_error",
                                                                        "expectation_failed"), payload
        assert await closed(reader)
    finally:
        writer.close()
    assert gateway.fake.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a client's expectation is no error"


REFUSED_BEFORE_THE_BODY = [
    pytest.param(None, len(CHAT_BODY), 401, "invalid_api_key", id="no-key"),
    pytest.param("sk-gw-not-a-key-0123456789", len(CHAT_BODY), 401, "invalid_api_key", id="unknown-key"),
    pytest.param("", 65537, 413, "request_too_large", id="declared-length-over-the-limit"),
]


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
@pytest.mark.parametrize(("key", "length", "status", "code"), REFUSED_BEFORE_THE_BODY)
async def test_no_100_continue_before_the_key_and_the_length_are_accepted(
        gateway: Gateway, key: str | None, length: int, status: int, code: str) -> None:
    """aiohttp writes `100 Continue` before any middleware runs, telling a client without a valid key to send
    its body (curl asks for one before a large body). The gateway answers the refusal instead, without a 100,
    and says it closes the connection (a client may still send the body it was not asked for, as curl does
    when no answer came within a second): what follows on it is discarded, never served as a request."""
    reader, writer = await connect(gateway.url)
    try:
        writer.write(expect_head(b"/v1/chat/completions", b"100-continue", length,
                                 gateway.key if key == "" else key))
        status_line, headers, body = await read_answer(reader)
        assert status_line.split()[1] == str(status), (status_line, body)
        assert json.loads(body)["error"]["code"] == code, body
        assert headers.get("connection") == "close" and headers["server"] == SERVER, headers
        writer.write(b" " * length + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")  # the body anyway, a request
        assert await closed(reader)
    finally:
        writer.close()
    assert gateway.fake.requests == []


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_an_accepted_key_gets_100_continue_then_its_answer_on_a_connection_that_stays_open(
        gateway: Gateway) -> None:
    """A valid key and a body within the limit: 100 Continue, the body, the answer; the connection serves the
    next request as any keep-alive connection does."""
    reader, writer = await connect(gateway.url)
    try:
        writer.write(expect_head(b"/v1/chat/completions", b"100-Continue", len(CHAT_BODY), gateway.key))
        assert await read_answer(reader) == ("HTTP/1.1 100 Continue", {}, b"")
        writer.write(CHAT_BODY)
        status_line, headers, body = await read_answer(reader)
        assert status_line == "HTTP/1.1 200 OK", (status_line, body)
        assert json.loads(body)["choices"][0]["message"]["content"], body
        assert "connection" not in headers, headers
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert (await read_answer(reader))[0] == "HTTP/1.1 200 OK"
    finally:
        writer.close()
    assert len(gateway.fake.requests) == 1


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_a_client_library_that_waits_for_100_continue_is_served_or_refused(gateway: Gateway) -> None:
    """aiohttp's own client with `expect100=True` sends the head and waits for the 100 before the body: the
    100 deferred to the handler's read reaches it (no deadlock), and a refusal ends its wait."""
    url, headers = gateway.url + "/v1/chat/completions", {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(url, data=CHAT_BODY, headers={**headers, **gateway.auth()}, expect100=True) as resp:
            assert resp.status == 200 and (await resp.json())["choices"], await resp.text()
        async with session.post(url, data=CHAT_BODY, headers={**headers, **gateway.auth("sk-gw-not-a-key")},
                                expect100=True) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == "invalid_api_key"
    assert len(gateway.fake.requests) == 1


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
@pytest.mark.parametrize(("path", "anthropic"), [(b"/healthz", False), (b"/v1/models", False),
                                                 (b"/v1/messages", True)], ids=["healthz", "models", "messages"])
async def test_an_http_version_other_than_1_0_and_1_1_gets_505_and_the_connection_closed(
        gateway: Gateway, version: bytes, path: bytes, anthropic: bool) -> None:
    """aiohttp's parser lets `HTTP/2.0` and `HTTP/0.9` request lines through, and aiohttp served them,
    answering in the version it was sent. The gateway answers 505 as HTTP/1.1 (it speaks no other), in the
    path's API's error shape, before the key is checked, and closes the connection."""
    reader, writer = await connect(gateway.url)
    try:
        writer.write(b"GET " + path + b" " + version + b"\r\nHost: gw\r\nAuthorization: Bearer "
                     + gateway.key.encode() + b"\r\n\r\n")
        status_line, headers, body = await read_answer(reader)
        assert status_line == "HTTP/1.1 505 HTTP Version Not Supported", (status_line, body)
        assert headers["content-type"].startswith("application/json") and headers["server"] == SERVER, headers
        assert headers.get("connection") == "close" and headers.get("x-should-retry") == "false", headers
        payload = json.loads(body)
        assert payload["type"] == "error" if anthropic else validate(payload, "ErrorResponse") is None
        assert (payload["error"]["type"], payload["error"]["code"]) == ("invalid_request_error",
                                                                        "http_version_not_supported"), payload
        assert await closed(reader)
    finally:
        writer.close()


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
async def test_http_1_0_and_1_1_are_served(gateway: Gateway, version: bytes) -> None:
    reader, writer = await connect(gateway.url)
    try:
        writer.write(b"GET /v1/models " + version + b"\r\nHost: gw\r\nAuthorization: Bearer "
                     + gateway.key.encode() + b"\r\nConnection: close\r\n\r\n")
        status_line, _, body = await read_answer(reader)
        assert status_line == version.decode() + " 200 OK", (status_line, body)
        assert json.loads(body)["object"] == "list"
    finally:
        writer.close()


async def test_a_client_gone_before_its_100_continue_is_a_499_not_a_gateway_failure() -> None:
    """A client that closes its connection while it waits for its 100 Continue made the write raise a
    ConnectionError, which reached the middleware as an unhandled error: a traceback at ERROR in the log, an
    alert for the operator, for a client that simply left. It is the client's 499."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from gateway.edge import send_continue
    from gateway.errors import GatewayError

    writer = mock.Mock()
    writer.write = mock.AsyncMock(side_effect=ConnectionResetError("Cannot write to closing transport"))
    request = make_mocked_request("POST", "/v1/chat/completions", headers={"Expect": "100-continue"},
                                  writer=writer)
    with pytest.raises(GatewayError) as info:
        await send_continue(request)
    assert (info.value.status, info.value.code) == (499, "client_closed_request")
    assert isinstance(info.value.__cause__, ConnectionResetError)
