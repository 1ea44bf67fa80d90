"""schemathesis against the gateway's own /openapi.json: no 5xx but the documented upstream failures, every
status documented, every non-2xx in OpenAI's error shape (Anthropic's on /v1/messages).

The gateway (memory store, admin token set) and a fake OpenAI upstream run in a thread with their own event
loop, because schemathesis calls synchronously. Examples are bounded so the module runs in well under a
minute; GW_FUZZ_EXAMPLES raises the bound for a longer hunt.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
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
    config = gateway_config(f"http://127.0.0.1:{port}/v1", admin_token=ADMIN_TOKEN)
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
