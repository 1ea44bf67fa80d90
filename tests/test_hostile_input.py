"""Hostile and malformed requests: each a 4xx in OpenAI's shape with a message naming the problem, nothing
sent upstream, nothing held or charged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from harness import PROVIDER_KEY, Gateway, closed_port, start_gateway, validate

from gateway.config_load import parse
from gateway.requests import MAX_DEPTH
from gateway.state import RUNTIME

MESSAGES = [{"role": "user", "content": "hi"}]
BALANCE = 10_000_000_000  # the harness key's


async def post_raw(gateway: Gateway, raw: bytes, headers: dict[str, str] | None = None,
                   chunked: bool = False) -> tuple[int, dict[str, Any]]:
    hdrs = {**gateway.auth(), "Content-Type": "application/json", **(headers or {})}

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 4096):
            yield raw[i:i + 4096]

    url = gateway.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as http, http.post(url, headers=hdrs, data=body() if chunked else raw) as r:
        return r.status, await r.json(content_type=None)


async def untouched(gateway: Gateway) -> None:
    """Nothing reached the upstream and the key's balance is whole: no charge, no hold left behind."""
    assert gateway.fake.requests == []
    record = await gateway.app[RUNTIME].store.get_key(gateway.key_id)
    assert record is not None and record.balance == BALANCE


def refused(status: int, payload: dict[str, Any], want_status: int, want_code: str, *words: str) -> None:
    validate(payload, "ErrorResponse")
    assert status == want_status, payload
    assert payload["error"]["code"] == want_code, payload
    for word in words:
        assert word in payload["error"]["message"], payload


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "fake/gpt-4o", "messages": MESSAGES, **fields}).encode()


def nested(depth: int) -> bytes:
    return chat(tools=[]).replace(b'"tools": []', b'"tools": ' + b"[" * depth + b"]" * depth)


@pytest.mark.parametrize(("raw", "code", "param", "words"), [
    pytest.param(nested(MAX_DEPTH + 1), "invalid_json", None, ("depth",), id="deep-nesting"),
    pytest.param(nested(30_000), "invalid_json", None, ("depth",), id="very-deep-nesting"),
    pytest.param(b'{"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "\xff\xfe"}]}', "invalid_json",
                 None, ("UTF-8",), id="invalid-utf8"),
    pytest.param(b'{"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "\\ud800"}]}', "invalid_json",
                 None, ("surrogate",), id="lone-surrogate"),
    pytest.param(chat(temperature="NaN").replace(b'"NaN"', b"NaN"), "invalid_json", None, (), id="nan-literal"),
    pytest.param(chat(temperature=1).replace(b'"temperature": 1', b'"temperature": 1e999'), "invalid_json", None,
                 ("infinity",), id="infinite-number"),
    pytest.param(chat(max_tokens=-5), "invalid_value", "max_tokens", ("max_tokens",), id="negative-max-tokens"),
    pytest.param(chat(max_tokens=0), "invalid_value", "max_tokens", ("max_tokens",), id="zero-max-tokens"),
    pytest.param(chat(max_tokens=1e30), "invalid_type", "max_tokens", ("integer",), id="float-max-tokens"),
    pytest.param(chat(max_tokens=10**30), "invalid_type", "max_tokens", ("integer",), id="bignum-max-tokens"),
    pytest.param(chat(max_tokens=True), "invalid_type", "max_tokens", ("integer",), id="bool-max-tokens"),
    pytest.param(chat(temperature=-1), "invalid_value", "temperature", ("temperature",), id="negative-temperature"),
    pytest.param(chat(top_p=7), "invalid_value", "top_p", ("top_p",), id="top-p-out-of-range"),
    pytest.param(chat(temperature="hot"), "invalid_type", "temperature", ("number",), id="string-temperature"),
    pytest.param(chat(n=10_000), "invalid_value", "n", ("'n'", "128"), id="n-ten-thousand"),
    pytest.param(chat(n=0), "invalid_value", "n", ("'n'",), id="n-zero"),
    pytest.param(chat(messages=[{"role": "wizard", "content": "hi"}]), "invalid_value", "messages[0].role",
                 ("wizard", "user"), id="unknown-role"),
    pytest.param(chat(messages=[{"role": "user", "content": 42}]), "invalid_type", "messages[0].content",
                 ("content",), id="numeric-content"),
    pytest.param(chat(messages=[{"role": "user", "content": ["text"]}]), "invalid_type", "messages[0].content",
                 ("type",), id="part-not-object"),
    pytest.param(chat(model="fake/" + "x" * 10_000), "invalid_value", "model", ("256",), id="long-model-name"),
    pytest.param(chat(provider_api_key="sk-a\r\nX-Injected: 1"), "invalid_value", "provider_api_key",
                 ("printable",), id="byok-with-crlf"),
    pytest.param(chat(provider_api_key="sk-ключ"), "invalid_value", "provider_api_key", ("ASCII",),
                 id="byok-not-ascii"),
    pytest.param(chat(provider_api_key="k" * 513), "invalid_value", "provider_api_key", ("512",),
                 id="byok-too-long"),
    pytest.param(chat(provider_api_key=["sk-x"]), "invalid_value", "provider_api_key", (), id="byok-not-string"),
])
async def test_malformed_body_is_a_clear_400(gateway: Gateway, raw: bytes, code: str, param: str | None,
                                             words: tuple[str, ...]) -> None:
    status, payload = await post_raw(gateway, raw)
    refused(status, payload, 400, code, *words)
    assert payload["error"]["param"] == param
    assert len(payload["error"]["message"]) < 400  # names the problem, never echoes the whole input
    await untouched(gateway)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversized_body_is_413_declared_or_not(gateway: Gateway, chunked: bool) -> None:
    status, payload = await post_raw(gateway, chat(messages=[{"role": "user", "content": "x" * 200_000}]),
                                     chunked=chunked)
    refused(status, payload, 413, "request_too_large", "65536")
    await untouched(gateway)


async def test_max_tokens_beyond_the_model_is_400(gateway: Gateway) -> None:
    status, payload = await post_raw(gateway, chat(model="fake/gpt-5", max_completion_tokens=2**31 - 1))
    refused(status, payload, 400, "invalid_value", "128000", "fake/gpt-5")
    assert payload["error"]["param"] == "max_completion_tokens"
    await untouched(gateway)


async def test_byok_header_that_is_not_a_key_is_400(gateway: Gateway) -> None:
    # aiohttp's client refuses to send CR/LF, so the header carries what HTTP allows but a key cannot hold
    status, payload = await post_raw(gateway, chat(), headers={"X-Provider-Api-Key": "sk-a b\tc"})
    refused(status, payload, 400, "invalid_value")
    assert payload["error"]["param"] == "provider_api_key"
    await untouched(gateway)


@pytest.mark.parametrize("header_line", [
    pytest.param(b"X-Request-Id: abc\rdef", id="bare-cr"),
    pytest.param(b"X-Provider-Api-Key: sk-abc\r\n injected-by-folding", id="obs-fold"),
    pytest.param(b"X-Provider-Api-Key: sk-\x00abc", id="nul"),
    pytest.param(b"X-Request-Id: " + b"a" * 20_000, id="header-over-8k"),
])
async def test_header_with_cr_lf_is_refused_by_the_http_parser(gateway: Gateway, header_line: bytes) -> None:
    """aiohttp's parser refuses these (and header values over its 8190-byte limit) before any handler runs:
    the client gets a 400 in OpenAI's shape (gateway.edge; tests/test_http_edge.py) and the connection is
    closed; nothing is sent upstream."""
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = chat()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + header_line + b"\r\n"
                 + f"Authorization: Bearer {gateway.key}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.0 400 ")), answer[:200]
    assert b"\r\nContent-Type: application/json" in answer, answer[:200]
    await untouched(gateway)


async def test_n_choices_are_all_billed(gateway: Gateway) -> None:
    client = gateway.openai()
    answer = await client.chat.completions.create(model="fake/metered", messages=MESSAGES,  # type: ignore[arg-type]
                                                  n=3, max_tokens=10)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert answer.usage is not None and answer.usage.completion_tokens == 30
    billing = answer.model_extra["billing"]  # type: ignore[index]
    assert round(billing["request_cost"] * 1e9) == 30 * 10_000  # 30 tokens at $10 per million
    assert round(billing["reserved"] * 1e9) == 30 * 10_000  # the hold covered every choice's max_tokens
    assert gateway.fake.last.body["n"] == 3


async def test_hold_covers_every_choice(gateway: Gateway) -> None:
    """A balance that covers one choice's max_tokens but not three is refused before the upstream call."""
    poor, _ = await gateway.add_key("poor", balance=200_000)  # 20 output tokens of fake/metered
    body = chat(model="fake/metered", max_tokens=10, n=3)
    status, payload = await post_raw(gateway, body, headers=gateway.auth(poor))
    refused(status, payload, 402, "insufficient_quota")
    status, _ = await post_raw(gateway, chat(model="fake/metered", max_tokens=10, n=2), headers=gateway.auth(poor))
    assert status == 200


@pytest.fixture
async def claude_gateway(aiohttp_server: Any, gateway: Gateway) -> AsyncIterator[Gateway]:
    """A gateway whose primary model is an Anthropic one; its upstream is never reached in these tests."""
    doc = {"providers": {"claude": {"kind": "anthropic", "base_url": f"http://127.0.0.1:{closed_port()}",
                                    "api_key": "sk-ant-never-used-000000"}},
           "models": {"claude/sonnet": {"price": {"input_per_mtok": 3, "output_per_mtok": 15}}}}
    gw = await start_gateway(aiohttp_server, parse(yaml.safe_dump(doc), {}), gateway.fake)
    yield gw
    await gw.close()


async def test_n_above_one_to_anthropic_is_400(claude_gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await claude_gateway.openai().chat.completions.create(model="claude/sonnet", messages=MESSAGES,  # type: ignore[arg-type]
                                                              n=2)
    assert info.value.code == "unsupported_value" and info.value.param == "n"
    assert "one choice" in info.value.message
    record = await claude_gateway.app[RUNTIME].store.get_key(claude_gateway.key_id)
    assert record is not None and record.balance == BALANCE


async def test_error_bodies_never_echo_the_provider_key(gateway: Gateway) -> None:
    status, payload = await post_raw(gateway, chat(provider_api_key=PROVIDER_KEY + " "))
    assert status == 400
    assert PROVIDER_KEY not in json.dumps(payload)


@pytest.mark.parametrize(("path", "body"), [
    pytest.param("/v1/completions", {"model": "fake/gpt-4o", "prompt": "hi"}, id="completions"),
    pytest.param("/v1/embeddings", {"model": "fake/gpt-4o", "input": "hi"}, id="embeddings"),
    pytest.param("/v1/messages", {"model": "fake/gpt-4o", "max_tokens": 5, "messages": MESSAGES}, id="messages"),
])
@pytest.mark.parametrize("hostile", ["byok-crlf", "deep-nesting"])
async def test_every_endpoint_refuses_hostile_bodies(gateway: Gateway, path: str, body: dict[str, Any],
                                                     hostile: str) -> None:
    if hostile == "byok-crlf":
        raw = json.dumps({**body, "provider_api_key": "sk-a\r\nX-Injected: 1"}).encode()
    else:
        raw = json.dumps({**body, "metadata": []}).encode().replace(b'"metadata": []', b'"metadata": '
                                                                   + b"[" * 100 + b"]" * 100)
    async with aiohttp.ClientSession() as http, http.post(gateway.url + path, data=raw, headers={
            **gateway.auth(), "Content-Type": "application/json"}) as r:
        assert r.status == 400, await r.text()
        payload = await r.json()
    message = payload["error"]["message"]
    assert ("printable" if hostile == "byok-crlf" else "depth") in message
    await untouched(gateway)


async def test_a_body_of_very_many_brackets_is_not_walked(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """7M empty arrays (20 MB) were walked node by node for their depth, 6 s of the event loop; the walk gives up
    after WALK_AT_MOST objects and arrays and the body is checked on its bytes, and one nested too deep is still
    refused."""
    from gateway import requests

    verdicts: list[bool | None] = []
    walk = requests._depth_exceeds

    def walked(value: Any, limit: int, budget: int | None = None) -> bool | None:
        verdicts.append(verdict := walk(value, limit, budget))
        return verdict

    monkeypatch.setattr(requests, "_depth_exceeds", walked)
    wide = b"[" + b",".join([b"[]"] * (requests.WALK_AT_MOST + 1)) + b"]"
    deep = b"[" + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"," + wide + b"]"  # the walk takes the last item first
    status, payload = await post_raw(gateway, chat(tools=[]).replace(b'"tools": []', b'"tools": ' + deep))
    refused(status, payload, 400, "invalid_json", "depth")
    await untouched(gateway)
    status, payload = await post_raw(gateway, chat(tools=[]).replace(b'"tools": []', b'"tools": ' + wide))
    assert status == 200, payload  # served: not too deep
    assert verdicts == [None, None]  # and neither walked to its end


async def test_brackets_inside_a_prompt_are_not_checked_as_nesting(gateway: Gateway,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A source file pasted into a prompt holds brackets by the thousand in one string. Counted as nesting, they
    sent the body to the byte check, whose scan for strings took 5.5 s of the event loop over 10 MB; the walk
    sees the few objects that hold them and decides."""
    from gateway import requests

    def byte_check(raw: bytes, limit: int) -> bool:
        raise AssertionError("checked on its bytes")

    monkeypatch.setattr(requests, "_nests_deeper", byte_check)
    code = "[{}]" * requests.WALK_AT_MOST  # within the test gateway's 64 KB of body
    status, payload = await post_raw(gateway, json.dumps(
        {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": code}]}).encode())
    assert status == 200, payload
