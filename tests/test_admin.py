"""The admin API (the CLI's key operations over HTTP) and where /metrics is served."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import GatewayProcess, gateway_config_text

from gateway import keys

ADMIN = "admin-token-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]


async def call(gw: Any, method: str, path: str, body: Any = None, token: str | None = ADMIN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(method, gw.url + path, json=body,
                                                               headers=headers) as r:
        return r.status, await r.json()


async def test_admin_key_lifecycle(make_gateway: Any) -> None:
    gw = await make_gateway(admin_token=ADMIN)
    status, created = await call(gw, "POST", "/admin/keys", {"name": "carol", "balance": "2.5", "rpm": 5,
                                                              "models": ["fake/*"]})
    assert status == 201 and keys.is_well_formed(created["key"])
    assert created["balance"] == 2.5 and created["credits"] == 2.5 and created["rpm"] == 5
    status, listed = await call(gw, "GET", "/admin/keys")
    assert status == 200 and created["id"] in {k["id"] for k in listed["data"]}
    assert created["key"] not in json.dumps(listed)  # listed by prefix only
    # the key works for clients
    done = await gw.openai(api_key=created["key"]).chat.completions.create(model="fake/gpt-4o",  # type: ignore[arg-type]
                                                                           messages=MESSAGES)
    assert done.choices[0].message.content
    status, topped = await call(gw, "POST", f"/admin/keys/{created['id']}/topup", {"amount": 1})
    assert status == 200 and 3.4 < topped["balance"] <= 3.5
    status, _ = await call(gw, "POST", f"/admin/keys/{created['id']}/disable")
    assert status == 200
    with pytest.raises(Exception) as info:
        await gw.openai(api_key=created["key"]).chat.completions.create(model="fake/gpt-4o",  # type: ignore[arg-type]
                                                                        messages=MESSAGES)
    assert getattr(info.value, "status_code", None) == 403


async def test_a_top_up_past_what_a_key_can_hold_is_refused_in_dollars(make_gateway: Any) -> None:
    gw = await make_gateway(admin_token=ADMIN)
    status, created = await call(gw, "POST", "/admin/keys", {"name": "whale", "balance": 9_000_000})
    assert status == 201
    status, refused = await call(gw, "POST", f"/admin/keys/{created['id']}/topup", {"amount": 8_000})
    assert status == 400 and refused["error"]["code"] == "invalid_value"
    assert "past the most a key can hold, $9007199.254740991 ever granted (balance $9000000" in \
        refused["error"]["message"]
    status, listed = await call(gw, "GET", "/admin/keys")
    assert [k["balance"] for k in listed["data"] if k["id"] == created["id"]] == [9_000_000]
    status, topped = await call(gw, "POST", f"/admin/keys/{created['id']}/topup", {"amount": 7_000})
    assert status == 200 and topped["balance"] == 9_007_000


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    pytest.param("/admin/keys", {"balance": 1}, 400, "missing_required_parameter", id="no-name"),
    pytest.param("/admin/keys", {"name": "x", "balance": "lots"}, 400, "invalid_value", id="bad-balance"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "rpm": 0}, 400, "invalid_value", id="bad-rpm"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1e30}, 400, "invalid_value", id="balance-beyond-int64"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "models": [""]}, 400, "invalid_type", id="empty-glob"),
    # a falsy non-array is no restriction list either: it must not make a key that may use every model
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "models": ""}, 400, "invalid_type", id="models-empty"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "models": {}}, 400, "invalid_type", id="models-object"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "models": False}, 400, "invalid_type", id="models-false"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "max_streams": 2**60}, 400, "invalid_value",
                 id="cap-beyond-what-the-store-counts"),
    pytest.param("/admin/keys", {"name": "x", "balance": 1, "rpd": 2**53}, 400, "invalid_value",
                 id="limit-beyond-what-the-store-counts"),
    pytest.param("/admin/keys/key_nope/topup", {"amount": 1}, 404, "key_not_found", id="unknown-key"),
    pytest.param("/admin/keys/key_nope/disable", None, 404, "key_not_found", id="unknown-key-disable"),
])
async def test_admin_errors(make_gateway: Any, path: str, body: Any, status: int, code: str) -> None:
    gw = await make_gateway(admin_token=ADMIN)
    got, payload = await call(gw, "POST", path, body)
    assert (got, payload["error"]["code"]) == (status, code)


@pytest.mark.parametrize("name", [
    pytest.param("a\nkey_fake  gw-x", id="newline"),
    pytest.param("a\rb", id="carriage-return"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1b[2Jb", id="escape"),
    pytest.param("a\x85b", id="next-line"),
    pytest.param("a\u2028b", id="line-separator"),
])
async def test_a_key_name_with_a_control_character_is_refused(make_gateway: Any, name: str) -> None:
    """`keys list` prints one key a line: a line break (or another control character) in a name would
    print lines of its own, looking like another key or a log line. Refused, naming `name`; nothing made."""
    gw = await make_gateway(admin_token=ADMIN)
    status, payload = await call(gw, "POST", "/admin/keys", {"name": name, "balance": 1})
    assert status == 400, payload
    assert (payload["error"]["type"], payload["error"]["param"], payload["error"]["code"]) == \
        ("invalid_request_error", "name", "invalid_value")
    assert "control character" in payload["error"]["message"]
    status, listed = await call(gw, "GET", "/admin/keys")
    assert status == 200 and name not in {k["name"] for k in listed["data"]}


async def test_admin_needs_the_admin_token_never_a_client_key(make_gateway: Any) -> None:
    gw = await make_gateway(admin_token=ADMIN)
    for token in (None, gw.key, "wrong"):
        status, payload = await call(gw, "GET", "/admin/keys", token=token)
        assert status == 401 and payload["error"]["code"] == "invalid_admin_token"
    off = await make_gateway()
    status, payload = await call(off, "GET", "/admin/keys")
    assert status == 404 and payload["error"]["code"] == "admin_disabled"


async def raw_get(url: str, path: str, header: bytes) -> tuple[int, Any]:
    """GET with one header line sent as raw bytes (no client library sends bytes that are not UTF-8)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: gw\r\n" + header + b"\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize(("path", "header", "code"), [
    pytest.param("/admin/keys", b"Authorization: Bearer \xff" + ADMIN.encode(), "invalid_admin_token", id="admin"),
    pytest.param("/metrics", b"Authorization: Bearer \xfe\xff", "invalid_metrics_token", id="metrics"),
    pytest.param("/v1/models", b"Authorization: Bearer gw-\xff\xfe", "invalid_api_key", id="client"),
    pytest.param("/v1/messages/count_tokens", b"x-api-key: gw-\xc3", "invalid_api_key", id="anthropic-header"),
])
async def test_a_token_that_is_not_utf8_is_a_401_not_a_crash(make_gateway: Any, path: str, header: bytes,
                                                             code: str) -> None:
    """Header bytes that are not UTF-8 reach the handlers as lone surrogates: the token is still only a
    wrong token (401), never a 500 from encoding it for the comparison or the hash."""
    gw = await make_gateway(admin_token=ADMIN, metrics_token="metrics-tok-123")
    status, body = await raw_get(gw.url, path, header)
    if path.startswith("/v1/messages"):  # Anthropic's error shape there
        assert (status, body["error"]["type"], body["error"]["code"]) == (401, "authentication_error", code)
    else:
        assert (status, body["error"]["code"]) == (401, code)


async def test_metrics_on_their_own_protected_listener(tmp_path: Path, redis_url: str) -> None:
    port = GatewayProcess(tmp_path / "x.yaml").port  # a free port for the metrics listener
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1", redis_url, f"m{uuid.uuid4().hex}:",
                                        metrics_listen=f"127.0.0.1:{port}", metrics_token="metrics-tok-123"))
    with GatewayProcess(path) as gw:
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.url + "/metrics") as r:
                assert r.status == 404  # moved off the main listener
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 401
            async with http.get(f"http://127.0.0.1:{port}/metrics",
                                headers={"Authorization": "Bearer metrics-tok-123"}) as r:
                assert r.status == 200 and "gateway_config_age_seconds" in await r.text()


async def test_admin_on_its_own_listener_shared_with_metrics(tmp_path: Path, redis_url: str) -> None:
    port = GatewayProcess(tmp_path / "x.yaml").port  # a free port for the side listener
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1", redis_url, f"a{uuid.uuid4().hex}:",
                                        admin_token=ADMIN, admin_listen=f"127.0.0.1:{port}",
                                        metrics_listen=f"127.0.0.1:{port}"))
    side = f"http://127.0.0.1:{port}"
    with GatewayProcess(path) as gw:
        async with aiohttp.ClientSession() as http:
            async with http.get(gw.url + "/admin/keys", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"  # moved off
            async with http.get(side + "/admin/keys") as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_admin_token"
                assert r.headers["X-Request-Id"].startswith("req_")
            async with http.post(side + "/admin/keys", json={"name": "dave", "balance": 1},
                                 headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                assert r.status == 201
                created = await r.json()
            async with http.get(side + "/metrics") as r:
                assert r.status == 200 and "gateway_config_age_seconds" in await r.text()
            async with http.get(side + "/v1/models", headers={"Authorization": f"Bearer {created['key']}"}) as r:
                assert r.status == 404  # the client API stays on the main listener
            async with http.get(gw.url + "/v1/models", headers={"Authorization": f"Bearer {created['key']}"}) as r:
                assert r.status == 200  # where the key made on the side listener works
