"""A running gateway in front of a fake OpenAI upstream, for end-to-end tests.

The gateway is the real app (`create_app`) on a real loopback port; clients are the official SDKs or
plain aiohttp; the store is a real redis-server or the memory store.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import secret_audit_plugin
import yaml
from aiohttp import web
from fakes.openai_upstream import FakeOpenAI
from openai import AsyncOpenAI

from gateway import keys
from gateway.app import create_app
from gateway.config import Config
from gateway.config_load import parse
from gateway.state import RUNTIME
from gateway.store import RedisStore

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PROVIDER_KEY = "sk-fake-provider-key-0123456789abcdef"
_SCHEMAS = json.loads((SHARED / "openai-schemas.json").read_text())


def validate(obj: Any, root: str) -> None:
    """Raise unless `obj` validates against OpenAI's own schema `root`."""
    schema = {"$schema": _SCHEMAS["$schema"], "$defs": _SCHEMAS["$defs"], "$ref": f"#/$defs/{root}"}
    jsonschema.Draft202012Validator(schema).validate(obj)


@functools.cache
def _spec_defs() -> dict[str, Any]:
    """OpenAI's full OpenAPI 3.1 spec's schemas (a superset of openai-schemas.json: moderations, images)."""
    schemas = yaml.load((SHARED / "openai-openapi.yaml").read_text(), Loader=yaml.CSafeLoader)["components"]["schemas"]
    text = json.dumps(schemas, default=str).replace('"#/components/schemas/', '"#/$defs/')
    return dict(json.loads(text))


def validate_spec(obj: Any, root: str) -> None:
    """Raise unless `obj` validates against schema `root` of OpenAI's OpenAPI spec."""
    jsonschema.Draft202012Validator({"$defs": _spec_defs(), "$ref": f"#/$defs/{root}"}).validate(obj)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(upstream_url: str, store_url: str = "", prefix: str = "gw:",
                   billing: dict[str, Any] | None = None, retries: dict[str, Any] | None = None,
                   **server: Any) -> Config:
    return parse(gateway_config_text(upstream_url, store_url, prefix, billing, retries, **server), {})


def gateway_config_text(upstream_url: str, store_url: str = "", prefix: str = "gw:",
                        billing: dict[str, Any] | None = None, retries: dict[str, Any] | None = None,
                        **server: Any) -> str:
    """The YAML of the test gateway: a working fake provider, a keyless one, a local one and a dead one."""
    server_cfg = {"max_body_bytes": 65536, "sse_keepalive_s": 0.2, **server}
    billing_cfg = {"hold_ttl_s": 600, "key_cache_s": 2, **(billing or {})}
    text = f"""
server: {json.dumps(server_cfg)}
billing: {json.dumps(billing_cfg)}
retries: {json.dumps(retries or {"max_retries": 0})}  # error tests see one attempt unless they ask for more
limits: {{default: {{rpm: 60, rpd: 10000}}}}
store: {{url: "{store_url}", prefix: "{prefix}"}}
providers:
  fake:
    kind: openai
    base_url: "{upstream_url}"
    api_key: "{PROVIDER_KEY}"
    timeouts: {{connect_s: 1, first_byte_s: 1.5, between_chunks_s: 1.5}}
  nokey: {{kind: openai, base_url: "{upstream_url}", api_key: "${{NOKEY_API_KEY:-}}"}}
  local: {{kind: openai, base_url: "{upstream_url}"}}
  dead:
    kind: openai
    base_url: "http://127.0.0.1:{closed_port()}/v1"
    timeouts: {{connect_s: 1}}
models:
  fake/gpt-5:
    upstream: gpt-5
    price: {{input_per_mtok: 1.25, output_per_mtok: 10, cached_input_per_mtok: 0.125}}
    max_output_tokens: 128000
    context_window: 400000
    vision: true
    params: {{max_tokens_field: max_completion_tokens, drop: [temperature, top_p]}}
    aliases: [gpt5]
  fake/gpt-4o: {{price: {{input_per_mtok: 2.5, output_per_mtok: 10}}}}
  fake/metered:  # input free, so a request with max_tokens 10 holds exactly what it costs (10 tokens out)
    upstream: gpt-4o
    price: {{input_per_mtok: 0, output_per_mtok: 10}}
  fake/limited: {{upstream: gpt-4o, price: {{input_per_mtok: 1, output_per_mtok: 2}}, limits: {{rpm: 2}}}}
  nokey/model: {{}}
  local/llama: {{upstream: llama3.2}}
  dead/model: {{}}
"""
    return text


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT
    app: web.Application
    fake: FakeOpenAI
    key: str = ""
    key_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    clients: list[AsyncOpenAI] = field(default_factory=list)

    def openai(self, **kwargs: Any) -> AsyncOpenAI:
        """An official SDK client for this gateway; closed with the gateway fixture."""
        kwargs.setdefault("max_retries", 0)
        client = AsyncOpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", self.key), **kwargs)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def add_key(self, name: str = "test", **kwargs: Any) -> tuple[str, str]:
        plain, record = keys.new_record(name, kwargs.pop("balance", 10_000_000_000), **kwargs)
        secret_audit_plugin.register(plain)
        await self.app[RUNTIME].store.create_key(record)
        return plain, record.id


async def start_gateway(aiohttp_server: Any, config: Config, fake: FakeOpenAI) -> Gateway:
    app = create_app(config)
    server = await aiohttp_server(app)
    gw = Gateway(url=str(server.make_url("")).rstrip("/"), app=app, fake=fake)
    gw.key, gw.key_id = await gw.add_key()
    return gw


# --- the gateway as a real process (`python -m gateway ...`) ------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], cwd=ROOT, env=_env(env), text=True,
                          capture_output=True, timeout=timeout, check=False)


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k != "REDIS_URL"}
    return {**env, **(extra or {})}


class GatewayProcess:
    """`python -m gateway serve` on a free loopback port; its stdout/stderr kept in files for assertions."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = config_path.with_suffix(f".{self.port}.out")
        self.stderr_path = config_path.with_suffix(f".{self.port}.err")
        self._env = env
        self.extra_args: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def python_m_gateway() -> list[str]:
        return [sys.executable, "-m", "gateway"]

    def launch(self) -> subprocess.Popen[bytes]:
        """The process started, without waiting for it to listen."""
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*self.python_m_gateway(), "serve", "--config", str(self.config_path), "--port", str(self.port),
                 *self.extra_args], cwd=ROOT, env=_env(self._env), stdout=out, stderr=err)
        return self.proc

    def start(self, timeout: float = 20) -> GatewayProcess:
        self.launch()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.stderr()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not listen within {timeout}s: {self.stderr()}")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines() if line.startswith("{")]

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def clear_of_minute_boundary(margin_s: float = 8.0) -> None:
    """Rate-limit windows are fixed minutes (store clock = this machine's): start a test well inside one."""
    left = 60 - time.time() % 60
    if left < margin_s:
        await asyncio.sleep(left + 0.2)


async def funded_key(redis_url: str, prefix: str) -> tuple[str, str]:
    """A key with $10 made straight in Redis, for a gateway process started on the same store and prefix."""
    store = RedisStore(redis_url, prefix=prefix)
    plain, record = keys.new_record("funded", 10_000_000_000)
    await store.create_key(record)
    await store.close()
    return plain, record.id


async def trickle(writer: asyncio.StreamWriter, data: bytes, every_s: float) -> None:
    """Send `data` a byte at a time, `every_s` apart: a slow client, until the gateway hangs up."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(every_s)
