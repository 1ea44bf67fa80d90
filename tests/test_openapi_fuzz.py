"""schemathesis against the gateway's own /openapi.json: no 5xx but the documented upstream failures, every
status documented, every non-2xx in OpenAI's error shape (Anthropic's on /v1/messages). What the gateway
answers before a handler runs (405, 408, 417, 505), which no generated case provokes, is sent by hand over
raw sockets and held to the same document.

The gateway (memory store, admin token set) and a fake OpenAI upstream run in a thread with their own event
loop, because schemathesis calls synchronously. Examples are bounded so the module runs in well under a
minute; GW_FUZZ_EXAMPLES raises the bound for a longer hunt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as fake_app
from harness import gateway_config, validate
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks as oas_checks

from gateway import keys, openapi
from gateway.app import create_app
from gateway.catalog import Catalog
from gateway.state import RUNTIME

# the gateway thread's own `random` use (retry jitter) trips hypothesis's check for random inside strategies
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
ADMIN_TOKEN = "admin-token-for-fuzzing-0123456789"
EXAMPLES = int(os.environ.get("GW_FUZZ_EXAMPLES", "12"))
UPSTREAM_FAILURES = {502, 503, 504}  # documented: the fake upstream or the store can fail a generated request
BODY_TIMEOUT_S = 1.0  # server.body_timeout_s: a body not whole by then is a 408 (the default, 300 s, is for clients)


@dataclass
class Live:
    url: str
    key: str
    loop: asyncio.AbstractEventLoop


async def _start(ready: list[Any]) -> Any:
    from aiohttp import web

    fake = FakeOpenAI()
    upstream = web.AppRunner(fake_app(fake))
    await upstream.setup()
    site = web.TCPSite(upstream, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = gateway_config(f"http://127.0.0.1:{port}/v1", admin_token=ADMIN_TOKEN, body_timeout_s=BODY_TIMEOUT_S)
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    gw_site = web.TCPSite(runner, "127.0.0.1", 0)
    await gw_site.start()
    gw_port = gw_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    plain, record = keys.new_record("fuzz", 1_000_000_000_000)
    await app[RUNTIME].store.create_key(record)
    ready.append((f"http://127.0.0.1:{gw_port}", plain))
    return runner, upstream


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    loop = asyncio.new_event_loop()
    ready: list[Any] = []
    runners = loop.run_until_complete(_start(ready))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url, key = ready[0]
    yield Live(url, key, loop)

    async def stop() -> None:
        for runner in runners:
            await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def _document() -> dict[str, Any]:
    return openapi.document(list(Catalog(gateway_config("http://127.0.0.1:9/v1")).routes))


def _has_input(label: str) -> bool:
    method, path = label.split(" ", 1)
    op = _document()["paths"][path][method.lower()]
    return "requestBody" in op or "parameters" in op


schema = schemathesis.openapi.from_dict(_document())
OPERATIONS = [result.ok() for result in schema.get_all_operations()]
CASES = [pytest.param(op, mode, id=f"{op.label}-{mode}") for op in OPERATIONS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode == GenerationMode.POSITIVE or _has_input(op.label)]  # negative needs an input to break


def openai_shaped_errors(ctx: Any, response: Any, case: Any) -> bool:
    """Every non-2xx carries OpenAI's error envelope; 5xx only for upstream/store failures."""
    if response.status_code >= 500 and response.status_code not in UPSTREAM_FAILURES:
        raise AssertionError(f"{case.method} {case.path}: HTTP {response.status_code}: {response.text[:300]}")
    if response.status_code >= 400 and not (case.path == "/readyz" and response.status_code == 503):
        body = response.json()
        if case.path.startswith("/v1/messages"):  # Anthropic's API, Anthropic's error shape
            assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
        else:
            validate(body, "ErrorResponse")
    return True


CHECKS = [openai_shaped_errors, oas_checks.status_code_conformance, oas_checks.content_type_conformance,
          oas_checks.response_schema_conformance]


def _auth(live: Live, path: str) -> dict[str, str]:
    token = ADMIN_TOKEN if path.startswith("/admin/") else live.key
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("operation", "mode"), CASES)
def test_gateway_honours_its_openapi_description(operation: Any, mode: GenerationMode, live: Live) -> None:
    """Valid requests (positive) and requests that break the schema on purpose (negative)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
    def run(case: Any) -> None:
        response = case.call(base_url=live.url, headers=_auth(live, case.path), timeout=30)
        case.validate_response(response, checks=CHECKS)

    run()


def test_served_document_is_the_one_fuzzed(live: Live) -> None:
    with urllib.request.urlopen(live.url + "/openapi.json", timeout=10) as r:
        doc = json.load(r)
    assert doc == json.loads(json.dumps(_document()))
    model = doc["components"]["schemas"]["ChatRequest"]["properties"]["model"]
    assert "fake/gpt-5" in model["examples"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert "responses" in op, (method, path)
    assert set(doc["paths"]) >= {"/v1/chat/completions", "/v1/models", "/v1/credits", "/v1/generation",
                                 "/admin/keys", "/openapi.json", "/v1/completions", "/v1/embeddings",
                                 "/v1/moderations", "/v1/images/generations", "/v1/messages", "/v1/models/{name}",
                                 "/v1/messages/count_tokens"}


# --- what the gateway answers before any handler: documented where it applies ---------------------------

HOST, PORT_AT = "127.0.0.1", len("http://127.0.0.1:")
CONCRETE = {"{name}": "fake/gpt-5", "{key_id}": "key_000000000000"}
EDGE_OPERATIONS = [pytest.param(path, method, id=f"{method.upper()} {path}")
                   for path, item in _document()["paths"].items() for method in item]


def _target(path: str) -> str:
    for template, value in CONCRETE.items():
        path = path.replace(template, value)
    return path + ("?id=gen-0" if path == "/v1/generation" else "")


def _raw(live: Live, head: str, body: bytes = b"", pause_s: float = 0.0,
         rest: bytes = b"") -> tuple[int, dict[str, str], Any]:
    """One request as bytes on its own connection (no client library sends an HTTP/2.0 request line, or
    stalls a body on purpose); the answer read up to its Content-Length, then `rest` sent: the end of a
    stalled body, which aiohttp waits for (up to 10 s) before it lets the connection go."""
    with socket.create_connection((HOST, int(live.url[PORT_AT:])), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        time.sleep(pause_s)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        head_bytes, _, payload = answer.partition(b"\r\n\r\n")
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        while len(payload) < int(headers["content-length"]) and (chunk := sock.recv(65536)):
            payload += chunk
        with contextlib.suppress(OSError):
            sock.sendall(rest)
    return int(status_line.split()[1]), headers, json.loads(payload)


def _conforms(body: Any, response: dict[str, Any], path: str) -> None:
    """`body` is valid under the documented response (a $ref into components resolved), in JSON."""
    doc = _document()
    if "$ref" in response:
        response = doc["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = {**response["content"]["application/json"]["schema"], "components": doc["components"]}
    Draft202012Validator(schema).validate(body)
    if path.startswith("/v1/messages"):
        assert body["type"] == "error", body


def _head(live: Live, method: str, path: str, version: str = "1.1", **headers: str) -> str:
    fields = {"Host": HOST, "Connection": "close", **_auth(live, path), **headers}
    lines = [f"{method.upper()} {_target(path)} HTTP/{version}", *(f"{k}: {v}" for k, v in fields.items()), "", ""]
    return "\n".join(lines)


@pytest.mark.parametrize(("path", "method"), EDGE_OPERATIONS)
def test_what_the_edge_answers_is_documented_on_every_operation(path: str, method: str, live: Live) -> None:
    """417 (an expectation other than 100-continue) and 505 (an HTTP version not served) on every
    operation, before its key or body is looked at; 408 on every operation that reads a body."""
    op = _document()["paths"][path][method]
    status, _, body = _raw(live, _head(live, method, path, **{"Expect": "x-unknown"}))
    assert status == 417 and "417" in op["responses"], (status, body, sorted(op["responses"]))
    _conforms(body, op["responses"]["417"], path)

    status, headers, body = _raw(live, _head(live, method, path, version="2.0"))
    assert status == 505 and "505" in op["responses"], (status, body, sorted(op["responses"]))
    _conforms(body, op["responses"]["505"], path)
    assert headers["x-should-retry"] == "false"

    if "requestBody" in op:  # its body stops short of its declared length: the gateway waits body_timeout_s
        status, _, body = _raw(live, _head(live, method, path, **{"Content-Length": "100"}), b"{",
                               pause_s=BODY_TIMEOUT_S + 0.5, rest=b" " * 99)
        assert status == 408 and "408" in op["responses"], (status, body, sorted(op["responses"]))
        _conforms(body, op["responses"]["408"], path)


@pytest.mark.parametrize("path", sorted(_document()["paths"]))
def test_a_method_the_document_does_not_list_is_a_405_naming_those_it_does(path: str, live: Live) -> None:
    """OpenAPI has no place for an undeclared method's answer: the methods a path item lists are the ones it
    takes, any other is a 405 whose `Allow` names exactly those (HEAD beside GET), in the documented shape."""
    doc = _document()
    declared = {m.upper() for m in doc["paths"][path]}
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - declared):
        status, headers, body = _raw(live, _head(live, method, path, **{"Content-Length": "0"}))
        assert status == 405, (method, path, status, body)
        assert set(headers["allow"].split(",")) - {"HEAD"} == declared, headers
        anthropic = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/AnthropicError"}}}}
        _conforms(body, anthropic if path.startswith("/v1/messages") else {"$ref": "#/components/responses/Error405"},
                  path)
