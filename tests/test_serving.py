"""Serving as systemd runs it: readiness notifications, workers sharing a port, graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import GatewayProcess, closed_port, funded_key, gateway_config_text
from redis_server import RedisServer

from gateway.store import RedisStore

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


async def wait_for(sock: socket.socket, wanted: str) -> str:
    while True:
        message = await asyncio.to_thread(receive, sock)
        if wanted in message:
            return message


@pytest.fixture
def redis_config(tmp_path: Path, redis_url: str, fake_openai: tuple[Any, str]) -> tuple[Path, str]:
    prefix = f"srv{uuid.uuid4().hex}:"
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(fake_openai[1], redis_url, prefix, shutdown_grace_s=10))
    return path, prefix


async def test_systemd_notifications(redis_config: tuple[Path, str], notify_socket: Any) -> None:
    sock, address = notify_socket
    with GatewayProcess(redis_config[0], {"NOTIFY_SOCKET": address}) as gw:
        ready = await wait_for(sock, "READY=1")
        assert f"MAINPID={gw.proc.pid}" in ready  # type: ignore[union-attr]
        gw.signal(signal.SIGHUP)
        reloading = await wait_for(sock, "RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        await wait_for(sock, "READY=1")
        gw.signal(signal.SIGTERM)
        await wait_for(sock, "STOPPING=1")
        assert await asyncio.to_thread(gw.proc.wait, 15) == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_ready_only_once_the_port_accepts(tmp_path: Path, fake_openai: tuple[Any, str], notify_socket: Any,
                                                host: str) -> None:
    """systemd starts what depends on the gateway at READY=1: by then a client must be able to connect, also
    with a store that answers at once (memory) and no pools to probe, and a host name to resolve first."""
    sock, address = notify_socket
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_config_text(fake_openai[1], host=host))
    gw = GatewayProcess(path, {"NOTIFY_SOCKET": address})
    gw.launch()
    try:
        await wait_for(sock, "READY=1")
        with socket.socket() as client:  # at once: no retry
            assert client.connect_ex(("127.0.0.1", gw.port)) == 0, gw.stderr()
    finally:
        gw.stop()


async def test_in_flight_stream_finishes_and_is_billed_on_sigterm(redis_config: tuple[Path, str], redis_url: str,
                                                                  fake_openai: tuple[Any, str]) -> None:
    fake = fake_openai[0]
    fake.delay_between_chunks_s = 0.1  # a ~2 s stream
    key, key_id = await funded_key(redis_url, redis_config[1])
    with GatewayProcess(redis_config[0]) as gw:
        async with aiohttp.ClientSession() as http, http.post(
                gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                json={"model": "fake/gpt-4o", "messages": MESSAGES, "stream": True}) as r:
            first = json.loads((await r.content.readuntil(b"\n\n"))[6:])
            gw.signal(signal.SIGTERM)  # shutdown begins while the stream is in flight
            rest = await r.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
        assert b'"finish_reason":"stop"' in rest and b'"billing"' in rest
        assert await asyncio.to_thread(gw.proc.wait, 20) == 0  # type: ignore[union-attr]
    store = RedisStore(redis_url, prefix=redis_config[1])
    try:
        record = await store.get_key(key_id)
        generation = await store.get_generation(key_id, first["id"])
    finally:
        await store.close()
    assert record is not None and record.usage > 0 and record.balance + record.usage == record.credits
    assert generation is not None and generation["cancelled"] == "0"


async def test_workers_share_the_port_restart_and_sum_their_metrics(redis_config: tuple[Path, str]) -> None:
    gw = GatewayProcess(redis_config[0])
    gw.extra_args = ["--workers", "2"]
    with gw:
        async def hit(n: int) -> None:
            for _ in range(n):  # a new connection each time, so the kernel spreads them over both workers
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
                        http.get(gw.url + "/healthz") as r:
                    assert r.status == 200

        await hit(40)
        async with aiohttp.ClientSession() as http, http.get(gw.url + "/metrics") as r:
            text = await r.text()
        line = next(li for li in text.splitlines() if li.startswith("gateway_requests_total{")
                    and 'route="/healthz"' in li)
        assert float(line.rsplit(" ", 1)[1]) == 40  # the sum over both workers
        pids = {e["pid"] for e in gw.log() if e["event"] == "worker started"}
        assert len(pids) == 2
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(100):
            started = {e["pid"] for e in gw.log() if e["event"] == "worker started"}
            if len(started) == 3:
                break
            await asyncio.sleep(0.1)
        assert len(started) == 3  # a replacement took the dead worker's place
        await asyncio.sleep(1)
        await hit(10)
    assert gw.proc is not None and gw.proc.returncode == 0


async def kill_a_worker(gw: GatewayProcess) -> tuple[int, int]:
    """Once both workers are ready, kill one; return the survivor's pid and its replacement's, which has
    just been started (and is still importing)."""
    pids = {e["pid"] for e in gw.log() if e["event"] == "worker started"}
    for _ in range(100):
        if len({e["pid"] for e in gw.log() if e["event"] == "ready"}) == 2:
            break
        await asyncio.sleep(0.1)
    os.kill(sorted(pids)[0], signal.SIGKILL)
    for _ in range(200):
        if len(started := {e["pid"] for e in gw.log() if e["event"] == "worker started"}) == 3:
            return sorted(pids)[1], (started - pids).pop()
        await asyncio.sleep(0.02)
    raise AssertionError("no replacement started")


async def test_stopping_while_a_worker_restarts_is_a_clean_stop(redis_config: tuple[Path, str]) -> None:
    """The replacement of a dead worker is still importing when the stop comes: it dies of the SIGTERM
    before it could handle it, which is the stop asked for, so the supervisor still exits 0."""
    gw = GatewayProcess(redis_config[0])
    gw.extra_args = ["--workers", "2"]
    with gw:
        _, replacement = await kill_a_worker(gw)
        assert gw.stop() == 0, gw.stdout()[-2000:]
    assert not any(e["pid"] == replacement and e["event"] == "ready" for e in gw.log())  # it never got that far


async def test_a_reload_while_a_worker_restarts_reaches_it_once_it_is_ready(redis_config: tuple[Path, str]) -> None:
    """SIGHUP forwarded to a worker still importing would kill it (no handler yet) and could leave it on the
    config it read before the change: it gets the reload once it is ready, and lives."""
    gw = GatewayProcess(redis_config[0])
    gw.extra_args = ["--workers", "2"]
    with gw:
        survivor, replacement = await kill_a_worker(gw)
        gw.signal(signal.SIGHUP)  # the replacement is still importing
        for _ in range(150):
            if {e["pid"] for e in gw.log() if e["event"] == "config reloaded"} >= {replacement, survivor}:
                break
            await asyncio.sleep(0.1)
        events = [e["event"] for e in gw.log() if e.get("pid") == replacement]
        assert "ready" in events and "config reloaded" in events, events
        assert len({e["pid"] for e in gw.log() if e["event"] == "worker started"}) == 3  # no further restart
        assert gw.stop() == 0, gw.stdout()[-2000:]


def test_workers_refuse_the_memory_store(tmp_path: Path) -> None:
    path = tmp_path / "mem.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1"))
    result = subprocess.run([*GatewayProcess.python_m_gateway(), "serve", "--config", str(path), "--workers", "2"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "shared store" in result.stderr


def ignored_signals(pid: int) -> set[int]:
    """The signals a process ignores, from the SigIgn mask in /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}
    raise AssertionError("no SigIgn line")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    """The process runs (a zombie waiting for init to reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def kill_if_ours(pid: int, config_path: Path) -> None:
    """SIGKILL a worker this test started, if it still runs (never a process that took its pid since)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return
    if b"--worker" in cmdline and str(config_path).encode() in cmdline and alive(pid):
        os.kill(pid, signal.SIGKILL)


async def test_workers_end_when_their_supervisor_is_killed(redis_config: tuple[Path, str]) -> None:
    """Outside systemd (whose control group ends every process of the unit) a supervisor killed with SIGKILL
    left its workers serving on the port with nobody to restart, reload or stop them. Each worker gets the
    kernel's parent-death signal (SIGTERM: the graceful shutdown) and ends within seconds, removing the
    dead supervisor's private directory, which nobody else would."""
    path, _ = redis_config
    gw = GatewayProcess(path)
    gw.extra_args = ["--workers", "2"]
    workers: list[int] = []
    state_dir = ""
    try:
        with gw:
            assert gw.proc is not None
            for _ in range(200):
                if any(e["event"] == "all workers ready" for e in gw.log()):
                    break
                await asyncio.sleep(0.1)
            workers = children(gw.proc.pid)
            assert len(workers) == 2
            environ = dict(v.split(b"=", 1) for v in Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
                           if b"=" in v)
            state_dir = str(Path(environ[b"GATEWAY_READY_DIR"].decode()).parent)  # the supervisor's, left behind
            gw.proc.kill()
            gw.proc.wait()
            for _ in range(100):
                if not any(alive(pid) for pid in workers):
                    break
                await asyncio.sleep(0.1)
            assert [pid for pid in workers if alive(pid)] == []
            with socket.socket() as probe:  # nothing serves on the port any more
                assert probe.connect_ex(("127.0.0.1", gw.port)) != 0
            # nor is its private directory left behind: its config copies hold the provider keys
            assert not Path(state_dir).exists()
    finally:
        for pid in workers:
            kill_if_ours(pid, path)
        if state_dir.startswith(tempfile.gettempdir()):
            shutil.rmtree(state_dir, ignore_errors=True)


def test_a_worker_whose_supervisor_died_while_it_started_does_not_serve(tmp_path: Path) -> None:
    """The parent-death signal only covers a supervisor dying after the worker asked for it: a worker that
    finds another parent than the supervisor that started it (it died first) exits at once."""
    path = tmp_path / "mem.yaml"
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1"))
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that is nobody's parent
    result = subprocess.run([*GatewayProcess.python_m_gateway(), "serve", "--config", str(path), "--worker",
                             "--port", str(closed_port())], env={**os.environ, "GATEWAY_SUPERVISOR_PID": str(gone.pid)},
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert "supervisor" in result.stdout + result.stderr and "gateway started" not in result.stdout


@pytest.mark.parametrize("workers", [1, 2])
async def test_serving_processes_ignore_sigpipe(redis_config: tuple[Path, str], workers: int) -> None:
    """With SIGPIPE at its default, a write to a client that reset mid-stream killed the whole process
    (found by the benchmark); every serving process must keep it ignored, as Python sets it up."""
    path, _ = redis_config
    gw = GatewayProcess(path)
    gw.extra_args = ["--workers", str(workers)] if workers > 1 else []
    with gw:
        assert gw.proc is not None
        serving = [gw.proc.pid] if workers == 1 else children(gw.proc.pid)
        deadline = asyncio.get_running_loop().time() + 10
        while workers > 1 and len(serving) < workers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            serving = children(gw.proc.pid)
        assert len(serving) == workers
        for pid in serving:
            assert signal.SIGPIPE in ignored_signals(pid), pid


async def test_startup_objects_are_frozen_out_of_full_collections(aiohttp_server: Any) -> None:
    """A full garbage-collector pass over everything startup built stalls every request in flight
    (~25 ms in the benchmark); serving freezes those objects once startup is done."""
    import gc

    from harness import gateway_config

    from gateway.app import create_app
    from gateway.server import _startup

    app = create_app(gateway_config("http://127.0.0.1:9/v1"))
    app.on_startup.append(_startup(False, None))
    gc.unfreeze()
    try:
        await aiohttp_server(app)
        assert gc.get_freeze_count() > 10_000  # the modules, the config, the catalog...
    finally:
        gc.unfreeze()


async def test_ready_waits_for_the_listener(aiohttp_server: Any, tmp_path: Path) -> None:
    """The readiness check (store, pools) finishes at once with a memory store and no pools, inside
    on_startup, before aiohttp binds the main listener: READY (here a worker's ready file) must wait for
    the listener."""
    from harness import gateway_config

    from gateway.app import create_app
    from gateway.server import _startup

    app = create_app(gateway_config("http://127.0.0.1:9/v1"))
    listening, ready_file = asyncio.Event(), tmp_path / "ready"
    app.on_startup.append(_startup(False, str(ready_file), listening))
    await aiohttp_server(app)
    await asyncio.sleep(0.3)  # ample for a memory store's ping
    assert not ready_file.exists()
    listening.set()
    for _ in range(50):
        if ready_file.exists():
            break
        await asyncio.sleep(0.02)
    assert ready_file.exists()


async def test_every_worker_reports_the_store_truthfully(tmp_path: Path, fake_openai: tuple[Any, str]) -> None:
    """With --workers 2 a scrape lands on either worker; whichever it is, gateway_store_up must say what
    the store does now — from the first scrape (no request ever touched the store), through an outage,
    and after the store came back (no worker's stale 'down' may outvote the one that asked)."""
    with RedisServer() as redis:
        path = tmp_path / "workers.yaml"
        path.write_text(gateway_config_text(fake_openai[1], redis.url, f"srv{uuid.uuid4().hex}:"))
        gw = GatewayProcess(path)
        gw.extra_args = ["--workers", "2"]
        with gw:
            for _ in range(100):  # both workers announced readiness: their first ping was answered
                if any(e["event"] == "all workers ready" for e in gw.log()):
                    break
                await asyncio.sleep(0.1)
            assert await store_up_per_scrape(gw.url, 8) == [1.0] * 8
            redis.stop()
            assert await store_up_per_scrape(gw.url, 8) == [0.0] * 8
            redis.start()
            assert await store_up_per_scrape(gw.url, 8) == [1.0] * 8


async def store_up_per_scrape(url: str, scrapes: int) -> list[float]:
    """gateway_store_up of `scrapes` scrapes, each on a new connection so the kernel spreads them."""
    found = []
    for _ in range(scrapes):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
                http.get(url + "/metrics") as r:
            text = await r.text()
        found += [float(li.rsplit(" ", 1)[1]) for li in text.splitlines() if li.startswith("gateway_store_up ")]
    return found


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on (without SO_REUSEPORT, as a foreign server would)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


@pytest.mark.parametrize(("where", "workers"), [("main", 1), ("main", 2), ("metrics_listen", 1),
                                                ("metrics_listen", 2), ("admin_listen", 2)])
def test_a_taken_port_is_one_line_and_exit_status_1(tmp_path: Path, redis_url: str, taken_port: int,
                                                    where: str, workers: int) -> None:
    """Under --workers too: a side listener's taken port ends the supervisor at once, rather than every
    worker dying at its bind and being restarted for ever."""
    path = tmp_path / "taken.yaml"
    side = {where: f"127.0.0.1:{taken_port}"} if where != "main" else {}
    path.write_text(gateway_config_text("http://127.0.0.1:9/v1", redis_url, f"srv{uuid.uuid4().hex}:",
                                        admin_token="admin-token-0123456789abcdef", **side))
    port = taken_port if where == "main" else closed_port()
    result = subprocess.run([*GatewayProcess.python_m_gateway(), "serve", "--config", str(path), "--port", str(port),
                             "--workers", str(workers)], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"cannot listen on 127.0.0.1:{taken_port}: Address already in use"]


async def test_startup_says_why_the_store_does_not_answer_and_keeps_its_password(
        tmp_path: Path, fake_openai: tuple[Any, str]) -> None:
    """A Redis that wants a password gets a wrong one: the log line names the failure, never the password."""
    wrong = "wrong-Pa55word-123"
    with RedisServer(password="right-Pa55word-456") as redis:
        path = tmp_path / "auth.yaml"
        path.write_text(gateway_config_text(fake_openai[1], f"redis://:{wrong}@127.0.0.1:{redis.port}/0",
                                            f"srv{uuid.uuid4().hex}:"))
        with GatewayProcess(path) as gw:
            for _ in range(100):
                waiting = [e for e in gw.log() if e["event"] == "store not answering yet; not ready"]
                if waiting:
                    break
                await asyncio.sleep(0.1)
        assert waiting, gw.stdout()
        reason = waiting[0]["reason"]
        assert "refused" in reason and "WRONGPASS" in reason and f"127.0.0.1:{redis.port}" in reason  # Redis's words
        assert wrong not in gw.stdout() + gw.stderr()


async def logged(gw: GatewayProcess, seen: Callable[[list[dict[str, Any]]], bool], seconds: float = 15) -> bool:
    """Whether the gateway's log shows what `seen` looks for within `seconds`."""
    for _ in range(int(seconds * 10)):
        if seen(gw.log()):
            return True
        await asyncio.sleep(0.1)
    return seen(gw.log())


async def replaced_after_reload(gw: GatewayProcess, path: Path, text: str, outcome: str) -> int:
    """Both workers ready, the config file rewritten to `text` and reloaded (each worker logging `outcome`),
    then a worker killed: the pid of its replacement, once it is ready."""
    assert await logged(gw, lambda log: len({e["pid"] for e in log if e["event"] == "ready"}) == 2)
    path.write_text(text)
    gw.signal(signal.SIGHUP)
    assert await logged(gw, lambda log: len([e for e in log if e["event"] == outcome]) == 2), outcome
    _, replacement = await kill_a_worker(gw)
    assert await logged(gw, lambda log: any(e["pid"] == replacement and e["event"] == "ready" for e in log)), \
        gw.stdout()[-2000:]
    return replacement


async def test_a_replacement_worker_starts_on_the_config_in_force(redis_config: tuple[Path, str]) -> None:
    """A dead worker's replacement runs what its siblings run, the config the last reload accepted, not what
    the file holds now: a file broken since (its reload refused) made every replacement die at start, for
    ever, and an edit not yet reloaded would have run beside the old config."""
    path = redis_config[0]
    gw = GatewayProcess(path)
    gw.extra_args = ["--workers", "2"]
    with gw:
        await replaced_after_reload(gw, path, path.read_text() + "\nserver: [unclosed\n",
                                    "config reload failed; keeping the old config")
        assert len({e["pid"] for e in gw.log() if e["event"] == "worker started"}) == 3  # no further restart
        assert gw.stop() == 0, gw.stdout()[-2000:]


async def test_a_replacement_worker_keeps_the_store_its_siblings_run(redis_config: tuple[Path, str],
                                                                    redis_url: str) -> None:
    """`store.*` takes effect at a restart only: a reload keeps the old store. A dead worker's replacement
    starts on the config the last reload accepted, and must run the store its siblings run, not the one the
    reload could not apply, or every request it takes gets a 401 (its keys and balances are elsewhere)."""
    path, prefix = redis_config
    plain, _ = await funded_key(redis_url, prefix)
    gw = GatewayProcess(path)
    gw.extra_args = ["--workers", "2"]
    with gw:
        await replaced_after_reload(gw, path, path.read_text().replace(prefix, f"other{uuid.uuid4().hex}:"),
                                    "config reloaded")
        statuses = []
        for _ in range(30):  # a new connection each time, so the kernel spreads them over both workers
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
                    http.get(gw.url + "/v1/credits", headers={"Authorization": f"Bearer {plain}"}) as r:
                statuses.append(r.status)
        assert statuses == [200] * 30, statuses
        assert gw.stop() == 0, gw.stdout()[-2000:]
