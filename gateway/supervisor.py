"""`serve --workers N`: N gateway processes sharing one port (SO_REUSEPORT) under this parent.

The parent restarts a worker that dies, forwards SIGHUP (reload; to a worker still starting once it is
ready) and SIGTERM/SIGINT (graceful shutdown) to every worker, and alone talks to systemd: READY=1 once
every worker reported ready, RELOADING=1 / READY=1 around a reload, STOPPING=1 at shutdown. Workers
keep their metrics in a shared PROMETHEUS_MULTIPROC_DIR, so any worker's /metrics shows the sum over all
of them. The store must be shared (Redis): N memory stores would be N different sets of balances.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from gateway import config as config_mod
from gateway import config_load, systemd
from gateway.config import Config
from gateway.logging import configure, get_logger

log = get_logger("gateway.supervisor")
POLL_S = 0.2
RESTART_WINDOW_S, RESTARTS_PER_WINDOW = 30.0, 5  # a worker crashing faster than this waits a little
SUPERVISOR_PID = "GATEWAY_SUPERVISOR_PID"  # in a worker's environment: the supervisor that started it
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def follow_supervisor() -> bool:
    """At a worker's start: have the kernel send it SIGTERM (the graceful shutdown) when its supervisor dies;
    False when the supervisor is gone already. Killed with SIGKILL, a supervisor forwards nothing, and outside
    systemd (whose control group ends every process of the unit) its workers went on serving on the port
    with nobody to restart, reload or stop them.

    Linux's parent-death signal rather than a periodic os.getppid() check: it comes at once and costs no
    timer in every worker. It follows the thread that started the worker: the supervisor starts every one
    from its main thread. The parent check after asking closes the race of a supervisor that died before."""
    expected = os.environ.get(SUPERVISOR_PID)
    if not expected:
        return True
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    except AttributeError:  # no prctl (not Linux): the check below is all there is
        pass
    if os.getppid() != int(expected):
        log.warning("supervisor gone before this worker started; exiting", supervisor_pid=int(expected))
        return False
    return True


def leave_no_orphaned_state() -> None:
    """At a worker's exit, when its supervisor died without cleaning up (SIGKILL): remove the supervisor's
    private directory, whose config copies hold the provider keys and which nobody else would remove. Every
    worker of a dead supervisor tries; the first removes it, the others find nothing."""
    expected, in_force = os.environ.get(SUPERVISOR_PID), os.environ.get("GATEWAY_CONFIG_IN_FORCE")
    if expected and in_force and os.getppid() != int(expected):
        shutil.rmtree(Path(in_force).parent, ignore_errors=True)


class Supervisor:
    def __init__(self, config: Config, config_path: str, host: str, port: int, workers: int) -> None:
        self.command = [sys.executable, "-m", "gateway", "serve", "--config", config_path,
                        "--host", host, "--port", str(port), "--worker"]
        self.count = workers
        self.grace_s = config.server.shutdown_grace_s
        self.state_dir = Path(tempfile.mkdtemp(prefix="llm-gateway-"))
        self.env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        self.env.update(PROMETHEUS_MULTIPROC_DIR=str(self.state_dir / "metrics"),
                        GATEWAY_READY_DIR=str(self.state_dir / "ready"), **{SUPERVISOR_PID: str(os.getpid())})
        for sub in ("metrics", "ready"):
            (self.state_dir / sub).mkdir()
        # what a worker starts on: the config the others run (the start's, then each reload's they accepted),
        # not the file as it is now, which may be broken since (a refused reload) or edited and not reloaded
        self.config_path = config_path
        self.in_force = self.state_dir / "config.yaml"
        text = config_load.read(config_path)
        self._keep(text)
        # ... on the store, listeners and grace the others started with, which a reload does not change
        self._keep(text, self.state_dir / "started.yaml")
        self.env["GATEWAY_CONFIG_IN_FORCE"] = str(self.in_force)
        self.env["GATEWAY_CONFIG_AT_START"] = str(self.state_dir / "started.yaml")
        self.workers: list[subprocess.Popen[bytes]] = []
        self.restarts: list[float] = []
        self.pending: list[int] = []  # signals received, handled by the main loop
        self.reload_due: set[int] = set()  # workers that were still starting when a reload came
        self.announced = False

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command, env=self.env)
        log.info("worker started", pid=proc.pid)
        return proc

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        self.pending.append(signum)

    def _forward(self, signum: int) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signum)

    def _replace_dead(self) -> None:
        from prometheus_client import multiprocess

        for i, proc in enumerate(self.workers):
            if proc.poll() is None:
                continue
            log.error("worker died; restarting", pid=proc.pid, returncode=proc.returncode)
            multiprocess.mark_process_dead(proc.pid, str(self.state_dir / "metrics"))
            (self.state_dir / "ready" / str(proc.pid)).unlink(missing_ok=True)
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(self.restarts) > RESTARTS_PER_WINDOW:
                time.sleep(1)
            self.workers[i] = self._spawn()

    def _keep(self, text: str, path: Path | None = None) -> None:
        """The config text in force, for the workers started from now on (it may hold secrets: 0600)."""
        path = path or self.in_force
        part = path.with_suffix(".part")
        part.touch(mode=0o600)
        part.write_text(text, encoding="utf-8")
        part.replace(path)

    def _accept(self) -> None:
        """On SIGHUP: the file is what replacements start on if the workers will accept it (they parse it the
        same way); if not, they refuse it and say why, and the config in force stays."""
        try:
            text = config_load.read(self.config_path)
            config_load.parse(text, dict(os.environ), source=self.config_path)
        except config_mod.ConfigError:
            return
        self._keep(text)

    def _ready(self) -> set[int]:
        return {int(p.name) for p in (self.state_dir / "ready").iterdir()}

    def _reload(self) -> None:
        """SIGHUP to every ready worker. One still starting has no handler yet and would die of it (and, had
        it read the file before the change, keep the old config): it gets its SIGHUP once it is ready."""
        ready = self._ready()
        for proc in self.workers:
            if proc.poll() is None:
                if proc.pid in ready:
                    proc.send_signal(signal.SIGHUP)
                else:
                    self.reload_due.add(proc.pid)

    def _reload_late_starters(self) -> None:
        if self.reload_due:
            ready = self._ready()
            for proc in self.workers:
                if proc.pid in self.reload_due and proc.pid in ready and proc.poll() is None:
                    proc.send_signal(signal.SIGHUP)
            self.reload_due &= {p.pid for p in self.workers if p.pid not in ready and p.poll() is None}

    def _announce_ready(self) -> None:
        ready = self._ready()
        if not self.announced and all(p.pid in ready for p in self.workers):
            self.announced = True
            systemd.notify("READY=1", f"MAINPID={os.getpid()}")
            log.info("all workers ready", workers=self.count)

    def _stop(self) -> int:
        systemd.notify("STOPPING=1")
        log.info("stopping workers", grace_s=self.grace_s)
        self._forward(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + 10
        for proc in self.workers:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # A worker still starting (a replacement, say) has no handler yet and dies of the SIGTERM itself:
        # that is the stop asked for, not a failure (systemd would mark the unit failed on a plain stop).
        return 0 if all(p.returncode in (0, -signal.SIGTERM) for p in self.workers) else 1

    def run(self) -> int:
        for handled in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(handled, self._signal)
        self.workers = [self._spawn() for _ in range(self.count)]
        try:
            while True:
                while self.pending:
                    signum = self.pending.pop(0)
                    if signum == signal.SIGHUP:
                        systemd.reloading()
                        self._accept()
                        self._reload()
                        systemd.notify("READY=1")
                    else:
                        return self._stop()
                self._replace_dead()
                self._reload_late_starters()
                self._announce_ready()
                time.sleep(POLL_S)
        finally:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def supervise(config: Config, config_path: str, host: str | None, port: int | None, workers: int) -> int:
    configure(config.server.log_level)
    if not config.store.url:
        print("--workers above 1 needs a shared store: set store.url (REDIS_URL); N memory stores would be "
              "N separate sets of keys and balances", file=sys.stderr)
        return 2
    host, port = host or config.server.host, port if port is not None else config.server.port
    # the main listener and the side ones (metrics_listen, admin_listen), which every worker binds too
    sides = (address.rpartition(":") for address in (config.server.metrics_listen, config.server.admin_listen))
    addresses = dict.fromkeys([(host, port), *((h, int(p)) for h, _, p in sides if p)])
    for where, number in addresses:
        problem = _cannot_bind(where, number)
        if problem:  # else every worker would die at its bind, and be restarted, for ever
            print(f"cannot listen on {where}:{number}: {problem}", file=sys.stderr)
            return 1
    return Supervisor(config, config_path, host, port, workers).run()


def _cannot_bind(host: str, port: int) -> str:
    """Why the workers could not bind host:port (as they do, with SO_REUSEPORT), or "" when they can."""
    from gateway.server import listen_reason

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _name, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(address)
    except OSError as exc:
        return listen_reason(exc)
    return ""
