"""bench/fake_upstream.py: the benchmark's hand-written HTTP/1.1 server, spoken to by the official SDK.

The benchmark's numbers are only worth something if every relay under test reads a well-formed answer:
keep-alive, Content-Length and chunked framing, one chunk per event, OpenAI's schema (and Anthropic's on
/v1/messages, the native Claude route's variant; Gemini's recorded wire format on /v1beta/models/..., checked
against the recordings, and read by the real gateway from the bench's own config). And bench/floor.py, measured
as the least a metered gateway runs, must meter: its bills and its settlements in Redis are checked here.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from harness import SHARED, funded_key, start_gateway, validate
from proxies import HOST, free_port, wait_listening

from gateway.config_load import parse
from gateway.store.redis import RedisStore

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPT = BENCH / "fake_upstream.py"
sys.path.insert(0, str(BENCH))

import rig  # noqa: E402 - bench/ is not a package

GEMINI_WIRE = SHARED / "wire" / "gemini" / "googleai"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--port", str(port)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                post(port, "/v1/chat/completions", {"model": "bench-1"})
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(port: int, path: str, body: dict[str, object]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn.getresponse()


@pytest.fixture
def base_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def test_sdk_answers_streamed_and_not_over_one_connection(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    for _ in range(3):  # the SDK's pool keeps the connection: requests follow each other on it
        answer = client.chat.completions.create(model="bench-1", messages=[{"role": "user", "content": "hi"}])
        validate(answer.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        assert answer.usage is not None and answer.usage.completion_tokens == 20
        chunks = list(client.chat.completions.create(model="bench-20", stream=True,
                                                     messages=[{"role": "user", "content": "hi"}]))
        for chunk in chunks:
            validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
        assert len(chunks) == 21  # 20 with a choice, then usage
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
            f" tok{i}" for i in range(1, 19))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20


def test_padded_streams_carry_openais_obfuscation(base_url: str) -> None:
    """`bench-padded-N`: OpenAI's default padding, a random string of random length on every chunk."""
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    chunks = list(client.chat.completions.create(model="bench-padded-20", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}]))
    pads = [chunk.model_dump().get("obfuscation") for chunk in chunks]
    for chunk in chunks:
        validate(chunk.model_dump(exclude_unset=True), "CreateChatCompletionStreamResponse")
    assert all(type(pad) is str and 1 <= len(pad) <= 16 for pad in pads) and len(set(map(len, pads))) > 5
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        f" tok{i}" for i in range(1, 19))


def test_anthropic_sdk_reads_the_messages_answers(base_url: str) -> None:
    client = anthropic.Anthropic(base_url=base_url, api_key="bench", max_retries=0)
    ask: dict[str, Any] = {"model": "claude-bench-20", "max_tokens": 100,
                           "messages": [{"role": "user", "content": "hi"}]}
    whole = client.messages.create(**ask)
    assert whole.stop_reason == "end_turn" and whole.usage.output_tokens == 20
    assert whole.content[0].type == "text" and whole.content[0].text.startswith("Hello!")
    with client.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "".join(f" tok{i}" for i in range(20))
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 20 and final.usage.input_tokens == 24


def test_one_http_chunk_per_event(port: int) -> None:
    """The relays under test must get the body in many small pieces, as from a real provider."""
    body = b'{"model": "bench-5", "stream": true}'
    with socket.create_connection((HOST, port), timeout=10) as sock:
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        sock.sendall(head + body)
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            raw += sock.recv(65536)
    answer_head, _, framed = raw.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in answer_head
    sizes = [int(line, 16) for line in framed.split(b"\r\n")[::2] if line]
    assert len(sizes) == 7 + 1 and sizes[-1] == 0  # role, 3 content, finish, usage, [DONE]; the last chunk
    assert framed.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_unknown_model_and_path(base_url: str, port: int) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="other", stream=True, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "model_not_found"
    assert post(port, "/v1/embeddings", {}).status == 404


# --- Gemini ---------------------------------------------------------------------------------------

def shape(value: Any) -> Any:
    """Keys in order and the types of the values: what a recording and the fake must agree on."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    return type(value).__name__


def sse_events(raw: bytes) -> list[bytes]:
    """A Gemini body's events: `data: ` lines each ended by CRLF CRLF, nothing else."""
    assert raw.endswith(b"\r\n\r\n")
    events = raw.split(b"\r\n\r\n")[:-1]
    assert all(event.startswith(b"data: ") and b"\n" not in event and b"\r" not in event for event in events)
    return [event.removeprefix(b"data: ") for event in events]


def read_stream(port: int, model: str) -> bytes:
    resp = post(port, f"/v1beta/models/{model}:streamGenerateContent?alt=sse", {"contents": []})
    assert resp.status == 200 and resp.getheader("Content-Type", "").startswith("text/event-stream")
    return resp.read()


def test_gemini_answer_has_the_recorded_shape(port: int) -> None:
    recorded = json.loads((GEMINI_WIRE / "unary-success-basic-reply-short.json").read_text())
    resp = post(port, "/v1beta/models/gemini-bench-20:generateContent", {"contents": []})
    raw = resp.read()
    assert resp.status == 200 and raw.startswith(b'{\n  "candidates": [\n')  # indented, as Google sends it
    answer = json.loads(raw)
    assert shape(answer) == shape(recorded)
    candidate = answer["candidates"][0]
    assert candidate["finishReason"] == "STOP" and candidate["content"]["role"] == "model"
    assert candidate["content"]["parts"][0]["text"].startswith("Hello!")
    assert answer["usageMetadata"] | {"promptTokensDetails": None, "candidatesTokensDetails": None} == {
        "promptTokenCount": 24, "candidatesTokenCount": 20, "totalTokenCount": 44, "promptTokensDetails": None,
        "candidatesTokensDetails": None}


@pytest.mark.parametrize("n", [1, 3, 20])
def test_gemini_stream_has_the_recorded_shape_and_framing(port: int, n: int) -> None:
    """N events framed and spelt as the Developer API's recorded stream: CRLF, no [DONE], a space after every
    colon; usage on every event, the candidates' count and finishReason on the last alone."""
    recorded = sse_events((GEMINI_WIRE / "streaming-success-basic-reply-short.txt").read_bytes())
    events = sse_events(read_stream(port, f"gemini-bench-{n}"))
    assert len(events) == n
    for raw in (*recorded, *events):  # the fake's JSON is spelt as the recording's
        assert json.dumps(json.loads(raw), separators=(",", ": ")).encode() == raw
    chunks = [json.loads(raw) for raw in events]
    middle, last = json.loads(recorded[0]), json.loads(recorded[-1])
    assert all(shape(chunk) == shape(middle) for chunk in chunks[:-1])
    assert shape(chunks[-1]) == shape(last)
    assert [chunk["candidates"][0].get("finishReason") for chunk in chunks] == [None] * (n - 1) + ["STOP"]
    assert "".join(chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks) == "".join(
        f" tok{i}" for i in range(n))
    assert all(chunk["usageMetadata"] == {"promptTokenCount": 24, "totalTokenCount": 24, "promptTokensDetails": [
        {"modality": "TEXT", "tokenCount": 24}]} for chunk in chunks[:-1])
    usage = chunks[-1]["usageMetadata"]
    assert (usage["promptTokenCount"], usage["candidatesTokenCount"], usage["totalTokenCount"]) == (24, n, 24 + n)
    assert {chunk["modelVersion"] for chunk in chunks} == {f"gemini-bench-{n}"}


def test_gemini_running_stream_counts_every_event(port: int) -> None:
    """`gemini-bench-running-N`: the events Gemini 2.5 on sends, the answer's count so far on each (without its
    details by modality, as recorded), the whole count and finishReason on the last."""
    recorded = [json.loads(raw) for raw in sse_events(
        (GEMINI_WIRE / "streaming-success-code-execution.txt").read_bytes())]
    assert all("candidatesTokenCount" in chunk["usageMetadata"] for chunk in recorded)
    chunks = [json.loads(raw) for raw in sse_events(read_stream(port, "gemini-bench-running-5"))]
    assert [chunk["usageMetadata"].get("candidatesTokenCount") for chunk in chunks] == [1, 2, 3, 4, 5]
    assert [chunk["usageMetadata"]["totalTokenCount"] for chunk in chunks] == [25, 26, 27, 28, 29]
    assert ["candidatesTokensDetails" in chunk["usageMetadata"] for chunk in chunks] == [False] * 4 + [True]
    assert [chunk["candidates"][0].get("finishReason") for chunk in chunks] == [None] * 4 + ["STOP"]
    texts = [chunk["candidates"][0]["content"]["parts"][0]["text"] for chunk in chunks]
    assert texts == [f" tok{i}" for i in range(5)]


def test_gemini_one_http_chunk_per_event(port: int) -> None:
    body = b'{"contents": []}'
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"POST /v1beta/models/gemini-bench-5:streamGenerateContent?alt=sse HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        raw = b""
        while not raw.endswith(b"\r\n0\r\n\r\n"):
            raw += sock.recv(65536)
    framed = raw.partition(b"\r\n\r\n")[2]
    sizes, rest = [], framed
    while rest:  # (the events hold CRLFs of their own: walk the chunks by their sizes)
        size_line, _, rest = rest.partition(b"\r\n")
        sizes.append(int(size_line, 16))
        assert rest[sizes[-1]:sizes[-1] + 2] == b"\r\n"
        rest = rest[sizes[-1] + 2:]
    assert len(sizes) == 5 + 1 and sizes[-1] == 0


def test_gemini_unknown_model_method_and_bad_body(port: int) -> None:
    resp = post(port, "/v1beta/models/gemini-other:generateContent", {"contents": []})
    assert resp.status == 404 and json.loads(resp.read())["error"]["status"] == "NOT_FOUND"
    assert post(port, "/v1beta/models/gemini-bench-5:streamGenerateContent", {}).status == 404  # no alt=sse
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("POST", "/v1beta/models/gemini-bench-5:generateContent", body=b"{", headers={})
    assert conn.getresponse().status == 400


def test_pass_through_bodies_of_gemini_variants_are_answered_on_chat(port: int) -> None:
    """The pass-through relays every variant's body to the chat path, `gemini-bench-N` included."""
    for name in ("gemini-json", "gemini-chat-s1000"):
        resp = post(port, "/v1/chat/completions", json.loads(rig.body_for(rig.VARIANTS[name])))
        raw = resp.read()
        assert resp.status == 200
        assert raw.count(b"data: ") == (1002 if name == "gemini-chat-s1000" else 0)


async def test_gemini_variants_through_the_gateway(port: int, redis_url: str, aiohttp_server: Any) -> None:
    """The bench's own config and bodies: the real gateway reads the fake's Gemini answers, bills them, and
    relays every event of `gemini-chat-s1000`."""
    config = parse(rig.gateway_config(int(redis_url.rsplit(":", 1)[1].split("/")[0]), [port]), {})
    gw = await start_gateway(aiohttp_server, config, None)  # type: ignore[arg-type]  # no FakeOpenAI here
    headers = {**gw.auth(), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}{rig.CHAT}", data=rig.body_for(rig.VARIANTS["gemini-json"]),
                                headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        async with session.post(f"{gw.url}{rig.CHAT}", data=rig.body_for(rig.VARIANTS["gemini-chat-s1000"]),
                                headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            raw = await resp.read()
    await gw.close()
    validate({k: v for k, v in answer.items() if k != "billing"}, "CreateChatCompletionResponse")
    assert answer["model"] == "google/gemini-bench-20" and answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"].startswith("Hello!")
    assert (answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]) == (24, 20)
    assert float(answer["billing"]["request_cost"]) == pytest.approx((24 * 0.15 + 20 * 0.6) / 1e6)  # the rig's prices
    lines = [line for line in raw.split(b"\n\n") if line]
    assert lines[-1] == b"data: [DONE]"
    chunks = [json.loads(line.removeprefix(b"data: ")) for line in lines[:-1]]
    for chunk in chunks:
        validate({k: v for k, v in chunk.items() if k != "billing"}, "CreateChatCompletionStreamResponse")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(f" tok{i}" for i in range(1000))
    assert len(chunks) == 1001 and chunks[-1]["choices"][0]["finish_reason"] == "stop"  # 1,000 texts, the finish
    billed = [chunk["billing"] for chunk in chunks if "billing" in chunk]
    assert billed and float(billed[-1]["request_cost"]) == pytest.approx((24 * 0.15 + 1000 * 0.6) / 1e6)


async def test_the_floor_meters_what_it_relays(port: int, redis_url: str) -> None:
    """bench/floor.py, the least a metered gateway runs (bench/README, twentieth round), does what it is measured
    for: each answer, streamed or not, carries its bill, and the key's balance falls by exactly that in Redis once
    the settlements land."""
    import fake_upstream

    prefix = f"t{uuid.uuid4().hex}:"
    plain, key_id = await funded_key(redis_url, prefix)
    floor_port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "floor.py"), "--port", str(floor_port), "--upstream",
                             f"http://{HOST}:{port}", "--redis", redis_url, "--prefix", prefix])
    store = RedisStore(redis_url, prefix=prefix)
    client = openai.AsyncOpenAI(base_url=f"http://{HOST}:{floor_port}/v1", api_key=plain, max_retries=0)
    try:
        await asyncio.to_thread(wait_listening, floor_port, 20.0, HOST, proc)
        cost = fake_upstream.PROMPT_TOKENS * 150 + 20 * 600  # the bench's $0.15 / $0.60 per million tokens
        answer = await client.chat.completions.create(model="bench-20", messages=[{"role": "user", "content": "hi"}])
        validate(answer.model_dump(exclude_unset=True), "CreateChatCompletionResponse")
        bills = [answer.model_extra["billing"]]
        chunks = [chunk async for chunk in await client.chat.completions.create(
            model="bench-20", stream=True, messages=[{"role": "user", "content": "hi"}])]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
            f" tok{i}" for i in range(1, 19))
        bills.append(chunks[-1].model_extra["billing"])
        assert [bill["cost_usd"] for bill in bills] == [f"{cost / 1e9:.9f}"] * 2
        assert bills[0]["generation_id"] != bills[1]["generation_id"]
        for _ in range(50):
            record = await store.get_key(key_id)
            if record is not None and record.balance == 10_000_000_000 - 2 * cost:
                break
            await asyncio.sleep(0.1)
        assert record is not None and record.balance == 10_000_000_000 - 2 * cost and record.usage == 2 * cost
        for bill in bills:
            generation = await store.get_generation(key_id, bill["generation_id"])
            assert generation is not None and generation["cost"] == str(cost)
    finally:
        await client.close()
        await store.close()
        proc.terminate()
        proc.wait(timeout=10)
