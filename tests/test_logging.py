"""One JSON line per request with the fields operators query, and no secret in any line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from harness import PROVIDER_KEY, Gateway

from gateway.logging import _SECRET_NAMES as SECRET_NAMES
from gateway.logging import REDACTED, Redactor, get_logger, set_level, sink

MESSAGES = [{"role": "user", "content": "hi"}]
Lines = Callable[[], list[dict[str, Any]]]


async def test_one_line_per_request_with_its_fields(gateway: Gateway, log_lines: Lines) -> None:
    client = gateway.openai()
    await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    async for _ in stream:
        pass
    requests = [line for line in log_lines() if line["event"] == "request"]
    assert len(requests) == 2
    plain, streamed = requests
    for line, is_stream in ((plain, False), (streamed, True)):
        assert line["status"] == 200
        assert line["key_id"] == gateway.key_id
        assert line["model"] == "fake/gpt-4o" and line["provider"] == "fake"
        assert line["streamed"] is is_stream
        assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
        assert isinstance(line["latency_ms"], float)
        assert line["request_id"].startswith("req_")
        assert line["level"] == "info" and "timestamp" in line


async def test_no_secret_reaches_the_log(gateway: Gateway, log_lines: Lines) -> None:
    byok = "sk-clientbyok-1234567890abcdef"
    # the upstream's error text quotes both the configured key and the client's key
    gateway.fake.status = 400
    gateway.fake.error_body = {"error": {"message": f"keys {PROVIDER_KEY} and {byok} are not valid here",
                                         "type": "invalid_request_error", "param": None, "code": None}}
    async with aiohttp.ClientSession() as http:
        for extra in ({}, {"provider_api_key": byok}):
            body = {"model": "fake/gpt-4o", "messages": MESSAGES, **extra}
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth()) as r:
                assert r.status == 400
                assert PROVIDER_KEY not in await r.text()
        async with http.get(gateway.url + "/v1/models", headers=gateway.auth("gw-" + "A" * 38)) as r:
            assert r.status == 401
    text = json.dumps(log_lines())
    assert "upstream refused" in text  # the line that carried the upstream's message was written
    for secret in (PROVIDER_KEY, byok, gateway.key, "gw-" + "A" * 38):
        assert secret not in text
    assert REDACTED in text


@pytest.mark.parametrize(("text", "secret"), [
    pytest.param("Authorization: Bearer gw-abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnop", id="bearer"),
    pytest.param("key=gw-abcdefghijklmnopqrstuvwxyz0123456789", "abcdefghijklmnop", id="gateway-key"),
    pytest.param("sk-proj-abcdefghijklmnop1234", "abcdefghijklmnop1234", id="openai-key"),
    pytest.param("socks5h://user:hunter2pass@203.0.113.10:1080", "hunter2pass", id="proxy-password"),
    pytest.param("AIzaSyA1234567890abcdefghijklmnopqrs", "1234567890abcdefghij", id="google-key"),
    pytest.param("the configured value s3cr3t-value appears", "s3cr3t-value", id="known-secret"),
])
def test_redactor_patterns(text: str, secret: str) -> None:
    redactor = Redactor()
    redactor.update(["s3cr3t-value"])
    scrubbed = redactor(None, "info", {"event": text, "nested": {"list": [text]}})
    assert secret not in json.dumps(scrubbed)
    assert REDACTED in scrubbed["event"]


def test_redactor_masks_secret_named_fields() -> None:
    scrubbed = Redactor()(None, "info", {"event": "x", "headers": {"Authorization": "anything", "x-api-key": "k"},
                                         "api_key": "plain"})
    assert scrubbed["headers"] == {"Authorization": REDACTED, "x-api-key": REDACTED}
    assert scrubbed["api_key"] == REDACTED


@pytest.mark.parametrize("event", [
    pytest.param({"event": "x", "nested": {"deep": ["Bearer abcdefgh12345678"]}}, id="pattern-deep"),
    pytest.param({"event": "x", "headers": {"X-Api-Key": "whatever-value"}}, id="secret-named-field"),
    pytest.param({"event": "x", "err": ValueError("known s3cr3t-value inside a repr")}, id="inside-repr"),
    pytest.param({"event": "x", "raw": 'quote"d-s3cr3t'}, id="json-escaped-known-secret"),
])
def test_rendered_lines_hold_no_secret(event: dict[str, Any]) -> None:
    redactor = Redactor()
    redactor.update(["s3cr3t-value", 'quote"d-s3cr3t'])
    line = redactor.render(None, "info", event).decode()
    parsed = json.loads(line)
    assert parsed["event"] == "x"
    for secret in ("abcdefgh12345678", "whatever-value", "s3cr3t-value", "s3cr3t"):
        assert secret not in line
    assert REDACTED in line


@pytest.mark.parametrize("name", sorted(SECRET_NAMES))
def test_every_secret_named_field_is_masked_in_a_rendered_line(name: str) -> None:
    """The line's check looks for fewer needles than there are names (`"admin_token":` is caught by
    `token":`): each name, at the top and nested, in any case, still gets its value masked."""
    redactor = Redactor()
    for field in (name, name.upper(), name.title()):
        event = {"event": "x", field: "plain-value-0001", "nested": {field: "plain-value-0002"}}
        line = redactor.render(None, "info", event).decode()
        assert "plain-value" not in line, line
        assert json.loads(line)[field] == REDACTED


@pytest.mark.parametrize("name", ["secret", "client_secret", "Client-Secret", "webhook_secret", "x-api-secret",
                                  "secret_key", "aws_secret_access_key", "password", "proxy_password", "DB_PASSWORD",
                                  "passwd", "redis_passwd"])
def test_secret_and_password_like_fields_are_masked_in_a_rendered_line(name: str) -> None:
    """Names holding `secret` or `passw` anywhere (an OAuth client's `client_secret`, `proxy_password`) are
    secret-named as much as `api_key`: masked at the top and nested, in any case, like the listed names."""
    redactor = Redactor()
    for field in (name, name.upper(), name.lower()):
        event = {"event": "x", field: "plain-value-0001", "nested": {"deeper": [{field: "plain-value-0002"}]}}
        line = redactor.render(None, "info", event).decode()
        assert "plain-value" not in line, line
        parsed = json.loads(line)
        assert parsed[field] == REDACTED and parsed["nested"]["deeper"][0][field] == REDACTED


def test_a_line_without_secrets_is_rendered_unchanged() -> None:
    redactor = Redactor()
    redactor.update(["s3cr3t-value"])
    event = {"event": "request", "path": "/v1/chat/completions", "status": 200, "latency_ms": 1.25,
             "model": "openai/gpt-4o", "key_id": "key_abc", "streamed": False}
    assert json.loads(redactor.render(None, "info", event)) == event


class _Writes:
    """A sink target that remembers each write(2) it would have cost, and what it was asked to flush."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.unflushed = 0

    def write(self, data: bytes) -> int:
        self.writes.append(bytes(data))
        self.unflushed += 1
        return len(data)

    def flush(self) -> None:
        self.unflushed = 0


async def test_batched_info_lines_leave_together_and_a_warning_keeps_their_order() -> None:
    import asyncio

    from gateway.logging import Sink, _LineLogger

    target = _Writes()
    out = Sink(target)  # type: ignore[arg-type]
    line = _LineLogger(out)
    out.batch(asyncio.get_running_loop(), 0.05)
    for i in range(3):
        line.info(b'{"n":%d}' % i)
    assert target.writes == []  # waiting for the batch
    await asyncio.sleep(0.1)
    assert target.writes == [b'{"n":0}\n{"n":1}\n{"n":2}\n']  # one write for all three
    assert target.unflushed == 0  # and flushed: a buffered stdout must not hold lines back
    line.info(b'{"n":3}')
    line.warning(b'{"w":1}')  # at once, after the line that waited before it
    assert target.writes[1:] == [b'{"n":3}\n', b'{"w":1}\n']
    line.info(b'{"n":4}')
    out.unbatch()  # shutdown: nothing is left behind
    assert target.writes[-1] == b'{"n":4}\n'
    line.info(b'{"n":5}')  # unbatched: written at once
    assert target.writes[-1] == b'{"n":5}\n'
    await asyncio.sleep(0.1)
    assert len(target.writes) == 5


def test_a_logger_in_use_obeys_a_new_level(log_lines: Lines) -> None:
    """structlog caches a logger at first use; the level (a reload's server.log_level) must still apply."""
    log = get_logger("test.levels")
    try:
        log.debug("before")  # first use: cached at the session's debug level
        set_level("warning")
        log.info("hidden")
        log.warning("shown")
        set_level("info")
        log.debug("hidden too")
        log.info("shown too")
    finally:
        set_level("debug")  # the session's level (conftest)
    sink.flush()
    assert [e["event"] for e in log_lines() if e.get("event") != "request"] == ["before", "shown", "shown too"]


async def test_lines_inside_a_request_carry_its_request_id(gateway: Gateway, log_lines: Lines) -> None:
    """A warning logged while a request is served names that request; the id does not outlive it, though
    a keep-alive connection serves its next request in the same task."""
    gateway.fake.status = 400
    gateway.fake.error_body = {"error": {"message": "no", "type": "invalid_request_error", "param": None,
                                         "code": None}}
    async with aiohttp.ClientSession() as http:  # one keep-alive connection for both requests
        for rid in ("first-request", "second-request"):
            headers = {**gateway.auth(), "X-Request-Id": rid}
            async with http.post(gateway.url + "/v1/chat/completions", headers=headers,
                                 json={"model": "fake/gpt-4o", "messages": MESSAGES}) as r:
                assert r.status == 400
    refused = [line for line in log_lines() if line["event"] == "upstream refused"]
    assert [line.get("request_id") for line in refused] == ["first-request", "second-request"]
    get_logger("test").warning("outside")  # outside any request
    outside = [line for line in log_lines() if line["event"] == "outside"]
    assert len(outside) == 1 and "request_id" not in outside[0]
