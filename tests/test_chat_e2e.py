"""The official openai SDK through the running gateway to a fake upstream speaking OpenAI's wire format.

Every test runs on both stores (real redis-server and memory), via the `gateway` fixture.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from fakes.openai_upstream import recorded_events
from harness import PROVIDER_KEY, Gateway, validate

MESSAGES = [{"role": "user", "content": "What's the weather like in San Francisco?"}]


def recorded_text(name: str) -> str:
    """The content a recorded stream spells out, read straight from the file."""
    text = ""
    for event in recorded_events(name):
        data = event.removeprefix(b"data: ").strip()
        if data != b"[DONE]":
            for choice in json.loads(data)["choices"]:
                text += choice["delta"].get("content") or ""
    return text


async def sse_events(resp: aiohttp.ClientResponse) -> tuple[list[Any], list[bytes]]:
    """(decoded data payloads, raw comment lines) of a gateway stream, read with a plain client."""
    payloads, comments = [], []
    raw = await resp.read()
    for block in raw.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                comments.append(line)
            elif line.startswith(b"data: "):
                data = line[6:]
                payloads.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return payloads, comments


async def test_sdk_chat_completion(gateway: Gateway) -> None:
    client = gateway.openai()
    raw = await client.chat.completions.with_raw_response.create(
        model="fake/gpt-5", messages=MESSAGES, max_tokens=50, temperature=0.2)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello! How can I assist you today?"
    assert completion.model == "fake/gpt-5"
    assert completion.usage is not None and completion.usage.total_tokens == 29
    assert raw.headers["x-request-id"]
    validate(json.loads(raw.content), "CreateChatCompletionResponse")

    sent = gateway.fake.last
    assert sent.body["model"] == "gpt-5"  # upstream name substituted
    assert sent.body["max_completion_tokens"] == 50 and "max_tokens" not in sent.body
    assert "temperature" not in sent.body
    assert sent.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"


async def test_sdk_streamed_chat(gateway: Gateway) -> None:
    client = gateway.openai()
    stream = await client.chat.completions.create(model="fake/gpt-5", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    text, finish = "", None
    async for chunk in stream:
        assert chunk.model == "fake/gpt-5"
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    assert text == recorded_text("sdk-stream-text-with-usage.sse")
    assert finish == "stop"
    # the gateway always asks the upstream for usage, whatever the client asked
    assert gateway.fake.last.body["stream_options"] == {"include_usage": True}


async def test_stream_chunks_validate_and_usage_only_when_asked(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        for include_usage in (False, True):
            body: dict[str, Any] = {"model": "gpt5", "messages": MESSAGES, "stream": True}
            if include_usage:
                body["stream_options"] = {"include_usage": True}
            async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth()) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                assert "Content-Encoding" not in r.headers
                assert r.headers["X-Request-Id"]
                payloads, _ = await sse_events(r)
            assert payloads[-1] == "[DONE]"
            chunks = payloads[:-1]
            for chunk in chunks:
                validate(chunk, "CreateChatCompletionStreamResponse")
            usage_chunks = [c for c in chunks if not c["choices"]]
            if include_usage:
                assert len(usage_chunks) == 1 and usage_chunks[0]["usage"]["total_tokens"] > 0
            else:
                assert usage_chunks == []


async def test_tool_call_stream_is_relayed(gateway: Gateway) -> None:
    gateway.fake.tool_stream = True
    client = gateway.openai()
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    args, name, finish = "", None, None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            name = call.function.name or name if call.function else name
            args += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert name == "get_weather"
    assert json.loads(args) == {"city": "New York City"}
    assert finish == "tool_calls"


async def test_alias_and_byok_in_body(gateway: Gateway) -> None:
    client = gateway.openai()
    own = "sk-client-own-key-ffffffffffffffff"
    completion = await client.chat.completions.create(
        model="gpt5", messages=MESSAGES, extra_body={"provider_api_key": own})  # type: ignore[arg-type]
    assert completion.model == "fake/gpt-5"
    sent = gateway.fake.last
    assert sent.headers["Authorization"] == f"Bearer {own}"
    assert "provider_api_key" not in sent.body
    assert own.encode() not in sent.raw


async def test_byok_header_and_keyless_local_provider(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {**gateway.auth(), "X-Provider-Api-Key": "sk-header-key-0000000000"}
        body = {"model": "nokey/model", "messages": MESSAGES}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
        assert gateway.fake.last.headers["Authorization"] == "Bearer sk-header-key-0000000000"
        body = {"model": "local/llama", "messages": MESSAGES}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth()) as r:
            assert r.status == 200
        assert "Authorization" not in gateway.fake.last.headers
        assert gateway.fake.last.body["model"] == "llama3.2"


async def test_one_megabyte_data_line_passes(gateway: Gateway) -> None:
    gateway.fake.giant_chunk_bytes = 1024 * 1024
    client = gateway.openai()
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == "x" * (1024 * 1024)


async def test_keepalive_comments_while_upstream_is_silent(gateway: Gateway) -> None:
    gateway.fake.silence_s_before_first_chunk = 0.9  # keep-alive every 0.2 s in the test config
    async with aiohttp.ClientSession() as http:
        body = {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth()) as r:
            assert r.status == 200
            payloads, comments = await sse_events(r)
    assert len(comments) >= 3
    assert set(comments) == {b": keep-alive"}
    assert payloads[-1] == "[DONE]"


async def test_events_are_relayed_as_they_arrive(gateway: Gateway) -> None:
    gateway.fake.delay_between_chunks_s = 0.05
    async with aiohttp.ClientSession() as http:
        body = {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}
        async with http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth()) as r:
            first = await r.content.readuntil(b"\n\n")
            # the first event reached us while the upstream still has most of its answer to send
            assert first.startswith(b"data: ")
            assert gateway.fake.chunks_sent < len(gateway.fake.stream_events(body)) - 2
            await r.read()


async def test_client_disconnect_closes_the_upstream(gateway: Gateway) -> None:
    gateway.fake.stall_after_chunks = 3
    async with aiohttp.ClientSession() as http:
        body = {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}
        r = await http.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.auth())
        await r.content.readuntil(b"\n\n")
        r.close()  # the client walks away mid-stream
    await asyncio.wait_for(gateway.fake.client_disconnected.wait(), timeout=5)


async def test_models_list(gateway: Gateway) -> None:
    client = gateway.openai()
    raw = await client.models.with_raw_response.list()
    body = json.loads(raw.content)
    validate(body, "ListModelsResponse")
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"fake/gpt-5", "fake/gpt-4o", "fake/metered", "fake/limited", "nokey/model", "local/llama",
                          "dead/model"}
    gpt5 = by_id["fake/gpt-5"]
    assert gpt5["pricing"]["input_per_mtok"] == 1.25 and gpt5["pricing"]["output_per_mtok"] == 10
    assert gpt5["vision"] is True and gpt5["max_output_tokens"] == 128000
    assert gpt5["context_window"] == 400000 and gpt5["aliases"] == ["gpt5"]
    assert gpt5["owned_by"] == "fake"
    assert PROVIDER_KEY not in raw.content.decode()


async def test_key_model_restriction(gateway: Gateway) -> None:
    key, _ = await gateway.add_key("restricted", models=("fake/*",))
    client = gateway.openai(api_key=key)
    listed = [m.id async for m in client.models.list()]
    assert sorted(listed) == ["fake/gpt-4o", "fake/gpt-5", "fake/limited", "fake/metered"]
    with pytest.raises(Exception) as info:
        await client.chat.completions.create(model="local/llama", messages=MESSAGES)  # type: ignore[arg-type]
    assert getattr(info.value, "status_code", None) == 403


async def test_health_and_readiness(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(gateway.url + "/readyz") as r:
            body = await r.json()
            assert r.status == 200 and body["checks"] == {"config": "ok", "store": "ok"}


async def test_client_request_id_is_echoed(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        headers = {**gateway.auth(), "X-Request-Id": "trace-123"}
        async with http.get(gateway.url + "/v1/models", headers=headers) as r:
            assert r.headers["X-Request-Id"] == "trace-123"
        async with http.get(gateway.url + "/v1/models", headers={**headers, "X-Request-Id": "bad id\u00e9"}) as r:
            assert r.headers["X-Request-Id"].startswith("req_")
