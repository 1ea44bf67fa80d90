"""Shared fixtures. Sections: real Redis (one server per session) · stores (both backends)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as make_fake_app
from harness import Gateway, gateway_config, start_gateway
from redis_server import RedisServer, find_binary

from gateway.store import MemoryStore, RedisStore, Store

# --- real Redis -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the whole session; tests keep apart by key prefix, not by server."""
    if find_binary() is None:
        pytest.fail(
            "redis-server is not installed: run `make test` (it installs it) or apt-get install redis-server"
        )
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


# --- stores -----------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A fresh, empty store of each backend; the redis one gets a unique prefix so tests never meet."""
    if request.param == "memory":
        backend: Store = MemoryStore()
    else:
        backend = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex}:")
    try:
        yield backend
    finally:
        await backend.close()


# --- a running gateway in front of a fake OpenAI upstream (both stores) -----------------------------


@pytest.fixture
async def fake_openai(aiohttp_server: Any) -> AsyncIterator[tuple[FakeOpenAI, str]]:
    """A fake OpenAI upstream on loopback: the fake's controls and its /v1 base URL."""
    fake = FakeOpenAI()
    server = await aiohttp_server(make_fake_app(fake))
    yield fake, str(server.make_url("/v1"))


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def gateway(request: pytest.FixtureRequest, aiohttp_server: Any,
                  fake_openai: tuple[FakeOpenAI, str]) -> Gateway:
    """The real gateway app on a loopback port with one funded key, on each store backend."""
    fake, upstream_url = fake_openai
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    config = gateway_config(upstream_url, store_url, prefix=f"t{uuid.uuid4().hex}:")
    return await start_gateway(aiohttp_server, config, fake)
