"""A running gateway in front of a fake OpenAI upstream, for end-to-end tests.

The gateway is the real app (`create_app`) on a real loopback port; clients are the official SDKs or
plain aiohttp; the store is a real redis-server or the memory store.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web
from fakes.openai_upstream import FakeOpenAI
from openai import AsyncOpenAI

from gateway import keys
from gateway.app import create_app
from gateway.config import Config, parse
from gateway.state import RUNTIME

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PROVIDER_KEY = "sk-fake-provider-key-0123456789abcdef"
_SCHEMAS = json.loads((SHARED / "openai-schemas.json").read_text())


def validate(obj: Any, root: str) -> None:
    """Raise unless `obj` validates against OpenAI's own schema `root`."""
    schema = {"$schema": _SCHEMAS["$schema"], "$defs": _SCHEMAS["$defs"], "$ref": f"#/$defs/{root}"}
    jsonschema.Draft202012Validator(schema).validate(obj)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_config(upstream_url: str, store_url: str = "", prefix: str = "gw:", **server: Any) -> Config:
    server_cfg = {"max_body_bytes": 65536, "sse_keepalive_s": 0.2, **server}
    text = f"""
server: {json.dumps(server_cfg)}
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
  nokey/model: {{}}
  local/llama: {{upstream: llama3.2}}
  dead/model: {{}}
"""
    return parse(text, {})


@dataclass
class Gateway:
    url: str  # http://127.0.0.1:PORT
    app: web.Application
    fake: FakeOpenAI
    key: str = ""
    key_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def openai(self, **kwargs: Any) -> AsyncOpenAI:
        return AsyncOpenAI(base_url=self.url + "/v1", api_key=kwargs.pop("api_key", self.key), max_retries=0,
                           **kwargs)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def add_key(self, name: str = "test", **kwargs: Any) -> tuple[str, str]:
        plain, record = keys.new_record(name, kwargs.pop("balance", 10_000_000_000), **kwargs)
        await self.app[RUNTIME].store.create_key(record)
        return plain, record.id


async def start_gateway(aiohttp_server: Any, config: Config, fake: FakeOpenAI) -> Gateway:
    app = create_app(config)
    server = await aiohttp_server(app)
    gw = Gateway(url=str(server.make_url("")).rstrip("/"), app=app, fake=fake)
    gw.key, gw.key_id = await gw.add_key()
    return gw
