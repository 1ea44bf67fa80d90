"""Keys as a security boundary: malformed keys are refused before any store lookup; one key never reads
another's credits, generations or usage; the admin API never takes a client key."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from harness import PROVIDER_KEY, Gateway

from gateway import keys
from gateway.state import RUNTIME

MESSAGES = [{"role": "user", "content": "hi"}]
ADMIN = "admin-token-for-isolation-0123456789"


def _malformed(key: str) -> list[str]:
    """Strings a scanner or a typo would send: each fails the format or the checksum."""
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")
    swapped = key[:10] + key[11] + key[10] + key[12:] if key[10] != key[11] else key[:10] + "zz" + key[12:]
    return [typo, swapped, key[:-1], key + "0", "gw-" + "A" * 38, key.replace("gw-", "sk-"), PROVIDER_KEY,
            key.upper() if key.upper() != key else key.lower(), "gw-" + "é" * 38, "gw-" + key[3:-6] + "!!!!!!"]


async def _status(gateway: Gateway, token: str, header: str = "Authorization") -> tuple[int, dict[str, Any]]:
    value = f"Bearer {token}" if header == "Authorization" else token
    async with aiohttp.ClientSession() as http, http.get(gateway.url + "/v1/models", headers={header: value}) as r:
        return r.status, await r.json()


@pytest.mark.parametrize("header", ["Authorization", "x-api-key"])
async def test_malformed_keys_are_refused_before_any_store_lookup(gateway: Gateway, header: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store = gateway.app[RUNTIME].store
    lookups: list[str] = []
    original = store.get_key_by_hash

    async def counting(digest: str) -> Any:
        lookups.append(digest)
        return await original(digest)

    monkeypatch.setattr(store, "get_key_by_hash", counting)
    answers = [await _status(gateway, bad, header) for bad in _malformed(gateway.key)]
    assert lookups == []
    assert {status for status, _ in answers} == {401}
    assert len({body["error"]["message"] for _, body in answers}) == 1  # the same 401 as an unknown key
    unknown_status, unknown_body = await _status(gateway, keys.generate(), header)
    assert (unknown_status, unknown_body["error"]["message"]) == (401, answers[0][1]["error"]["message"])
    assert len(lookups) == 1  # a well-formed unknown key does cost one lookup: the counter counts


async def _command_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")


async def test_malformed_keys_send_no_command_to_redis(make_gateway: Any, redis_url: str) -> None:
    """Counted on Redis itself (INFO commandstats): a flood of malformed keys issues no command at all."""
    gw = await make_gateway(store_url=redis_url, prefix="isolation:")
    client = aioredis.from_url(redis_url)
    try:
        before = await _command_calls(client)
        for _ in range(5):
            for bad in _malformed(gw.key):
                assert (await _status(gw, bad))[0] == 401
        assert await _command_calls(client) == before
        assert (await _status(gw, keys.generate()))[0] == 401
        assert await _command_calls(client) > before  # a well-formed key is looked up: the count moves
    finally:
        await client.aclose()


async def test_one_key_never_reads_anothers_records(make_gateway: Any) -> None:
    gw = await make_gateway(admin_token=ADMIN)
    other, other_id = await gw.add_key("b", balance=3_000_000_000)
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + "/v1/chat/completions", headers=gw.auth(other),
                             json={"model": "fake/gpt-4o", "messages": MESSAGES}) as r:
            gen_b = (await r.json())["id"]
        for params in ({"id": gen_b}, {"id": gen_b, "key_id": other_id}, {"id": f"{other_id}:{gen_b}"}):
            async with http.get(gw.url + "/v1/generation", params=params, headers=gw.auth()) as r:  # key A
                assert r.status == 404, params
                assert (await r.json())["error"]["code"] == "generation_not_found"
        async with http.get(gw.url + "/v1/credits", params={"key_id": other_id},
                            headers={**gw.auth(), "X-Key-Id": other_id}) as r:
            credits = (await r.json())["data"]
        assert credits["total_credits"] == 10.0 and credits["total_usage"] == 0  # A's own, not B's
        async with http.get(gw.url + "/v1/generation", params={"id": gen_b}, headers=gw.auth(other)) as r:
            assert r.status == 200  # B reads its own


ADMIN_ROUTES = [("GET", "/admin/keys"), ("POST", "/admin/keys"), ("POST", "/admin/keys/{id}/topup"),
                ("POST", "/admin/keys/{id}/disable"), ("GET", "/admin/egress")]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_admin_api_never_accepts_a_client_key(make_gateway: Any, method: str, path: str) -> None:
    gw = await make_gateway(admin_token=ADMIN)
    url = gw.url + path.format(id=gw.key_id)
    async with aiohttp.ClientSession() as http:
        for headers in (gw.auth(), {"x-api-key": gw.key}, {"Authorization": f"Bearer {gw.key}", "x-api-key": ADMIN},
                        {"Authorization": f"Bearer {ADMIN[:-1]}"}, {"Authorization": f"Bearer {ADMIN}x"}):
            async with http.request(method, url, headers=headers, json={"name": "x", "balance": 1, "amount": 1}) as r:
                assert r.status == 401, headers
                assert (await r.json())["error"]["code"] == "invalid_admin_token"
    record = await gw.app[RUNTIME].store.get_key(gw.key_id)
    assert record is not None and not record.disabled and record.balance == 10_000_000_000
    assert len(await gw.app[RUNTIME].store.list_keys()) == 1
