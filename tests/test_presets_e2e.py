"""Presets (`@preset/<name>`: a model plus a system prompt and fixed parameters) and per-key model globs,
through the running gateway with the official SDKs; keys made by the real command line."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from apis_config import PRESET_SYSTEM
from harness import Gateway, run_cli

from gateway.config import ConfigError
from gateway.config_load import parse

MESSAGES = [{"role": "user", "content": "hi"}]

ASK = [{"role": "system", "content": "Reply in French."}, {"role": "user", "content": "Hello"}]


async def test_preset_system_prompt_comes_first_and_params_win(api_gateway: Gateway) -> None:
    client = api_gateway.openai()
    done = await client.chat.completions.create(model="@preset/support", messages=ASK,  # type: ignore[arg-type]
                                                temperature=0.9)
    sent = api_gateway.fake.last.body
    assert sent["model"] == "gpt-4o" and sent["temperature"] == 0.1
    assert sent["messages"] == [{"role": "system", "content": PRESET_SYSTEM}, *ASK]
    assert done.model == "oai/gpt-4o"
    assert (done.model_extra or {})["billing"]["request_cost"] > 0


async def test_preset_that_allows_it_lets_the_clients_system_replace_its_own(api_gateway: Gateway) -> None:
    client = api_gateway.openai()
    fake = api_gateway.extra["upstreams"].anthropic
    await client.chat.completions.create(model="@preset/open-support", messages=ASK)  # type: ignore[arg-type]
    assert fake.last.body["system"] == [{"type": "text", "text": "Reply in French."}]
    await client.chat.completions.create(model="@preset/open-support", messages=ASK[1:])  # type: ignore[arg-type]
    assert fake.last.body["system"] == [{"type": "text", "text": PRESET_SYSTEM}]


async def test_preset_in_anthropic_format(api_gateway: Gateway) -> None:
    client = anthropic.AsyncAnthropic(base_url=api_gateway.url, api_key=api_gateway.key, max_retries=0)
    message = await client.messages.create(model="@preset/support", max_tokens=20, system="Reply in French.",
                                           messages=[{"role": "user", "content": "Hello"}])
    await client.close()
    assert message.model == "oai/gpt-4o"
    system = [{"type": "text", "text": PRESET_SYSTEM}, {"type": "text", "text": "Reply in French."}]
    assert api_gateway.fake.last.body["messages"][0] == {"role": "system", "content": system}


async def test_unknown_preset_and_presets_on_other_endpoints(api_gateway: Gateway) -> None:
    client = api_gateway.openai()
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="@preset/nope", messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as info:
        await client.embeddings.create(model="@preset/support", input="x")
    assert info.value.code == "preset_not_supported"


async def test_a_key_may_be_limited_to_a_preset(api_gateway: Gateway) -> None:
    key, _ = await api_gateway.add_key("agent-only", models=("@preset/support",))
    client = api_gateway.openai(api_key=key)
    await client.chat.completions.create(model="@preset/support", messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.chat.completions.create(model="oai/gpt-4o", messages=ASK)  # type: ignore[arg-type]
    assert "oai/gpt-4o" in info.value.message


def test_new_config_keys_are_cross_checked() -> None:
    text = ("providers: {c: {kind: anthropic, base_url: 'https://x'}}\nmodels: {c/m: {completions: native}}\n"
            "presets: {bot: {model: x/y}}\ndefault_models: {images: a/b}\n")
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert "presets.bot.model: no model 'x/y' in models" in str(info.value)
    assert "default_models.images: no model 'a/b' in models" in str(info.value)
    assert "models.c/m.completions: native legacy completions need a provider of kind openai" in str(info.value)


async def test_keys_create_models_glob_from_the_command_line(make_api_gateway: Any, redis_url: str,
                                                             tmp_path: Path) -> None:
    gw = await make_api_gateway({}, store_url=redis_url)
    config = tmp_path / "gw.json"
    config.write_text(json.dumps(gw.extra["doc"]))
    name = f"cli-{uuid.uuid4().hex[:6]}"
    out = await asyncio.to_thread(run_cli, "keys", "create", "--config", str(config), "--name", name,
                                  "--balance", "1", "--models", "oai/*,claude/son*", "--json")
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)["key"]
    client = gw.openai(api_key=key)
    await client.chat.completions.create(model="claude/sonnet", messages=ASK)  # type: ignore[arg-type]
    await client.embeddings.create(model="oai/text-embedding-3-small", input="x")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await client.chat.completions.create(model="google/flash", messages=ASK)  # type: ignore[arg-type]
    assert info.value.code == "model_not_allowed" and "'google/flash'" in info.value.message
    listed = [m.id async for m in client.models.list()]
    assert "google/flash" not in listed and "claude/sonnet" in listed


async def test_a_key_limited_to_a_preset_reaches_no_other_model_through_models(api_gateway: Gateway) -> None:
    """A key allowed only `@preset/support` (oai/gpt-4o) does not get claude/sonnet by listing it in `models`
    and waiting for the preset's model to fail."""
    ups = api_gateway.extra["upstreams"]
    key, _ = await api_gateway.add_key("agent-only", models=("@preset/support",))
    ups.openai.status = 500
    with pytest.raises(openai.APIStatusError):
        await api_gateway.openai(api_key=key).chat.completions.create(
            model="@preset/support", messages=MESSAGES, extra_body={"models": ["claude/sonnet"]})  # type: ignore[arg-type]
    assert len(ups.openai.requests) == 1 and ups.anthropic.requests == []


async def test_preset_params_apply_on_messages_as_on_chat(make_api_gateway: Any) -> None:
    """A preset's chat params (the README's `reasoning_effort: low`) reach a translated route of /v1/messages
    as they reach chat, and never a native Claude route, whose API refuses unknown fields."""
    gw = await make_api_gateway({}, presets={
        "oai": {"model": "oai/gpt-4o", "params": {"reasoning_effort": "low", "temperature": 0.2}},
        "claude": {"model": "claude/sonnet", "params": {"reasoning_effort": "low", "temperature": 0.2}}})
    ups = gw.extra["upstreams"]
    await gw.openai().chat.completions.create(model="@preset/oai", messages=MESSAGES)  # type: ignore[arg-type]
    assert ups.openai.last.body.get("reasoning_effort") == "low"
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=gw.key, max_retries=0)
    try:
        await client.messages.create(model="@preset/oai", max_tokens=10, messages=MESSAGES)  # type: ignore[arg-type]
        translated = ups.openai.last.body
        await client.messages.create(model="@preset/claude", max_tokens=10, messages=MESSAGES)  # type: ignore[arg-type]
        native = ups.anthropic.last.body
    finally:
        await client.close()
    assert (translated.get("reasoning_effort"), translated.get("temperature")) == ("low", 0.2), translated
    assert "reasoning_effort" not in native and native["temperature"] == 0.2, native
