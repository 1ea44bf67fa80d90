"""Hostile HTTP framing (Content-Encoding, a stalled body, 405) answered in OpenAI's shape, nothing charged."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import zlib
from typing import Any

import aiohttp
import pytest
from harness import Gateway, trickle, validate

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


# --- a connection whose body was not read whole is closed with its refusal ----------------------------

LINGER_S = 10.0  # aiohttp's lingering time: how long it waited for the rest of a refused body, serving none


def raw_head(gateway: Gateway, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.key}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict[str, Any]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = head.decode("latin-1").removesuffix("\r\n\r\n").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), headers, json.loads(body)


async def ends_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), seconds) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:  # closed, though not as cleanly as it should be
        return True


BODY_NOT_READ_WHOLE = [
    pytest.param("stalled", 408, "request_timeout", id="stalled-408"),
    pytest.param("trickling", 408, "request_timeout", id="trickling-past-the-deadline-408"),
    pytest.param("declared-too-long", 413, "request_too_large", id="declared-length-over-the-limit-413"),
    pytest.param("chunked-too-long", 413, "request_too_large", id="chunked-body-past-the-limit-413"),
]


async def closed_for_good(writer: asyncio.StreamWriter, within_s: float) -> bool:
    """Whether the gateway's side of the connection is gone (not only its writing half): bytes sent to a
    closed socket are answered with a reset, which the next write finds."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + within_s
    while loop.time() < ends:
        try:
            writer.write(b" ")
            await writer.drain()
        except ConnectionError:  # EPIPE / ECONNRESET
            return True
        if writer.is_closing():  # asyncio closed its transport on the failed send
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.parametrize(("case", "status", "code"), BODY_NOT_READ_WHOLE)
async def test_a_refusal_before_the_body_was_read_whole_ends_the_connection_at_once(
        make_gateway: Any, monkeypatch: Any, case: str, status: int, code: str) -> None:
    """Such a connection cannot carry another request (the rest of its body would come first), yet aiohttp
    kept it open up to its lingering time, 10 s after the refusal, waiting for that rest: a stalled client's
    connection held for nothing. The refusal says `Connection: close`, the client reads the end right after
    it, and the gateway lets go of the connection once the client is silent."""
    from gateway import edge, requests
    monkeypatch.setattr(requests, "BODY_IDLE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(edge, "LINGER_IDLE_S", 0.3)
    gateway = await make_gateway(body_timeout_s=1.0)
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = chat("x" * 2000)
    sender = None
    if case == "stalled":
        writer.write(raw_head(gateway, 1000) + b'{"model":')
    elif case == "trickling":  # a byte every 0.1 s: never silent for 0.5 s, not whole after 1 s
        writer.write(raw_head(gateway, len(body)))
        sender = asyncio.create_task(trickle(writer, body, 0.1))
    elif case == "declared-too-long":
        writer.write(raw_head(gateway, 10_000_000) + body)
    else:  # chunked: past the 65536-byte limit, then silent (no last chunk)
        writer.write(raw_head(gateway, None) + b"%x\r\n" % 70_000 + b" " * 70_000 + b"\r\n")
    try:
        got, headers, payload = await answer(reader)
        assert (got, payload["error"]["code"]) == (status, code), payload
        validate(payload, "ErrorResponse")
        assert headers.get("connection") == "close", headers
        assert await ends_within(reader, 1.0), "the connection outlived its refusal"
        if sender is not None:
            sender.cancel()
        await asyncio.sleep(0.5)  # silent past LINGER_IDLE_S
        assert await closed_for_good(writer, LINGER_S / 4), "the gateway held the connection after its refusal"
    finally:
        if sender is not None:
            sender.cancel()
        writer.close()
    await untouched(gateway)


async def test_a_whole_body_over_the_limit_sent_at_once_still_gets_its_413(make_gateway: Any) -> None:
    """A client that writes its whole oversized body before it reads (as the SDKs do) is still sending when
    the 413 is decided: closing at once must not reset the connection before that client reads its 413."""
    gateway = await make_gateway()
    host, port = gateway.url.removeprefix("http://").split(":")
    for _ in range(5):
        reader, writer = await asyncio.open_connection(host, int(port))
        data = chat("x" * 1_000_000)
        try:
            writer.write(raw_head(gateway, len(data)) + data)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            got, _, payload = await answer(reader)
            assert (got, payload["error"]["code"]) == (413, "request_too_large"), payload
        finally:
            writer.close()
    await untouched(gateway)


@pytest.mark.parametrize("gateway", ["memory"], indirect=True)
async def test_a_keep_alive_client_keeps_its_connection_across_answers_and_refusals(gateway: Gateway) -> None:
    """Requests whose bodies were read whole keep the connection for the next one: a refusal (invalid JSON,
    a body over the limit read whole), a body that came in pieces, and a plain answer, all on one connection."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = chat("hi")
    try:
        writer.write(raw_head(gateway, 9) + b"not json!")
        got, headers, payload = await answer(reader)
        assert (got, payload["error"]["code"], headers.get("connection")) == (400, "invalid_json", None), payload
        writer.write(raw_head(gateway, len(body)) + body[:10])
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(body[10:])
        got, headers, payload = await answer(reader)
        assert (got, headers.get("connection")) == (200, None), payload
        assert payload["choices"][0]["message"]["content"]
        writer.write(raw_head(gateway, len(body)) + body)
        got, headers, _ = await answer(reader)
        assert (got, headers.get("connection")) == (200, None)
    finally:
        writer.close()
    assert len(gateway.fake.requests) == 2


# --- a body read in pieces reaches the upstream byte for byte ----------------------------------------

def _chunked(data: bytes, sizes: list[int]) -> bytes:
    """`data` as HTTP/1.1 chunks of `sizes` (cycled), then the last chunk."""
    out, at, i = bytearray(), 0, 0
    while at < len(data):
        piece = data[at:at + sizes[i % len(sizes)]]
        out += b"%x\r\n%s\r\n" % (len(piece), piece)
        at, i = at + len(piece), i + 1
    return bytes(out + b"0\r\n\r\n")


@pytest.mark.parametrize("framing", ["content-length", "chunked", "chunked-tiny", "gzip-chunked"])
async def test_a_body_that_arrives_in_pieces_reaches_the_upstream_whole(gateway: Gateway, framing: str) -> None:
    """The gateway keeps the pieces the parser hands over and joins them once (no readany, no growing buffer):
    whatever the framing and however the writes fall, the upstream gets every byte in order and no more."""
    text = "".join(f"line {i}: ünïcødé {'x' * (i % 97)}\n" for i in range(600))  # ~45 KB (the limit: 64 KB)
    data = chat(text)
    head = raw_head(gateway, len(data) if framing == "content-length" else None)
    if framing == "content-length":
        wire = data
    elif framing == "chunked":
        wire = _chunked(data, [20000, 1000, 7, 9000])
    elif framing == "chunked-tiny":
        wire = _chunked(data, [1, 2, 3, 5000, 100])
    else:
        head = head.replace(b"Content-Type: application/json\r\n", b"Content-Type: application/json\r\n"
                                                                   b"Content-Encoding: gzip\r\n")
        wire = _chunked(gzip.compress(data), [4096, 13])
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        for at in range(0, len(wire), 6000):  # separate writes with pauses: several reads on the server
            writer.write(wire[at:at + 6000])
            await writer.drain()
            await asyncio.sleep(0.01)
        status, _, payload = await answer(reader)
    finally:
        writer.close()
    assert status == 200, payload
    assert gateway.fake.last.body["messages"] == [{"role": "user", "content": text}]
