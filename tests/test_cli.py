"""The command line as an operator uses it: check-config, keys, serve, SIGHUP reload — real processes."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import ROOT, GatewayProcess, closed_port, gateway_config_text, run_cli

from gateway import keys
from gateway.__main__ import build_parser

MESSAGES = [{"role": "user", "content": "hi"}]


def test_check_config_accepts_the_shipped_config() -> None:
    result = run_cli("check-config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def check_spoilt_config(tmp_path: Path, old: str, new: str) -> str:
    """check-config's stderr for the test config with a negative price and `old` replaced by `new`."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(gateway_config_text("http://127.0.0.1:9/v1").replace("input_per_mtok: 1.25", "input_per_mtok: -3")
                   .replace(old, new))
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    return result.stderr


def test_check_config_names_every_problem(tmp_path: Path) -> None:
    stderr = check_spoilt_config(tmp_path, "kind: openai\n    base_url", "kind: nope\n    base_url")
    assert "models.fake/gpt-5.price.input_per_mtok: must be a number >= 0" in stderr
    assert "providers.fake.kind: must be one of" in stderr


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
    assert missing.returncode == 2 and "no key 'key_nope'" in missing.stderr


def test_keys_on_the_memory_store_say_why_not(tmp_path: Path) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1"))
    result = run_cli("keys", "list", "--config", str(path))
    assert result.returncode == 2
    assert "REDIS_URL" in result.stderr



@pytest.mark.parametrize("args", [["keys", "list"], ["keys", "create", "--name", "a", "--balance", "1"],
                                  ["keys", "topup", "key_x", "1"], ["keys", "disable", "key_x"], ["usage", "export"]],
                         ids=["list", "create", "topup", "disable", "export"])
def test_an_unreachable_store_is_one_line_and_exit_status_1(tmp_path: Path, args: list[str]) -> None:
    """The README's exit status 1: the store failed, named by its address without the password."""
    password = "Store-Passw0rd-that-must-not-show"
    port = closed_port()
    path = tmp_path / "down.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1", f"redis://:{password}@127.0.0.1:{port}/0"))
    result = run_cli(*args[:2], "--config", str(path), *args[2:])
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr and password not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("store error: ") and f"127.0.0.1:{port}" in lines[0], lines

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


def one_line_refusal(result: Any) -> str:
    """Exit status 2, nothing on stdout, one line on stderr (no usage block, no traceback); that line."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(["keys", "create", "--name", "a", "--balance", "-1"], "--balance: must not be negative",
                 id="negative-balance"),
    pytest.param(["keys", "create", "--name", "a", "--balance", "lots"], "not an amount in USD: 'lots'",
                 id="balance-not-a-number"),
    pytest.param(["keys", "create", "--name", "a", "--balance", "1e300"], "at most 9007199.254740991 USD",
                 id="balance-too-large"),
    pytest.param(["keys", "create", "--name", "a", "--balance", "1", "--rpm", "0"], "--rpm: must be a whole number",
                 id="rpm-zero"),
    pytest.param(["keys", "create", "--name", "a", "--balance", "1", "--rpd", "-5"], "--rpd: must be a whole number",
                 id="rpd-negative"),
    pytest.param(["keys", "create", "--name", "a", "--balance", "1", "--rpm", "many"], "--rpm: not a whole number",
                 id="rpm-not-a-number"),
    # --models that names no glob at all would make a key that may use every model
    pytest.param(["keys", "create", "--name", "a", "--balance", "1", "--models", ""], "--models: no model glob",
                 id="models-empty"),
    pytest.param(["keys", "create", "--name", "a", "--balance", "1", "--models", " , "], "--models: no model glob",
                 id="models-only-commas"),
    # one key a line in `keys list`: a name with a line break would print a line of its own (a forged key)
    pytest.param(["keys", "create", "--name", "a\nkey_fake  gw-x", "--balance", "1"],
                 "--name: must not contain a control character ('\\n')", id="name-with-newline"),
    pytest.param(["keys", "create", "--name", "a\rb", "--balance", "1"], "--name: must not contain a control",
                 id="name-with-carriage-return"),
    pytest.param(["keys", "create", "--name", "a\tb", "--balance", "1"], "--name: must not contain a control",
                 id="name-with-tab"),
    pytest.param(["keys", "create", "--name", "a\x1b[2Jb", "--balance", "1"], "--name: must not contain a control",
                 id="name-with-escape"),
    pytest.param(["keys", "create", "--name", "a\u2028b", "--balance", "1"], "--name: must not contain a control",
                 id="name-with-line-separator"),
    pytest.param(["keys", "create", "--name", "  ", "--balance", "1"], "--name: must not be blank", id="name-blank"),
    pytest.param(["keys", "topup", "key_x", "NaN"], "not an amount in USD: 'NaN'", id="topup-nan"),
    pytest.param(["keys", "topup", "key_x", "ten"], "not an amount in USD: 'ten'", id="topup-not-a-number"),
    pytest.param(["keys", "topup", "key_nope", "1"], "no key 'key_nope'", id="topup-unknown-key"),
    pytest.param(["keys", "disable", "key_nope"], "no key 'key_nope'", id="disable-unknown-key"),
    pytest.param(["usage", "export", "--since", "yesterday"], "--since: not an ISO date/time", id="since-malformed"),
    pytest.param(["usage", "export", "--until", "2026-13-01"], "--until: not an ISO date/time", id="until-malformed"),
    pytest.param(["usage", "export", "--since", "2026-02-01", "--until", "2026-01-01"],
                 "--until must be later than --since", id="until-before-since"),
    pytest.param(["keys", "list", "--jsn"], "unrecognized arguments: --jsn", id="unknown-option"),
])
def test_bad_input_is_one_line_and_exit_status_2(redis_config: Path, redis_url: str, args: list[str],
                                                 expected: str) -> None:
    subcommand = args[:2]
    result = run_cli(*subcommand, "--config", str(redis_config), *args[2:], env={"REDIS_URL": redis_url})
    assert expected in one_line_refusal(result)


@pytest.mark.parametrize(("args", "expected"), [
    pytest.param(["--port", "0"], "--port: must be 1-65535, not 0", id="port-zero"),
    pytest.param(["--port", "65536"], "--port: must be 1-65535, not 65536", id="port-too-high"),
    pytest.param(["--port", "http"], "--port: not a port number: 'http'", id="port-not-a-number"),
    pytest.param(["--workers", "0"], "--workers: must be a whole number >= 1", id="no-workers"),
])
def test_serve_refuses_bad_arguments_before_starting(tmp_path: Path, args: list[str], expected: str) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1"))
    assert expected in one_line_refusal(run_cli("serve", "--config", str(path), *args, timeout=20))


def test_a_deduction_below_zero_is_refused_in_dollars(redis_config: Path, redis_url: str) -> None:
    env = {"REDIS_URL": redis_url}
    created = json.loads(run_cli("keys", "create", "--config", str(redis_config), "--name", "c", "--balance", "1.5",
                                 "--json", env=env).stdout)
    line = one_line_refusal(run_cli("keys", "topup", "--config", str(redis_config), created["id"], "-2", env=env))
    assert line == f"refused: a deduction of $2 would leave key {created['id']} below zero (balance $1.5)"
    deducted = run_cli("keys", "topup", "--config", str(redis_config), created["id"], "-0.5", env=env)
    assert deducted.returncode == 0 and f"{created['id']}: balance $1" in deducted.stdout


def test_small_amounts_are_printed_as_plain_dollars(redis_config: Path, redis_url: str) -> None:
    """Amounts under a micro-dollar read as decimals, as every other amount does ("$1.5"), not "$5E-7"."""
    env = {"REDIS_URL": redis_url}
    created = run_cli("keys", "create", "--config", str(redis_config), "--name", "tiny", "--balance", "0.0000005",
                      env=env)
    assert created.returncode == 0, created.stderr
    assert "balance $0.0000005\n" in created.stdout
    key_id = created.stdout.split()[2]
    line = one_line_refusal(run_cli("keys", "topup", "--config", str(redis_config), key_id, "-0.000001", env=env))
    assert line == f"refused: a deduction of $0.000001 would leave key {key_id} below zero (balance $0.0000005)"
    topped = run_cli("keys", "topup", "--config", str(redis_config), key_id, "-0.000000499", env=env)
    assert topped.returncode == 0 and topped.stdout == f"{key_id}: balance $0.000000001\n"


def test_check_config_prints_every_kind_of_problem(tmp_path: Path) -> None:
    """README's example: an invalid value and a dangling reference, in one run."""
    stderr = check_spoilt_config(tmp_path, 'api_key: "${NOKEY_API_KEY:-}"', 'api_key: "${NOKEY_API_KEY:-}", egress: eu')
    assert stderr.splitlines() == ["invalid config:",
                                   "models.fake/gpt-5.price.input_per_mtok: must be a number >= 0.0",
                                   "providers.nokey.egress: no pool named 'eu' (or use 'direct')"]


async def test_sighup_applies_a_new_log_level(tmp_path: Path, fake_openai: tuple[Any, str]) -> None:
    """warning -> info on reload: the per-request line appears; info -> warning: it stops again."""
    path = tmp_path / "levels.yaml"
    quiet = gateway_config_text(fake_openai[1], log_level="warning")
    loud = gateway_config_text(fake_openai[1], log_level="info")
    path.write_text(quiet)
    with GatewayProcess(path) as gw:
        async def lines_of_one_request() -> int:
            """Per-request log lines one (unauthenticated, 401) request writes."""
            before = sum(1 for e in gw.log() if e["event"] == "request")
            assert (await _get(gw.url, "gw-nope"))[0] == 401
            await asyncio.sleep(0.3)  # info lines leave in batches, at most 50 ms late
            return sum(1 for e in gw.log() if e["event"] == "request") - before

        assert await lines_of_one_request() == 0
        path.write_text(loud)
        gw.signal(signal.SIGHUP)
        assert await _eventually(lambda: _logged(gw, "config reloaded"))
        assert await lines_of_one_request() == 1
        path.write_text(quiet)
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(1)  # "config reloaded" is an info line: not written at warning
        assert await lines_of_one_request() == 0


def test_keys_list_states_the_balance_to_the_nano_dollar(redis_config: Path, redis_url: str) -> None:
    """`keys list` prints the balance `keys create` stated, to the nano-dollar: it went through a float, which
    past ~$4M no longer holds nine decimals (8655014.570578664 printed as ...665)."""
    env = {"REDIS_URL": redis_url}
    created = run_cli("keys", "create", "--config", str(redis_config), "--name", "big", "--balance",
                      "8655014.570578664", env=env)
    assert created.returncode == 0 and "balance $8655014.570578664\n" in created.stdout, created.stderr
    key_id = created.stdout.split()[2]
    listed = run_cli("keys", "list", "--config", str(redis_config), env=env)
    line = next(line for line in listed.stdout.splitlines() if line.startswith(key_id))
    assert "$8655014.570578664  big" in line, line


def test_keys_list_prints_one_line_per_key(redis_config: Path, redis_url: str) -> None:
    """A refused name leaves nothing behind; an accepted one (spaces, non-ASCII) is one line of its own."""
    env = {"REDIS_URL": redis_url}
    refused = run_cli("keys", "create", "--config", str(redis_config), "--name", "x\nkey_fake", "--balance", "1",
                      env=env)
    assert refused.returncode == 2
    created = run_cli("keys", "create", "--config", str(redis_config), "--name", " Zoë's team ", "--balance", "1",
                      env=env)
    assert created.returncode == 0, created.stderr
    listed = run_cli("keys", "list", "--config", str(redis_config), env=env)
    assert len(listed.stdout.splitlines()) == 1 and listed.stdout.rstrip("\n").endswith("  Zoë's team")


@pytest.mark.parametrize("moment", ["2038-11-17T05:30:35.049Z", "2026-01-31T12:00:00.001+01:00", "2026-01-31"])
def test_usage_export_edges_are_the_exact_millisecond_given(moment: str) -> None:
    """--since is inclusive and --until exclusive against each entry's millisecond stamp, so the edge must
    be that exact millisecond: timestamp() * 1000 fell a millisecond short of some moments (from 2038 on),
    letting an entry stamped just before --since in and keeping one stamped just before --until out."""
    parsed = build_parser().parse_args(["usage", "export", "--config", "x.yaml", "--since", moment, "--until", moment])
    when = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    exact = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    assert parsed.since == parsed.until == exact
