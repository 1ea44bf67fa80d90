"""Hostile HTTP framing (Content-Encoding, a stalled body, 405) answered in OpenAI's shape, nothing charged."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import aiohttp
import pytest
from harness import Gateway, validate

from gateway.state import RUNTIME

BALANCE = 10_000_000_000  # the harness key's


def chat(content: str) -> bytes:
    return json.dumps({"model": "fake/gpt-4o", "messages": [{"role": "user", "content": content}]}).encode()


async def post(gateway: Gateway, data: bytes, encoding: str, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {**gateway.auth(key), "Content-Type": "application/json", "Content-Encoding": encoding}
    async with aiohttp.ClientSession() as http, \
            http.post(gateway.url + "/v1/chat/completions", data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def untouched(gateway: Gateway) -> None:
    assert gateway.fake.requests == []
    record = await gateway.app[RUNTIME].store.get_key(gateway.key_id)
    assert record is not None and record.balance == BALANCE


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_body_counts_against_the_keys_cap(gateway: Gateway, encoding: str) -> None:
    """The key's max_body_bytes is the decompressed size's cap, not the compressed Content-Length's."""
    capped, _ = await gateway.add_key("capped", max_body_bytes=1000)
    raw = chat("x" * 5000)
    data = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    assert len(data) < 1000 < len(raw)
    status, payload = await post(gateway, data, encoding, capped)
    assert status == 413, payload
    assert payload["error"]["code"] == "request_too_large" and "1000" in payload["error"]["message"]
    assert gateway.fake.requests == []


async def test_a_compressed_body_just_past_the_server_limit_is_413(gateway: Gateway) -> None:
    raw = chat("x" * 65_600)  # > server.max_body_bytes (65536), < aiohttp's client_max_size (+1024)
    status, payload = await post(gateway, gzip.compress(raw), "gzip")
    assert status == 413, payload
    assert payload["error"]["code"] == "request_too_large"
    await untouched(gateway)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decompress_is_a_400(gateway: Gateway, encoding: str, log_lines: Any) -> None:
    status, payload = await post(gateway, b"this is not " + encoding.encode(), encoding)
    validate(payload, "ErrorResponse")
    assert status == 400, payload
    assert payload["error"]["type"] == "invalid_request_error"
    assert not [line for line in log_lines() if line.get("level") == "error"]
    await untouched(gateway)


async def test_a_405_names_the_allowed_methods(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http, \
            http.put(gateway.url + "/v1/chat/completions", headers=gateway.auth()) as r:
        assert r.status == 405
        validate(await r.json(), "ErrorResponse")
        assert r.headers.get("Allow") == "POST"  # RFC 9110 15.5.6: a 405 MUST carry Allow


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_a_body_that_stalls_is_refused_not_waited_for_forever(gateway: Gateway, monkeypatch: Any) -> None:
    """A client that declares 1000 bytes, sends 10 and goes silent holds its connection and buffer until it
    leaves: no timeout ends it. It should get a 408 once the body has been silent for a while."""
    from gateway import requests
    monkeypatch.setattr(requests, "BODY_IDLE_TIMEOUT_S", 0.5)
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.key}\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"model\":".encode())
    await writer.drain()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
    except TimeoutError:
        pytest.fail("no answer 5 s after the body went silent")
    finally:
        writer.close()
    assert status_line.split()[1] == b"408", status_line
    await untouched(gateway)


async def test_a_body_that_trickles_is_cut_at_its_total_deadline(make_gateway: Any) -> None:
    """A client that sends a byte of its body now and then, never silent for the idle timeout (60 s), held
    its connection and a growing buffer for as long as it liked: `server.body_timeout_s` bounds the whole
    body. The same 408 as a stall, and nothing held, charged or sent upstream."""
    gateway = await make_gateway(body_timeout_s=1.0)
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = chat("x" * 2000)
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())

    async def trickle() -> None:
        for i in range(len(body)):
            writer.write(body[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        payload = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
    except TimeoutError:
        pytest.fail("a body still trickling after 10 s was not cut off")
    finally:
        sender.cancel()
        writer.close()
    assert head.split()[1] == b"408", head
    validate(payload, "ErrorResponse")
    assert payload["error"]["code"] == "request_timeout" and "1 s" in payload["error"]["message"], payload
    await untouched(gateway)


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_the_body_deadline_must_be_a_positive_number(value: Any) -> None:
    from harness import gateway_config

    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"server\.body_timeout_s: must be a number"):
        gateway_config("http://127.0.0.1:9/v1", body_timeout_s=value)
