"""The HTTP edge: what a client gets for a request aiohttp's HTTP parser refuses before any handler runs
(OpenAI's JSON error, nothing of the request echoed back), and how long a request head may take.

Clients are raw sockets (asyncio streams): no client library sends these bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from harness import Gateway, GatewayProcess, closed_port, gateway_config_text, validate

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
            assert headers["content-type"].startswith("application/json")
        assert SECRET not in gw.stdout() + gw.stderr()
        assert "Traceback" not in gw.stderr()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)


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
