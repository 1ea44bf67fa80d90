"""A real `redis-server` for tests: started on a free loopback port, stopped and restarted on demand.

Tests run against the real binary, never a mock, because the store's promises (Lua atomicity, what a
dead connection looks like) are only true of the real thing. Nothing is persisted: `--save ""` and
`--appendonly no`, with a throwaway working directory.

    with RedisServer() as server:      # started, answers PING
        server.url                     # "redis://127.0.0.1:<port>/0"
        server.stop(); server.start()  # same port: a fault test sees an outage and a recovery
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

HOST = "127.0.0.1"


def find_binary() -> str | None:
    """Path of `redis-server`, or None when it is not installed (`make test` installs it)."""
    return shutil.which("redis-server")


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it; a tiny race is acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    """True when `port` answers a raw RESP PING as Redis does (PONG, or NOAUTH when it wants a password)."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """One redis-server process; its port and directory survive `stop()` so `start()` brings it back."""

    def __init__(self, port: int | None = None, password: str | None = None, args: tuple[str, ...] = ()) -> None:
        binary = find_binary()
        if binary is None:
            raise FileNotFoundError("redis-server not found on PATH")
        self.binary = binary
        self.port = port if port is not None else free_port()
        self._may_move = port is None  # until it first runs: another process may take a free port before it binds
        self.password = password
        self.args = args  # more redis-server options ("--enable-debug-command", "yes")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Connection URL, with the password when the server requires one."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def socket_path(self) -> Path:
        """The unix socket the server also listens on (for `redis+unix`-style URLs: unix://<path>)."""
        return self.dir / "redis.sock"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING; RuntimeError (with its log) if it cannot."""
        if self.running:
            return
        args = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")]
        args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.args
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                if self._may_move and "Address already in use" in self.log_tail():
                    self._may_move, self._proc, self.port = False, None, free_port()  # once: the race lost
                    self.start(timeout)
                    return
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{self.log_tail()}")
            if answers_ping(self.port):
                self._may_move = False  # from now on it keeps its port: a restart must come back on it
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers); the port is kept for `start()`."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port; with no persistence, all data is gone afterwards."""
        self.stop()
        self.start()

    def pause(self, resume_after_s: float | None = None) -> None:
        """Stall the server (SIGSTOP: connections stay open, nothing answers), as a fork or a slow disk does;
        with `resume_after_s`, a timer thread lets it go on by itself."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)
        if resume_after_s is not None:
            threading.Timer(resume_after_s, self.resume).start()

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        """Stop the server and remove its working directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.dir / "redis.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
