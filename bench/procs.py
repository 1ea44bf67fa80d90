"""Processes of the benchmark: start on a free loopback port, wait until ready, measure (the CPU meter), stop.

Only processes this module started are ever signalled (by their own process group, which they lead).
Memory and descriptors come from /proc: `VmHWM` (peak RSS, reset with `clear_refs` = 5 between runs),
`VmRSS`, and the entries of /proc/<pid>/fd.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
_LIVE: list[Server] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def accepts(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Server:
    """One started process (and whatever children it forks), its port and its log files."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    out: Path
    err: Path
    cmd: list[str] = field(default_factory=list)
    cwd: Path | None = None
    env: dict[str, str] | None = None
    deaths: list[str] = field(default_factory=list)  # how earlier incarnations ended (see revive)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """The process and all its descendants (gateway workers)."""
        return [self.pid, *descendants(self.pid)]

    def err_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.err.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def exit_reason(self) -> str:
        rc = self.proc.returncode
        if rc is None:
            return "running"
        if rc < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-rc).name}"
        return f"exit {rc}"

    def restart(self) -> None:
        """Start the same command again (same port); the caller waits for readiness."""
        self.stop()
        fresh = start(self.name, self.cmd, self.port, self.out.parent, self.env, self.cwd)
        self.proc = fresh.proc
        _LIVE.remove(fresh)
        _LIVE.append(self)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # children that outlived their leader
        if self in _LIVE:
            _LIVE.remove(self)


def start(name: str, cmd: list[str], port: int, logdir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Server:
    """Start `cmd` in its own session with stdout/stderr in `logdir`; does not wait for readiness."""
    out, err = logdir / f"{name}.out", logdir / f"{name}.err"
    with open(out, "ab") as o, open(err, "ab") as e:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e, cwd=cwd,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    server = Server(name, proc, port, out, err, cmd, cwd, env)
    _LIVE.append(server)
    return server


def wait_port(server: Server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not accepts(server.port):
        if not server.alive():
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}):\n{server.err_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: nothing listens on {server.port} after {timeout}s\n"
                               f"{server.err_tail()}")
        time.sleep(0.05)


def wait_http_ok(server: Server, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        if not server.alive():
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}):\n{server.err_tail()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{server.port}{path}", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = str(exc)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: {path} not 200 after {timeout}s ({last})\n{server.err_tail()}")
        time.sleep(0.1)


@atexit.register
def stop_all() -> None:
    for server in list(reversed(_LIVE)):
        with contextlib.suppress(Exception):
            server.stop(timeout=5)


# --- /proc ----------------------------------------------------------------------------------------

def _stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields of /proc/<pid>/stat after the command name) of every process still there."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        yield int(entry), fields


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in _stats():
        children.setdefault(int(fields[1]), []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _status_kb(pid: int, field_name: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field_name}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def rss_kb(pids: list[int]) -> int:
    return sum(_status_kb(p, "VmRSS") for p in pids)


def hwm_kb(pids: list[int]) -> int:
    """Sum of the peak RSS of each process (for workers: an upper bound of the group's peak)."""
    return sum(_status_kb(p, "VmHWM") for p in pids)


def reset_hwm(pids: list[int]) -> bool:
    """Reset each process's peak RSS to its current RSS (Linux >= 4.0; needs ptrace rights)."""
    ok = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            ok = False
    return ok


def fd_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


def socket_fds(pid: int) -> int:
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
    return n


# --- CPU ------------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, user + system ticks) of every process."""
    return {pid: (int(fields[1]), int(fields[11]) + int(fields[12])) for pid, fields in _stats()}


def busy_ticks() -> int:
    """Busy ticks of the whole machine (all CPUs) so far."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle


def tree(snapshot: dict[int, tuple[int, int]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in snapshot.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


class CpuMeter:
    """CPU used during one run by the measured server, and by processes this benchmark did not start
    (other users of the machine: their load makes a run noisy)."""

    def __init__(self, server_pids: list[int]) -> None:
        self.server_pids = server_pids
        self.snap = cpu_ticks()
        self.t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self.t0
        snap = cpu_ticks()
        tick = CLK_TCK * wall / 100  # ticks in 1 % of one core

        def delta(pid: int) -> int:
            return snap[pid][1] - self.snap.get(pid, (0, 0))[1]

        mine = tree(snap, os.getpid()) | tree(self.snap, os.getpid())
        other = sum(delta(p) for p in snap if p not in mine)
        return {"server_cpu_pct": round(sum(delta(p) for p in self.server_pids if p in snap) / tick, 1),
                "other_cpu_pct": round(other / tick, 1)}


def quiet(max_wait_s: float = 10.0, threshold_pct: float = 20.0, probe_s: float = 0.5) -> float:
    """Wait (up to `max_wait_s`) until processes the benchmark did not start use under `threshold_pct` of
    a core; the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        meter = CpuMeter([])
        time.sleep(probe_s)
        if meter.stop()["other_cpu_pct"] < threshold_pct:
            break
    return round(time.monotonic() - started, 1)


def _tcp_table(pid: int) -> dict[str, tuple[int, int, str]]:
    """socket inode -> (local port, remote port, state hex) from the process's view of /proc/net/tcp{,6}."""
    table = {}
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                table[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state)
    return table


def fd_classes(pid: int, own_port: int, peers: dict[str, set[int]]) -> dict[str, int]:
    """The process's descriptors by kind: client connections (to `own_port`), connections to each named
    peer (by remote port), listeners, other sockets, and everything else (files, pipes, epoll...)."""
    table = _tcp_table(pid)
    out: dict[str, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = "non-socket"
        if target.startswith("socket:["):
            entry = table.get(target[8:-1])
            if entry is None:
                kind = "other socket"
            elif entry[2] == "0A":
                kind = "listening"
            elif entry[0] == own_port:
                kind = "clients"
            else:
                kind = next((name for name, ports in peers.items() if entry[1] in ports), "other tcp")
        out[kind] = out.get(kind, 0) + 1
    return out
