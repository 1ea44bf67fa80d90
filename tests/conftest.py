"""Shared fixtures. Sections: real Redis (one server per session) · stores (both backends)."""

from __future__ import annotations

import io
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anthropic
import pytest
import secret_audit_plugin
from apis_config import Upstreams, config_doc
from fakes.clock import FakeClock
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as make_fake_app
from harness import PROVIDER_KEY, Gateway, gateway_config, start_gateway
from redis_server import RedisServer, find_binary

from gateway.config_load import parse
from gateway.logging import configure as configure_logging
from gateway.logging import sink
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


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def clocked_store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, FakeClock | None]]:
    """A fresh store of each backend: memory on a fake clock, redis (on its real clock) on a unique prefix."""
    clock = None
    if request.param == "memory":
        clock = FakeClock()
        backend: Store = MemoryStore(clock=clock)
    else:
        backend = RedisStore(request.getfixturevalue("redis_url"), prefix=f"t{uuid.uuid4().hex}:")
    try:
        yield backend, clock
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
                  fake_openai: tuple[FakeOpenAI, str]) -> AsyncIterator[Gateway]:
    """The real gateway app on a loopback port with one funded key, on each store backend."""
    fake, upstream_url = fake_openai
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    config = gateway_config(upstream_url, store_url, prefix=f"t{uuid.uuid4().hex}:")
    gateway = await start_gateway(aiohttp_server, config, fake)
    yield gateway
    await gateway.close()


# --- logs -------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    """The gateway's real structlog setup for the whole session, its lines discarded unless a test reads them."""
    configure_logging("debug")
    # GW_TEST_LOGS=1 shows the gateway's lines on stderr when debugging a test
    sink.target = sys.stderr.buffer if os.environ.get("GW_TEST_LOGS") else open(os.devnull, "wb")  # noqa: SIM115
    if secret_audit_plugin.ENABLED:  # GW_SECRET_AUDIT=1: the whole session's logs searched for secrets
        secret_audit_plugin.start()
        secret_audit_plugin.register(PROVIDER_KEY)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if secret_audit_plugin.ENABLED:
        secret_audit_plugin.finish(session)


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Capture the gateway's JSON log lines; call the fixture's value to get them parsed so far."""
    buffer, previous = io.BytesIO(), sink.target
    sink.target = buffer
    try:
        yield lambda: [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    finally:
        sink.target = previous


@pytest.fixture
async def make_gateway(aiohttp_server: Any, fake_openai: tuple[FakeOpenAI, str]) -> AsyncIterator[Any]:
    """Start gateways with a config of the test's choosing: `await make_gateway(store_url=..., billing=...)`."""
    fake, upstream_url = fake_openai
    made: list[Gateway] = []

    async def make(**options: Any) -> Gateway:
        gateway = await start_gateway(aiohttp_server, gateway_config(upstream_url, **options), fake)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.close()


# --- a gateway in front of all three fake provider kinds (both stores) -------------------------------


@pytest.fixture
async def all_upstreams(aiohttp_server: Any) -> Upstreams:
    """Fake OpenAI, Anthropic and Gemini upstreams on loopback (see `apis_config` for the models)."""
    ups = Upstreams()
    ups.urls["anthropic"] = str((await aiohttp_server(ups.anthropic_app())).make_url("")).rstrip("/")
    ups.urls["gemini"] = str((await aiohttp_server(ups.gemini_app())).make_url("")).rstrip("/")
    ups.urls["openai"] = str((await aiohttp_server(ups.openai_app())).make_url("/v1"))
    return ups


@pytest.fixture(params=["memory", "redis"], ids=["memory", "redis"])
async def api_gateway(request: pytest.FixtureRequest, aiohttp_server: Any,
                      all_upstreams: Upstreams) -> AsyncIterator[Gateway]:
    """The gateway with every endpoint's models configured (`apis_config.config_doc`), on each store."""
    store_url = "" if request.param == "memory" else request.getfixturevalue("redis_url")
    doc = config_doc(all_upstreams.urls, store_url, f"t{uuid.uuid4().hex}:")
    gateway = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
    gateway.extra["upstreams"] = all_upstreams
    gateway.extra["doc"] = doc
    yield gateway
    await gateway.close()


@pytest.fixture
async def claude(api_gateway: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official anthropic SDK on `api_gateway` (no retries of its own)."""
    client = anthropic.AsyncAnthropic(base_url=api_gateway.url, api_key=api_gateway.key, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def make_api_gateway(aiohttp_server: Any, all_upstreams: Upstreams) -> AsyncIterator[Any]:
    """`await make_api_gateway({model id: fields to merge})`: `api_gateway`'s config with model changes (and
    presets added, provider fields merged)."""
    made: list[Gateway] = []

    async def make(models: dict[str, dict[str, Any]], store_url: str = "", presets: dict[str, Any] | None = None,
                   providers: dict[str, dict[str, Any]] | None = None) -> Gateway:
        doc = config_doc(all_upstreams.urls, store_url, f"t{uuid.uuid4().hex}:")
        for mid, fields in models.items():
            doc["models"][mid] = {**doc["models"].get(mid, {}), **fields}
        for name, fields in (providers or {}).items():
            doc["providers"][name] = {**doc["providers"][name], **fields}
        doc["presets"].update(presets or {})
        gateway = await start_gateway(aiohttp_server, parse(json.dumps(doc), {}), all_upstreams.openai)
        gateway.extra.update(upstreams=all_upstreams, doc=doc)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        await gateway.close()


@pytest.fixture
async def claude_of() -> AsyncIterator[Any]:
    """`claude_of(gateway)`: the official Anthropic SDK pointed at that gateway, closed after the test."""
    clients: list[anthropic.AsyncAnthropic] = []

    def make(gateway: Gateway) -> anthropic.AsyncAnthropic:
        clients.append(anthropic.AsyncAnthropic(base_url=gateway.url, api_key=gateway.key, max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def started(aiohttp_server: Any) -> AsyncIterator[Callable[..., Any]]:
    """`await started(config, fake_openai)`: a gateway of the test's own config, closed after the test."""
    made: list[Gateway] = []

    async def start(cfg: Any, fake: FakeOpenAI) -> Gateway:
        gw = await start_gateway(aiohttp_server, cfg, fake)
        made.append(gw)
        return gw

    yield start
    for gw in made:
        await gw.close()
