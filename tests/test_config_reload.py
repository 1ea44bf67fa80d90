"""Config loading, reload and the command line against what the README promises: a file that is not UTF-8, the
key cache after a reload, side listeners fixed at start."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import GatewayProcess, gateway_config_text, run_cli

from gateway.app import reload_config
from gateway.config import ConfigError
from gateway.config_load import load
from gateway.state import RUNTIME

ADMIN = "admin-token-0123456789abcdef"


# --- a config file that is not UTF-8 ------------------------------------------------------------------

NOT_UTF8 = b'server:\n  admin_token: "caf\xe9"\n'  # a Latin-1 editor's save


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8"):
        load(path)


def test_check_config_on_a_non_utf8_file_is_bad_input_without_a_traceback(tmp_path: Path) -> None:
    """README: exit 2 for an invalid config, 'never a traceback'."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(NOT_UTF8)
    result = run_cli("check-config", str(path), timeout=30)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert "latin1.yaml" in result.stderr


async def test_a_reload_of_a_non_utf8_file_keeps_the_old_config(make_gateway: Any, tmp_path: Path) -> None:
    """README: an invalid file is refused, logged with its problems, and the old config stays in force.
    reload_config must say so (False) rather than raise out of the SIGHUP task (which also leaves systemd
    in RELOADING: READY=1 never follows)."""
    gw = await make_gateway()
    path = tmp_path / "latin1.yaml"
    path.write_bytes(NOT_UTF8)
    gw.app[RUNTIME].config_path = str(path)
    assert await reload_config(gw.app) is False


# --- an empty config file ---------------------------------------------------------------------------

EMPTY = {"empty": "", "only-comments": "# to be written\n\n   # later\n", "document-marker": "---\n"}


@pytest.mark.parametrize("text", EMPTY.values(), ids=EMPTY.keys())
def test_an_empty_config_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    """An empty file (a truncated write, a wrong path's placeholder) configures nothing: no provider, no
    model. Taking it for "all defaults" served nothing and said ok."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"empty\.yaml: the file is empty"):
        load(path)


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_check_config_and_serve_refuse_an_empty_file(tmp_path: Path, command: str) -> None:
    """README: an invalid config is exit 2, one message, never a traceback; `serve` refuses it at start."""
    path = tmp_path / "empty.yaml"
    path.write_text(EMPTY["only-comments"])
    args = [command, str(path)] if command == "check-config" else [command, "--config", str(path)]
    result = run_cli(*args, timeout=30)
    assert (result.returncode, result.stdout) == (2, ""), (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert f"{path}: the file is empty" in result.stderr


async def test_a_reload_of_an_empty_file_keeps_the_old_config(make_gateway: Any, tmp_path: Path) -> None:
    gw = await make_gateway()
    before = gw.app[RUNTIME].snapshot.config
    path = tmp_path / "empty.yaml"
    path.write_text(EMPTY["only-comments"])
    gw.app[RUNTIME].config_path = str(path)
    assert await reload_config(gw.app) is False
    assert gw.app[RUNTIME].snapshot.config is before
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/v1/models", headers=gw.auth()) as r:
        assert r.status == 200 and (await r.json())["data"]  # still serving the models it had


# --- the key cache after a reload -------------------------------------------------------------------


async def _models_status(gw: Any) -> int:
    async with aiohttp.ClientSession() as http, http.get(gw.url + "/v1/models", headers=gw.auth()) as r:
        return r.status


async def test_a_reload_shortening_key_cache_s_applies_to_keys_already_cached(
        make_gateway: Any, fake_openai: tuple[Any, str], tmp_path: Path) -> None:
    """README: a reload applies `billing`; key_cache_s is 'disable/top-up visible within this'. After a
    reload to key_cache_s: 0 a disabled key must be refused at once, not after the old 60 s."""
    gw = await make_gateway(billing={"key_cache_s": 60})
    assert await _models_status(gw) == 200  # the key is now cached for 60 s
    await gw.app[RUNTIME].store.set_disabled(gw.key_id, True)
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config_text(fake_openai[1], billing={"key_cache_s": 0}))
    gw.app[RUNTIME].config_path = str(path)
    assert await reload_config(gw.app) is True
    assert await _models_status(gw) == 403


# --- side listeners are fixed at start -------------------------------------------------------------


async def _status(url: str, token: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status


async def _reloaded(gw: GatewayProcess, count: int, timeout: float = 10) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if sum(1 for e in gw.log() if e["event"] == "config reloaded") >= count:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_reload_does_not_move_admin_and_metrics_onto_the_main_listener(tmp_path: Path) -> None:
    """README: `admin_listen` (like `metrics_listen`) 'takes effect at the next start, not at a reload'.
    A reload that clears them must not start serving /admin/* and /metrics on the public listener."""
    port = GatewayProcess(tmp_path / "x.yaml").port
    side = f"http://127.0.0.1:{port}"
    path = tmp_path / "gw.yaml"
    moved = gateway_config_text("http://127.0.0.1:9/v1", admin_token=ADMIN, admin_listen=f"127.0.0.1:{port}",
                                metrics_listen=f"127.0.0.1:{port}")
    path.write_text(moved)
    with GatewayProcess(path) as gw:
        assert await _status(gw.url + "/admin/keys", ADMIN) == 404
        assert await _status(gw.url + "/metrics", "") == 404
        assert await _status(side + "/admin/keys", ADMIN) == 200
        path.write_text(gateway_config_text("http://127.0.0.1:9/v1", admin_token=ADMIN))  # both cleared
        gw.signal(signal.SIGHUP)
        assert await _reloaded(gw, 1)
        assert await _status(gw.url + "/admin/keys", ADMIN) == 404  # still off the public listener
        assert await _status(gw.url + "/metrics", "") == 404
        assert await _status(side + "/admin/keys", ADMIN) == 200  # still where the process started it
        assert await _status(side + "/metrics", "") == 200


async def test_a_reload_adding_admin_listen_does_not_turn_admin_off(tmp_path: Path) -> None:
    """The reverse: a reload that sets admin_listen (no side listener exists until a restart) must not
    leave /admin/* served nowhere."""
    port = GatewayProcess(tmp_path / "x.yaml").port
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1", admin_token=ADMIN))
    with GatewayProcess(path) as gw:
        assert await _status(gw.url + "/admin/keys", ADMIN) == 200
        path.write_text(gateway_config_text("http://127.0.0.1:9/v1", admin_token=ADMIN,
                                            admin_listen=f"127.0.0.1:{port}", metrics_listen=f"127.0.0.1:{port}"))
        gw.signal(signal.SIGHUP)
        assert await _reloaded(gw, 1)
        assert await _status(gw.url + "/admin/keys", ADMIN) == 200
        assert await _status(gw.url + "/metrics", "") == 200


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
        make_gateway: Any, fake_openai: tuple[Any, str], tmp_path: Path) -> None:
    """A reload while a request waits for its upstream applies to the next request only: the stream that
    started without `billing.stream_billing_event` ends without the event, the next one has it."""
    gw = await make_gateway()
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config_text(fake_openai[1], billing={"stream_billing_event": True}))
    gw.app[RUNTIME].config_path = str(path)
    gw.fake.delay_before_headers_s = 0.5

    async def stream() -> bytes:
        async with aiohttp.ClientSession() as http, http.post(
                gw.url + "/v1/chat/completions", headers=gw.auth(),
                json={"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}) as r:
            assert r.status == 200
            return await r.read()

    started = asyncio.ensure_future(stream())
    while not gw.fake.requests:  # admitted and waiting for the upstream's headers
        await asyncio.sleep(0.01)
    assert await reload_config(gw.app) is True
    assert b"event: billing_update" not in await started
    gw.fake.delay_before_headers_s = 0
    assert b"event: billing_update" in await stream()


# --- a max_body_bytes above the start's takes a restart --------------------------------------------


async def test_a_reload_raising_max_body_bytes_keeps_the_start_limit(
        make_gateway: Any, fake_openai: tuple[Any, str], tmp_path: Path) -> None:
    """README: a `max_body_bytes` above the one the process started with takes a restart (aiohttp's own limit,
    set at startup, answers 413 first). No body above the start's limit is served after such a reload, and
    the 413 names the limit in force, not the one the reload could not apply."""
    gw = await make_gateway()  # max_body_bytes 65536
    path = tmp_path / "gw.yaml"
    path.write_text(gateway_config_text(fake_openai[1], max_body_bytes=200_000))
    gw.app[RUNTIME].config_path = str(path)
    assert await reload_config(gw.app) is True
    for size in (65_536 + 500, 100_000):
        body = {"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "x" * size}]}
        async with aiohttp.ClientSession() as http, http.post(gw.url + "/v1/chat/completions", json=body,
                                                              headers=gw.auth()) as r:
            assert r.status == 413, (size, r.status)
            assert "limit of 65536 bytes" in (await r.json())["error"]["message"]
