"""Every error case of the core: status, OpenAI error shape, type/code, and no secret in the body."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import openai
import pytest
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as make_fake_app
from harness import PROVIDER_KEY, ROOT, SHARED, Gateway, gateway_config_text, start_gateway, validate

from gateway import errors, keys
from gateway.config_load import parse

MESSAGES = [{"role": "user", "content": "hi"}]
WIRE_ERRORS = "openai"


async def post(gateway: Gateway, body: Any, headers: dict[str, str] | None = None,
               raw: bytes | None = None) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    hdrs = gateway.auth() if headers is None else headers
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with http.post(gateway.url + "/v1/chat/completions", headers=hdrs, **kwargs) as r:
            payload = await r.json(content_type=None)
            return r.status, payload, r.headers


def check(status: int, payload: dict[str, Any], headers: Any, want_status: int, want_type: str,
          want_code: str | None) -> None:
    validate(payload, "ErrorResponse")
    assert status == want_status, payload
    assert payload["error"]["type"] == want_type
    assert payload["error"]["code"] == want_code
    assert headers["X-Request-Id"]
    assert PROVIDER_KEY not in json.dumps(payload)


@pytest.mark.parametrize(("raw", "body", "code"), [
    pytest.param(b"{not json", None, "invalid_json", id="malformed-json"),
    pytest.param(b"[1, 2]", None, "invalid_json", id="json-not-object"),
    pytest.param(None, {"model": "fake/gpt-4o"}, "missing_required_parameter", id="missing-messages"),
    pytest.param(None, {"model": "fake/gpt-4o", "messages": []}, "invalid_type", id="empty-messages"),
    pytest.param(None, {"messages": MESSAGES}, "missing_required_parameter", id="missing-model"),
    pytest.param(None, {"model": "fake/gpt-4o", "messages": MESSAGES, "stream": "yes"}, "invalid_type",
                 id="stream-not-bool"),
])
async def test_bad_requests_are_400(gateway: Gateway, raw: bytes | None, body: Any, code: str) -> None:
    status, payload, headers = await post(gateway, body, raw=raw)
    check(status, payload, headers, 400, "invalid_request_error", code)
    assert gateway.fake.requests == []


@pytest.mark.parametrize("header", [
    pytest.param({}, id="no-key"),
    pytest.param({"Authorization": "Bearer sk-not-a-gateway-key"}, id="foreign-key"),
    pytest.param({"Authorization": "Bearer " + keys.generate()}, id="unknown-well-formed-key"),
    pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="wrong-scheme"),
])
async def test_missing_or_unknown_key_is_401(gateway: Gateway, header: dict[str, str]) -> None:
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES}, header)
    check(status, payload, headers, 401, "invalid_request_error", "invalid_api_key")
    assert "sk-not-a-gateway-key" not in payload["error"]["message"]


async def test_mistyped_key_is_refused_before_the_store(gateway: Gateway) -> None:
    typo = gateway.key[:-1] + ("A" if gateway.key[-1] != "A" else "B")
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES},
                                          gateway.auth(typo))
    check(status, payload, headers, 401, "invalid_request_error", "invalid_api_key")


async def test_disabled_key_is_403(gateway: Gateway) -> None:
    from gateway.state import RUNTIME

    assert await gateway.app[RUNTIME].store.set_disabled(gateway.key_id, True)
    client = gateway.openai()
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "key_disabled"


async def test_body_over_the_limit_is_413(gateway: Gateway) -> None:
    big = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "x" * 70000}]}
    status, payload, headers = await post(gateway, big)
    check(status, payload, headers, 413, "invalid_request_error", "request_too_large")
    assert gateway.fake.requests == []


async def test_unknown_model_is_404(gateway: Gateway) -> None:
    client = gateway.openai()
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope/model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"
    message = info.value.message
    assert "nope/model" in message
    for secret_or_internal in (PROVIDER_KEY, "127.0.0.1", "gpt-5"):
        assert secret_or_internal not in message


def _wire_error(name: str) -> tuple[int, dict[str, Any]]:
    from harness import SHARED

    doc = json.loads((SHARED / "wire" / "openai" / name).read_text())
    return doc["_status"], doc["body"]


@pytest.mark.parametrize(("wire", "want"), [
    pytest.param("error-400-unsupported-parameter-max-tokens.json", (400, "invalid_request_error",
                                                                      "unsupported_parameter"), id="upstream-400"),
    pytest.param("error-429-rate-limit-exceeded.json", (429, None, None), id="upstream-429"),
])
async def test_upstream_4xx_passes_through(gateway: Gateway, wire: str, want: tuple[Any, ...]) -> None:
    status, body = _wire_error(wire)
    gateway.fake.status, gateway.fake.error_body = status, body
    got_status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    validate(payload, "ErrorResponse")
    assert got_status == want[0]
    assert headers["X-Request-Id"]
    assert payload["error"]["message"] == body["error"]["message"]
    if want[1]:
        assert (payload["error"]["type"], payload["error"]["code"]) == want[1:]


async def test_the_operators_spent_quota_is_not_the_clients(gateway: Gateway) -> None:
    """OpenAI's 429 `insufficient_quota` on the configured key: the operator's account ran dry. Passed on, it
    was a rate limit the SDKs retry in vain, coded as the gateway's own "your balance is short"."""
    status, body = _wire_error("error-429-insufficient-quota.json")
    gateway.fake.status, gateway.fake.error_body = status, body
    got_status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    check(got_status, payload, headers, 503, "service_unavailable", "upstream_insufficient_credits")
    assert body["error"]["message"] in payload["error"]["message"]
    assert len(gateway.fake.requests) == 1  # not retried


async def test_upstream_error_message_never_carries_the_provider_key(gateway: Gateway) -> None:
    gateway.fake.status = 400
    gateway.fake.error_body = {"error": {"message": f"bad request made with key {PROVIDER_KEY}",
                                         "type": "invalid_request_error", "param": None, "code": None}}
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    check(status, payload, headers, 400, "invalid_request_error", None)
    assert "[REDACTED]" in payload["error"]["message"]


async def test_upstream_refusing_the_configured_key_is_502(gateway: Gateway) -> None:
    gateway.fake.status, gateway.fake.error_body = _wire_error("error-401-invalid-api-key.json")
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    check(status, payload, headers, 502, "upstream_error", "upstream_auth_failed")


async def test_the_sdks_do_not_retry_what_a_retry_cannot_fix(gateway: Gateway) -> None:
    """The official SDKs retry a 5xx twice by default (LangChain's clients too): against the operator's refused
    key, a missing provider key or an empty provider account that is two more futile calls upstream and seconds
    of back-off. `x-should-retry: false` stops them; an error a retry may fix keeps the SDKs' own choice."""
    gateway.fake.status, gateway.fake.error_body = _wire_error("error-401-invalid-api-key.json")
    client = gateway.openai(max_retries=2)
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "upstream_auth_failed"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert len(gateway.fake.requests) == 1  # the SDK took the gateway's word: one call upstream, no retry
    gateway.fake.reset()
    gateway.fake.status, gateway.fake.fail_times = 500, 1  # may pass next time: the SDK retries as it likes
    answer = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES)  # type: ignore[arg-type]
    assert answer.choices and len(gateway.fake.requests) >= 2


async def test_upstream_refusing_a_byok_key_is_the_clients_401(gateway: Gateway) -> None:
    gateway.fake.status, gateway.fake.error_body = _wire_error("error-401-invalid-api-key.json")
    body = {"model": "fake/gpt-4o", "messages": MESSAGES, "provider_api_key": "sk-mine-000000000000000"}
    status, payload, headers = await post(gateway, body)
    check(status, payload, headers, 401, "invalid_request_error", "invalid_api_key")
    assert "sk-mine-000000000000000" not in json.dumps(payload)


@pytest.mark.parametrize("upstream_status", [500, 503])
async def test_upstream_5xx_is_502(gateway: Gateway, upstream_status: int) -> None:
    gateway.fake.status = upstream_status
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    check(status, payload, headers, 502, "upstream_error", "upstream_error")


@pytest.mark.parametrize("redirect", [307, 308, 302])
async def test_an_upstream_redirect_is_not_followed(gateway: Gateway, aiohttp_server: Any, redirect: int) -> None:
    """A 307/308 would make the HTTP client post the prompt again, with the provider-key headers (only
    `Authorization` is dropped across origins; Anthropic's `x-api-key` is not), to wherever it points."""
    elsewhere = FakeOpenAI()
    server = await aiohttp_server(make_fake_app(elsewhere))
    gateway.fake.status = redirect
    gateway.fake.error_headers = {"Location": str(server.make_url("/v1/chat/completions"))}
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    check(status, payload, headers, 502, "upstream_error", "upstream_redirect")
    assert "providers.fake.base_url" in payload["error"]["message"]
    assert elsewhere.requests == [] and len(gateway.fake.requests) == 1
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/v1/credits", headers=gateway.auth()) as r:
        credits = (await r.json())["data"]
    assert credits["total_usage"] == 0 and credits["total_credits"] == 10  # nothing charged, the hold given back


async def test_a_provider_key_cut_short_with_the_error_text_is_still_redacted(
        aiohttp_server: Any, log_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """An upstream's error text is cut to 500 characters for the client's message: a key that straddles the
    cut is no longer the value the redactor knows, and a key of no known shape (hex, as Azure's) matches
    no pattern either. The whole body is scrubbed before it is cut."""
    key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
    fake = FakeOpenAI()
    fake.status, fake.error_body = 400, "x" * 480 + " " + key + " was rejected"
    server = await aiohttp_server(make_fake_app(fake))
    text = gateway_config_text(str(server.make_url("/v1"))).replace(PROVIDER_KEY, key)
    gateway = await start_gateway(aiohttp_server, parse(text, {}), fake)
    try:
        status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
        check(status, payload, headers, 400, "upstream_error", None)
        assert "x" * 400 in payload["error"]["message"]  # the upstream's text, cut
        for where in (json.dumps(payload), json.dumps(log_lines())):
            assert key[:8] not in where and key[-8:] not in where
    finally:
        await gateway.close()


async def test_upstream_timeout_is_504(gateway: Gateway) -> None:
    gateway.fake.delay_before_headers_s = 5  # first_byte_s is 1.5 in the test config
    status, payload, headers = await post(gateway, {"model": "fake/gpt-4o", "messages": MESSAGES})
    check(status, payload, headers, 504, "timeout_error", "upstream_timeout")


async def test_unreachable_upstream_is_502(gateway: Gateway) -> None:
    status, payload, headers = await post(gateway, {"model": "dead/model", "messages": MESSAGES})
    check(status, payload, headers, 502, "upstream_error", "upstream_unreachable")


async def test_provider_without_key_names_the_variable(gateway: Gateway) -> None:
    status, payload, headers = await post(gateway, {"model": "nokey/model", "messages": MESSAGES})
    check(status, payload, headers, 503, "service_unavailable", "provider_not_configured")
    assert "NOKEY_API_KEY" in payload["error"]["message"]
    assert gateway.fake.requests == []


async def test_stream_broken_mid_way_ends_with_an_error_event(gateway: Gateway) -> None:
    gateway.fake.close_mid_stream_after = 4
    client = gateway.openai()
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    received = 0
    with pytest.raises(openai.APIError) as info:
        async for _chunk in stream:
            received += 1
    assert received == 4
    assert "upstream" in info.value.message


async def test_stream_stalled_upstream_ends_with_a_timeout_event(gateway: Gateway) -> None:
    gateway.fake.stall_after_chunks = 2  # between_chunks_s is 1.5 in the test config
    client = gateway.openai()
    stream = await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                                  stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _chunk in stream:
            pass
    assert "silent" in info.value.message


async def test_upstream_error_before_stream_keeps_its_status(gateway: Gateway) -> None:
    gateway.fake.status, gateway.fake.error_body = _wire_error("error-429-rate-limit-exceeded.json")
    client = gateway.openai()
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="fake/gpt-4o", messages=MESSAGES,  # type: ignore[arg-type]
                                             stream=True)


async def test_unknown_path_and_method_are_openai_shaped(gateway: Gateway) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/v1/nothing-here", headers=gateway.auth()) as r:
            payload = await r.json()
            assert r.status == 404
            validate(payload, "ErrorResponse")
        async with http.get(gateway.url + "/v1/chat/completions", headers=gateway.auth()) as r:
            assert r.status == 405
            validate(await r.json(), "ErrorResponse")


async def test_gemini_refusing_the_operators_key_is_the_operators_502(api_gateway: Gateway) -> None:
    """Gemini refuses a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID (wire:
    gemini/googleai/unary-failure-api-key.json), not 401/403: with the configured key that is the operator's
    problem, a 502 upstream_auth_failed, not a 400 the client cannot fix."""
    ups = api_gateway.extra["upstreams"]
    ups.gemini.status = 400
    ups.gemini.error_body = json.loads((SHARED / "wire/gemini/googleai/unary-failure-api-key.json").read_text())
    with pytest.raises(openai.APIStatusError) as info:
        await api_gateway.openai().chat.completions.create(model="google/flash", messages=MESSAGES)  # type: ignore[arg-type]
    assert (info.value.status_code, info.value.code) == (502, "upstream_auth_failed"), info.value.body



def _codes_given(tree: ast.AST, classes: dict[str, type[errors.GatewayError]]) -> set[str]:
    """The error codes one module can produce: each `code=` a gateway error is made with (every string an
    expression there may give), else its class's default; a class listed in a tuple (a status -> class table)
    is made with its default."""
    given: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
            code = next((k.value for k in node.keywords if k.arg == "code"), None)
            if code is None:
                given.add(str(classes[node.func.id].code))
            else:
                given |= {c.value for c in ast.walk(code) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        elif isinstance(node, ast.Tuple):
            given |= {str(classes[e.id].code) for e in node.elts if isinstance(e, ast.Name) and e.id in classes}
    return given - {"None"}


def test_every_error_code_the_gateway_gives_is_in_the_readmes_tables() -> None:
    """The README's error table is the contract clients code against: a code the gateway produces that it does
    not list is one no client knows to expect."""
    classes = {name: cls for name, cls in vars(errors).items()
               if isinstance(cls, type) and issubclass(cls, errors.GatewayError)}
    given = set().union(*(_codes_given(ast.parse(path.read_text()), classes)
                          for package in ("gateway", "providers", "egress") for path in (ROOT / package).rglob("*.py")))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| case | status | type / code |"):readme.index("Once a stream's headers went out")]
    assert {"upstream_timeout", "not_found", "invalid_request", "request_timeout"} <= given  # the scan sees them
    unlisted = given - set(re.findall(r"`([a-z_]+)`", table))
    assert not unlisted, f"codes the README's error table does not list: {sorted(unlisted)}"
