"""Secret audit: a representative mix of traffic with debug logging on, then every place a secret could land
is searched for every secret used — gateway keys, the provider key, BYOK keys, the proxy password, the admin
token. Zero hits.

Searched: the gateway's JSON log lines, every stdlib log record (aiohttp's own, at DEBUG), /metrics, every
response body and header the clients got, the usage export and key listing (the real CLI), and a Redis
dump (SAVE with compression off, so no secret hides inside an LZF block) plus every value under the prefix.

The traffic: chats direct and through an authenticated SOCKS proxy, streamed and not; BYOK in the body and
in the header; upstream errors that quote the provider key and the BYOK key back, before and inside a
stream; the operator's key refused upstream; failing auth with unknown, mistyped and foreign keys; admin
calls with the right token and with a client key; a request whose header line is malformed and carries a
key (aiohttp's parser quotes the line in its exception); the proxy going down under a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import redis.asyncio as aioredis
import yaml
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as fake_app
from harness import PROVIDER_KEY, Gateway, run_cli, start_gateway
from proxies import Microsocks
from redis_server import RedisServer

from gateway import keys
from gateway.config_load import parse
from gateway.logging import sink

ADMIN = "adm1n-t0ken-for-the-audit-000000000"
PROXY_PASSWORD = "pr0xy-pa55-for-the-audit"
BYOK_BODY = "sk-byok-in-the-body-00000000001"
BYOK_HEADER = "byok-header-key-without-a-known-prefix-0002"
MESSAGES = [{"role": "user", "content": "hi"}]


class Traffic:
    """Drives requests and keeps everything the clients received, for the search."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.received: list[str] = []
        self.excluded: list[str] = []  # the one answer that must show a secret: the admin's new key

    async def call(self, method: str, path: str, token: str | None = None, body: Any = None,
                   headers: dict[str, str] | None = None, keep: bool = True) -> tuple[int, str]:
        hdrs = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
        async with aiohttp.ClientSession() as http, http.request(method, self.gw.url + path, json=body,
                                                                 headers=hdrs) as r:
            text = await r.text()
            (self.received if keep else self.excluded).append(f"{r.status} {dict(r.headers)} {text}")
            return r.status, text

    async def chat(self, token: str, model: str = "fake/gpt-4o", **fields: Any) -> tuple[int, str]:
        headers = fields.pop("headers", None)
        return await self.call("POST", "/v1/chat/completions", token,
                               {"model": model, "messages": MESSAGES, **fields}, headers)

    async def raw(self, header_line: bytes) -> None:
        host, port = self.gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + header_line + b"\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
        self.received.append(answer.decode("latin-1"))  # gateway.edge's answer: nothing of the line comes back


def _config(upstream: str, proxy: Microsocks, redis_url: str, prefix: str) -> str:
    doc = {
        "server": {"admin_token": ADMIN, "log_level": "debug", "max_body_bytes": 65536},
        "store": {"url": redis_url, "prefix": prefix},
        "retries": {"max_retries": 0},
        "egress": {"pools": {"p": {"proxies": [{"name": "p1", "url": proxy.url_for("socks5h")}],
                                   "health": {"interval_s": 30, "timeout_s": 1}}}},
        "providers": {
            "fake": {"kind": "openai", "base_url": upstream, "api_key": PROVIDER_KEY},
            "proxied": {"kind": "openai", "base_url": upstream, "api_key": PROVIDER_KEY, "egress": "p",
                        "timeouts": {"connect_s": 1, "first_byte_s": 5, "between_chunks_s": 5}},
        },
        "models": {"fake/gpt-4o": {"price": {"input_per_mtok": 1, "output_per_mtok": 2}},
                   "proxied/gpt-4o": {"upstream": "gpt-4o", "price": {"input_per_mtok": 1, "output_per_mtok": 2}}},
    }
    return yaml.safe_dump(doc)


def _forms(secret: str) -> set[str]:
    """A secret as it could be written: plain, URL-encoded, and a gateway key's random part on its own."""
    forms = {secret, quote(secret, safe="")}
    if keys.is_well_formed(secret):
        forms.add(secret[len(keys.PREFIX):len(keys.PREFIX) + keys.RANDOM_LEN])
    return forms


def _hits(text: str, secrets: list[str]) -> list[str]:
    return sorted({s for s in secrets for form in _forms(s) if form in text})


async def _drive(t: Traffic, gw: Gateway, fake: FakeOpenAI, proxy: Microsocks) -> list[str]:
    """The traffic; returns the gateway keys it made (all of them are secrets)."""
    key = gw.key
    assert (await t.chat(key))[0] == 200
    assert (await t.chat(key, stream=True, stream_options={"include_usage": True}))[0] == 200
    assert (await t.chat(key, "proxied/gpt-4o"))[0] == 200
    assert (await t.chat(key, provider_api_key=BYOK_BODY))[0] == 200
    assert fake.last.headers["Authorization"] == f"Bearer {BYOK_BODY}"
    assert (await t.chat(key, "proxied/gpt-4o", headers={"X-Provider-Api-Key": BYOK_HEADER}))[0] == 200
    assert fake.last.headers["Authorization"] == f"Bearer {BYOK_HEADER}"
    assert proxy.tunnels() >= 1

    fake.status = 400  # upstream errors that quote the key they were called with back (xAI's 400 for a bad
    # key: the operator's key refused is the operator's 502, a client's own is its 400)
    for model, used, extra, status in (
            ("fake/gpt-4o", PROVIDER_KEY, {}, 502),
            ("fake/gpt-4o", BYOK_BODY, {"provider_api_key": BYOK_BODY, "stream": True}, 400),
            ("proxied/gpt-4o", BYOK_HEADER, {"headers": {"X-Provider-Api-Key": BYOK_HEADER}}, 400)):
        fake.error_body = {"error": {"message": f"Incorrect API key provided: {used}.",
                                     "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        assert (await t.chat(key, model, **extra))[0] == status
    fake.status = 401  # the operator's key refused upstream: 502
    fake.error_body = {"error": {"message": f"Incorrect API key provided: {PROVIDER_KEY}.",
                                 "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
    assert (await t.chat(key))[0] == 502
    fake.status, fake.error_body = 200, None
    fake.close_mid_stream_after = 3  # broken inside a stream: an error event
    assert (await t.chat(key, stream=True, provider_api_key=BYOK_BODY))[0] == 200
    fake.close_mid_stream_after = None

    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    for bad in (keys.generate(), typo, PROVIDER_KEY, ADMIN, BYOK_BODY):
        assert (await t.chat(bad))[0] == 401
    assert (await t.call("GET", "/admin/keys", key))[0] == 401  # a client key on the admin API
    assert (await t.chat(key, provider_api_key=BYOK_BODY + "\r\nX-Evil: 1"))[0] == 400

    status, created = await t.call("POST", "/admin/keys", ADMIN, {"name": "second", "balance": 5}, keep=False)
    assert status == 201
    second = json.loads(created)["key"]
    assert (await t.call("GET", "/admin/keys", ADMIN))[0] == 200
    assert (await t.call("GET", "/admin/egress", ADMIN))[0] == 200
    status, text = await t.chat(second)
    assert status == 200
    gen_id = json.loads(text)["id"]
    assert (await t.call("GET", f"/v1/generation?id={gen_id}", second))[0] == 200
    assert (await t.call("GET", f"/v1/generation?id={gen_id}", key))[0] == 404  # not key A's to read
    assert (await t.call("GET", "/v1/credits", second))[0] == 200
    assert (await t.call("GET", "/v1/models", second))[0] == 200

    await t.raw(f"Authorization: Bearer {second}\x01".encode())
    await t.raw(f"X-Provider-Api-Key: {BYOK_HEADER}\x01".encode())

    await proxy.astop()  # the proxy dies under a request: the error names the pool, never the URL
    status, _ = await t.chat(key, "proxied/gpt-4o")
    assert status in (502, 503)
    assert (await t.call("GET", "/metrics"))[0] == 200
    return [key, second]


async def _redis_dump(server: RedisServer, prefix: str) -> str:
    """Everything Redis holds: an uncompressed RDB file and each value under our prefix, as text."""
    client = aioredis.from_url(server.url)
    try:
        await client.config_set("rdbcompression", "no")
        await client.save()
        parts = [(server.dir / "dump.rdb").read_bytes().decode("latin-1")]
        async for name in client.scan_iter(match=f"{prefix}*"):
            kind = (await client.type(name)).decode()
            value: Any = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
                          "zset": lambda n: client.zrange(n, 0, -1, withscores=True),
                          "list": lambda n: client.lrange(n, 0, -1),
                          "stream": lambda n: client.xrange(n)}[kind](name)
            parts.append(f"{name!r} {await value!r}")
        assert len(parts) > 5, "the dump should hold the keys, holds, generations and audit streams"
        return "\n".join(parts)
    finally:
        await client.aclose()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_no_secret_reaches_logs_metrics_errors_exports_or_redis(
        aiohttp_server: Any, redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log_buffer = __import__("io").BytesIO()
    previous, sink.target = sink.target, log_buffer
    prefix = f"audit{uuid.uuid4().hex[:8]}:"
    fake = FakeOpenAI()
    upstream = str((await aiohttp_server(fake_app(fake))).make_url("/v1"))
    with Microsocks(user="u", password=PROXY_PASSWORD) as proxy:
        config_path = tmp_path / "gateway.yaml"
        config_path.write_text(_config(upstream, proxy, redis_server.url, prefix))
        gw = await start_gateway(aiohttp_server, parse(config_path.read_text(), {}), fake)
        traffic = Traffic(gw)
        try:
            gateway_keys = await _drive(traffic, gw, fake, proxy)
        finally:
            sink.target = previous
            await gw.close()
    export_jsonl = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config_path))
    export_csv = await asyncio.to_thread(run_cli, "usage", "export", "--config", str(config_path), "--format", "csv")
    listing = await asyncio.to_thread(run_cli, "keys", "list", "--config", str(config_path), "--json")
    assert export_jsonl.returncode == 0 and export_jsonl.stdout.count("\n") >= 5, export_jsonl.stderr
    assert export_csv.returncode == 0 and listing.returncode == 0

    secrets = [*gateway_keys, PROVIDER_KEY, BYOK_BODY, BYOK_HEADER, PROXY_PASSWORD, ADMIN]
    places = {
        "gateway log": log_buffer.getvalue().decode(errors="replace"),
        "stdlib logs (aiohttp, asyncio)": caplog.text,
        "responses to clients": "\n".join(traffic.received),
        "usage export": export_jsonl.stdout + export_jsonl.stderr + export_csv.stdout + export_csv.stderr,
        "keys list": listing.stdout + listing.stderr,
        "redis": await _redis_dump(redis_server, prefix),
    }
    assert "gateway_requests_total" in places["responses to clients"]  # /metrics was read
    assert "malformed request refused" in places["gateway log"]  # the parser's refusals were logged
    assert "upstream refused" in places["gateway log"]  # the line carrying the upstream's text was written
    leaks = {place: _hits(text, secrets) for place, text in places.items()}
    assert leaks == {place: [] for place in places}
    assert gateway_keys[1] in "\n".join(traffic.excluded)  # the one place it belongs: its creation answer


def test_a_protected_key_is_redacted_within_its_request_only() -> None:
    """aiohttp runs each request in its own task (its own context): a BYOK key protected there is
    redacted from that request's lines and forgotten with it, so the list never grows across requests."""
    import contextvars

    from gateway.logging import REDACTED, redactor

    def request() -> tuple[str, bytes]:
        redactor.protect("plain-byok-key-42")
        line = redactor.render(None, "info", {"event": "x", "detail": 'quote "plain-byok-key-42"'})
        return redactor.scrub("upstream said: plain-byok-key-42 is invalid"), line

    said, line = contextvars.copy_context().run(request)
    assert said == f"upstream said: {REDACTED} is invalid"
    assert b"plain-byok-key-42" not in line
    assert redactor.scrub("later: plain-byok-key-42") == "later: plain-byok-key-42"  # another request's context


@pytest.mark.parametrize("line", [
    "b'Authorization: Bearer token-with-no-known-prefix\\x01'",
    "b'X-Provider-Api-Key: token-with-no-known-prefix\\x00'",
    "x-goog-api-key:token-with-no-known-prefix",
])
def test_raw_header_lines_are_redacted(line: str) -> None:
    from gateway.logging import redactor

    assert "token-with-no-known-prefix" not in redactor.scrub(line)
