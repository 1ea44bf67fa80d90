"""The command line as an operator uses it: check-config, keys, serve, SIGHUP reload — real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import ROOT, GatewayProcess, gateway_config_text, run_cli

from gateway import keys

MESSAGES = [{"role": "user", "content": "hi"}]


def test_check_config_accepts_the_shipped_config() -> None:
    result = run_cli("check-config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_names_every_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(gateway_config_text("http://127.0.0.1:9/v1").replace("input_per_mtok: 1.25", "input_per_mtok: -3")
                   .replace("kind: openai\n    base_url", "kind: nope\n    base_url"))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert "models.fake/gpt-5.price.input_per_mtok: must be a number >= 0" in result.stderr
    assert "providers.fake.kind: must be one of" in result.stderr


@pytest.fixture
def redis_config(tmp_path: Path, redis_url: str, fake_openai: tuple[Any, str]) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(fake_openai[1], "${REDIS_URL}", prefix=f"cli{uuid.uuid4().hex}:"))
    return path


def test_keys_lifecycle(redis_config: Path, redis_url: str) -> None:
    env = {"REDIS_URL": redis_url}
    created = run_cli("keys", "create", "--config", str(redis_config), "--name", "alice", "--balance", "5.25",
                      "--rpm", "7", "--models", "fake/*,local/*", "--json", env=env)
    assert created.returncode == 0, created.stderr
    record = json.loads(created.stdout)
    assert keys.is_well_formed(record["key"])
    assert record["name"] == "alice" and record["balance"] == 5.25 and record["rpm"] == 7
    assert record["models"] == ["fake/*", "local/*"]

    listed = json.loads(run_cli("keys", "list", "--config", str(redis_config), "--json", env=env).stdout)
    assert [k["id"] for k in listed] == [record["id"]]
    assert record["key"] not in json.dumps(listed)  # listing never shows the key, only its prefix
    assert listed[0]["prefix"] == record["key"][:8]

    topped = run_cli("keys", "topup", "--config", str(redis_config), record["id"], "1.5", env=env)
    assert topped.returncode == 0 and "6.75" in topped.stdout
    assert run_cli("keys", "disable", "--config", str(redis_config), record["id"], env=env).returncode == 0
    listed = json.loads(run_cli("keys", "list", "--config", str(redis_config), "--json", env=env).stdout)
    assert listed[0]["disabled"] is True and listed[0]["balance"] == 6.75
    missing = run_cli("keys", "topup", "--config", str(redis_config), "key_nope", "1", env=env)
    assert missing.returncode == 1 and "no key" in missing.stderr


def test_keys_on_the_memory_store_say_why_not(tmp_path: Path) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1"))
    result = run_cli("keys", "list", "--config", str(path))
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr


async def _get(url: str, key: str, path: str = "/v1/models") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + path,
                                                         headers={"Authorization": f"Bearer {key}"}) as r:
        return r.status, await r.json()


async def test_serve_with_redis_keys_and_sighup_reload(redis_config: Path, redis_url: str) -> None:
    env = {"REDIS_URL": redis_url}
    created = run_cli("keys", "create", "--config", str(redis_config), "--name", "bob", "--balance", "1",
                      "--json", env=env)
    key = json.loads(created.stdout)
    with GatewayProcess(redis_config, env) as gw:
        status, body = await _get(gw.url, key["key"])
        assert status == 200 and "fake/gpt-4o" in {m["id"] for m in body["data"]}

        # a valid new config: swapped in whole on SIGHUP
        text = redis_config.read_text()
        redis_config.write_text(text.replace("  dead/model: {}", "  dead/model: {}\n  fake/new: {}"))
        gw.signal(signal.SIGHUP)
        assert await _eventually(lambda: _has_model(gw.url, key["key"], "fake/new"))

        # an invalid one: refused, logged with its problem, the old config stays
        text = redis_config.read_text()
        redis_config.write_text(text.replace("  fake/new: {}", "  fake/new: {price: {input_per_mtok: -1}}"))
        gw.signal(signal.SIGHUP)
        assert await _eventually(lambda: _logged(gw, "config reload failed; keeping the old config"))
        failed = next(line for line in gw.log() if line["event"] == "config reload failed; keeping the old config")
        assert any("models.fake/new.price.input_per_mtok" in p for p in failed["problems"])
        assert await _has_model(gw.url, key["key"], "fake/new")

        # the CLI and the server share one store: a disabled key is refused by the running server
        redis_config.write_text(text)  # the valid file again, for the CLI
        disabled = run_cli("keys", "disable", "--config", str(redis_config), key["id"], env=env)
        assert disabled.returncode == 0, disabled.stderr
        assert await _eventually(lambda: _status_is(gw.url, key["key"], 403))
        assert key["key"] not in gw.stdout() + gw.stderr()
    assert gw.proc is not None and gw.proc.returncode == 0


async def test_serve_on_the_memory_store_prints_a_starter_key(tmp_path: Path, fake_openai: tuple[Any, str]) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(gateway_config_text(fake_openai[1]))
    with GatewayProcess(path) as gw:
        assert await _eventually(lambda: _stderr_has(gw, "starter key"))
        starter = next(word for word in gw.stderr().split() if keys.is_well_formed(word))
        status, _ = await _get(gw.url, starter)
        assert status == 200
        assert any("memory store in use" in line["event"] for line in gw.log())
        assert starter not in gw.stdout()  # printed to the terminal once, never into the log


async def _has_model(url: str, key: str, model: str) -> bool:
    status, body = await _get(url, key)
    return status == 200 and model in {m["id"] for m in body["data"]}


async def _status_is(url: str, key: str, status: int) -> bool:
    return (await _get(url, key))[0] == status


async def _logged(gw: GatewayProcess, event: str) -> bool:
    return any(line["event"] == event for line in gw.log())


async def _stderr_has(gw: GatewayProcess, text: str) -> bool:
    return text in gw.stderr()


async def _eventually(check: Any, timeout: float = 10) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.1)
    return False
