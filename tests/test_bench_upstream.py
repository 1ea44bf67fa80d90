"""bench/fake_upstream.py: the benchmark's hand-written HTTP/1.1 server, spoken to by the official SDK.

The benchmark's numbers are only worth something if every relay under test reads a well-formed answer:
keep-alive, Content-Length and chunked framing, one chunk per event, OpenAI's schema (and Anthropic's on
/v1/messages, the native Claude route's variant).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from harness import validate
from proxies import HOST, free_port

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "fake_upstream.py"


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
