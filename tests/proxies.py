"""Real proxy servers on loopback for the egress-pool tests: started, stopped and restarted on demand.

Each class runs its own process (or, for `BlackHole`, its own thread) on a free 127.0.0.1 port and is a
context manager; `stop()` kills it but keeps the port so `start()` brings it back where the gateway's
config points. Every proxy counts the tunnels (upstream connections) it opened from its own log, so a test
can prove connection reuse and name resolution at the proxy::

    with Microsocks(user="u", password="p", bind_out="127.0.0.2") as proxy:
        proxy.url                  # "socks5://u:p@127.0.0.1:<port>"
        proxy.url_for("socks5h")   # "socks5h://u:p@127.0.0.1:<port>" (name resolved at the proxy)
        ...
        proxy.tunnels()            # 1 after N requests over one keep-alive connection
        proxy.targets()            # ["127.0.0.1:<upstream port>"], or ["localhost:<port>"] with rdns
        proxy.stop(); proxy.start()

Everything listens and connects on 127.0.0.0/8 only. Processes run in their own session (process group)
so a stop takes their children too; every live instance is also closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import quote

import pytest

HOST = "127.0.0.1"
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def free_port(host: str = HOST) -> int:
    """A loopback port nobody listens on right now (the OS picks it; a tiny race is acceptable in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def accepts(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """True when a TCP connection to `host:port` is accepted (then closed at once, sending nothing)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_listening(port: int, timeout: float = 10.0, host: str = HOST,
                   proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once `host:port` accepts connections; TimeoutError after `timeout`, RuntimeError if `proc` dies."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        if accepts(port, host):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.02)


def living_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that still run (Linux /proc; zombies excluded: orphaned ones wait for
    PID 1 to reap them, which can take a moment in a container). [] where /proc is unavailable."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry))
    return found


def find_binary(*names: str) -> str | None:
    """First of `names` on PATH or in an sbin directory (not on a non-root PATH on Debian)."""
    for name in names:
        found = shutil.which(name) or next(
            (str(Path(d) / name) for d in _SBIN if os.access(Path(d) / name, os.X_OK)), None)
        if found:
            return found
    return None


def _require(package: str, *names: str, skip: bool = False) -> str:
    binary = find_binary(*names)
    if binary is None:
        message = f"{names[0]} is not installed: run `make test` (it installs it) or apt-get install {package}"
        if skip:
            pytest.skip(message)
        pytest.fail(message)
    return binary


_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Last resort (interrupted session): no proxy process outlives the interpreter that started it."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


class _Server:
    """Shared shape: port, url, start/stop/close, context manager, async wrappers."""

    scheme: str = "socks5"

    def __init__(self, port: int | None, user: str | None, password: str | None) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        self.port = port if port is not None else free_port()
        self.user = user
        self.password = password
        _LIVE.add(self)

    def url_for(self, scheme: str | None = None, user: str | None = None, password: str | None = None) -> str:
        """The proxy URL with another scheme (e.g. "socks5h") or other credentials (e.g. a wrong password)."""
        user = self.user if user is None else user
        password = self.password if password is None else password
        auth = f"{quote(user, safe='')}:{quote(password or '', safe='')}@" if user is not None else ""
        return f"{scheme or self.scheme}://{auth}{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The URL the gateway's config uses for this proxy, credentials included."""
        return self.url_for()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    async def astart(self, timeout: float = 10.0) -> None:
        """`start()` off the event loop, so a gateway in the same loop keeps serving meanwhile."""
        await asyncio.to_thread(self.start, timeout)

    async def astop(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address} {'running' if self.running else 'stopped'}>"


class ProxyProcess(_Server):
    """A proxy binary run in the foreground in its own process group, logging into a temporary directory.

    Subclasses give `command()`, optionally `write_config()`, and `TARGET`: a regex over the log whose
    group 1 is the target of one tunnel the proxy opened. The log survives restarts (appended), so
    `tunnels()` counts since the object was made.
    """

    TARGET: ClassVar[re.Pattern[str]]
    name: ClassVar[str] = "proxy"

    def __init__(self, port: int | None = None, user: str | None = None, password: str | None = None) -> None:
        super().__init__(port, user, password)
        self.dir = Path(tempfile.mkdtemp(prefix=f"gw-{self.name}-"))
        self.log_path = self.dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        """Write whatever config file `command()` refers to (called before every start)."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and return once its port accepts connections; RuntimeError (with log) if not."""
        if self.running:
            return
        if accepts(self.port):  # someone else's listener would pass the readiness probe for us
            raise RuntimeError(f"{self.name}: port {self.port} is taken by another listener")
        self.write_config()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        try:
            wait_listening(self.port, timeout, proc=self._proc)
        except (RuntimeError, TimeoutError) as exc:
            self.stop()
            raise RuntimeError(f"{self.name} on port {self.port} did not start: {exc}\n{self.log_tail()}") from exc

    def stop(self, timeout: float = 5.0) -> None:
        """Kill the proxy (and any children); established tunnels die with it. The port is kept."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # SIGTERM to the leader first: dante's mother stops its helpers itself (they end up as orphans
            # that PID 1 reaps, briefly visible as zombies); then SIGKILL whatever of the group is left.
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of the group that outlived the leader
        deadline = time.monotonic() + timeout
        while living_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        """Stop and remove the temporary directory (config and log)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __del__(self) -> None:  # a forgotten close() must not leave a proxy running
        with contextlib.suppress(Exception):
            self.stop(timeout=1.0)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def targets(self) -> list[str]:
        """What each tunnel was opened to, in order, as the proxy logged it ("host:port", host as asked)."""
        return [match.group(1) for match in self.TARGET.finditer(self.log_text())]

    def tunnels(self) -> int:
        """Tunnels (upstream connections) the proxy opened so far, counted from its own log."""
        return len(self.targets())

    def wait_tunnels(self, at_least: int, timeout: float = 5.0) -> int:
        """Poll until at least `at_least` tunnels are logged (dante logs a moment after replying); the count."""
        deadline = time.monotonic() + timeout
        while (count := self.tunnels()) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return count

    async def await_tunnels(self, at_least: int, timeout: float = 5.0) -> int:
        """`wait_tunnels()` without blocking the event loop (for tests with the gateway in the same loop)."""
        deadline = time.monotonic() + timeout
        while (count := self.tunnels()) < at_least and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return count


class Microsocks(ProxyProcess):
    """Debian's `microsocks`: SOCKS5 only, optional username/password, outgoing address chosen by `-b`.

    It logs `client[fd] <client ip>: connected to <target>:<port>` on stderr once the upstream connection
    is up (before answering the client); failed connects and failed auth are not logged.
    """

    name = "microsocks"
    TARGET = re.compile(r"^client\[\d+\] \S+: connected to (\S+)$", re.M)

    def __init__(self, user: str | None = None, password: str | None = None, bind_out: str = HOST,
                 port: int | None = None) -> None:
        self.binary = _require("microsocks", "microsocks")
        super().__init__(port, user, password)
        self.bind_out = bind_out

    def command(self) -> list[str]:
        args = [self.binary, "-i", HOST, "-p", str(self.port), "-b", self.bind_out]
        if self.user is not None:
            args += ["-u", self.user, "-P", self.password or ""]
        return args


# `python -m pproxy` with uvloop installed (a gateway dependency) dies at start: pproxy calls
# `uvloop.install()` and then `asyncio.get_event_loop()`, which uvloop's policy refuses. Hide uvloop.
_PPROXY_MAIN = (
    "import sys, runpy; sys.modules['uvloop'] = None; sys.argv[0] = 'pproxy'; "
    "runpy.run_module('pproxy', run_name='__main__', alter_sys=True)"
)


class PProxy(ProxyProcess):
    """`pproxy` (PyPI) as a subprocess, like `python -m pproxy -l socks5://127.0.0.1:PORT#user:pass -v --auth=-1`.

    `scheme` is "socks5", "socks4", "http" (CONNECT and absolute-URI requests) or "https" (HTTP over TLS
    to the proxy, with `tls_files` = (certfile, keyfile) as the proxy's identity). `--auth=-1` turns off
    pproxy's default of trusting an IP for 30 days after one successful login, which would otherwise let
    every later loopback connection in without (or with wrong) credentials. With `-v` it prints
    `<proto> <client ip:port> -> <target>:<port>` per tunnel, just BEFORE connecting upstream (so a tunnel
    whose upstream connect fails is counted too). Its outgoing address is the system default.
    """

    name = "pproxy"
    TARGET = re.compile(r"^(?:socks5|socks4|http|https) \S+ -> (\S+)$", re.M)

    def __init__(self, scheme: str = "socks5", user: str | None = None, password: str | None = None,
                 port: int | None = None, tls_files: tuple[str, str] | None = None) -> None:
        if scheme not in ("socks5", "socks4", "http", "https"):
            raise ValueError(f"pproxy scheme {scheme!r}: socks5, socks4, http or https")
        if (scheme == "https") != (tls_files is not None):
            raise ValueError("an https proxy needs tls_files, and only it")
        super().__init__(port, user, password)
        self.scheme = scheme
        self.tls_files = tls_files

    def command(self) -> list[str]:
        listen = f"{'http+ssl' if self.scheme == 'https' else self.scheme}://{HOST}:{self.port}"
        if self.user is not None:
            listen += f"#{self.user}:{self.password}"
        tls = ["--ssl", ",".join(self.tls_files)] if self.tls_files else []
        return [sys.executable, "-u", "-W", "ignore::DeprecationWarning", "-c", _PPROXY_MAIN,
                "-l", listen, "-v", "--auth=-1", *tls]


class Tinyproxy(ProxyProcess):
    """Debian's `tinyproxy`: an HTTP proxy (CONNECT, and absolute-URI requests for http:// URLs).

    Runs with `-d` (foreground) from a generated config: no `ConnectPort` line, which per tinyproxy.conf(5)
    allows CONNECT to every port (the packaged config limits it to 443/563); optional BasicAuth; `Bind`
    for the outgoing address. At `LogLevel Connect` it logs `Established connection to host "<host>"`
    per tunnel (host only, no port: `targets()` gives hosts).
    """

    name = "tinyproxy"
    scheme = "http"
    TARGET = re.compile(r'Established connection to host "([^"]+)"')

    def __init__(self, user: str | None = None, password: str | None = None, bind_out: str | None = None,
                 port: int | None = None) -> None:
        self.binary = _require("tinyproxy", "tinyproxy")
        super().__init__(port, user, password)
        self.bind_out = bind_out
        self.config_path = self.dir / "tinyproxy.conf"

    def write_config(self) -> None:
        lines = [f"Port {self.port}", f"Listen {HOST}", "Allow 127.0.0.0/8", "Timeout 600", "MaxClients 200",
                 f"LogFile \"{self.log_path}\"", "LogLevel Connect", "DisableViaHeader Yes"]
        if self.bind_out:
            lines.append(f"Bind {self.bind_out}")
        if self.user is not None:
            lines.append(f"BasicAuth {self.user} {self.password}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        return [self.binary, "-d", "-c", str(self.config_path)]


class Dante(ProxyProcess):
    """Debian's dante-server (`danted`; `sockd` elsewhere): SOCKS5 and SOCKS4, no authentication.

    Username auth in dante checks system accounts (or PAM), so it is not offered here. Runs with `-N 1`
    in the foreground (it still forks a handful of helper processes, all in our process group) with the
    log in a file; `external` (`bind_out`) is the outgoing address. It logs
    `pass(1): tcp/connect [: <client> <internal> -> <external> <target>.<port>` per tunnel, from its
    i/o process, possibly a moment after the client got its reply: use `wait_tunnels()`.
    Skips the test when dante is not installed.
    """

    name = "dante"
    TARGET = re.compile(r"tcp/connect \[: \S+ \S+ -> \S+ (\S+)\.(\d+)\s*$", re.M)
    REQUESTED = re.compile(r"dorequest\(\): command 1 request received .* address: (\S+)\.(\d+)\s*$", re.M)

    def __init__(self, bind_out: str = HOST, port: int | None = None, debug: bool = False) -> None:
        self.binary = _require("dante-server", "danted", "sockd", skip=True)
        super().__init__(port, None, None)
        self.bind_out = bind_out
        self.debug = debug
        self.config_path = self.dir / "danted.conf"

    def targets(self) -> list[str]:
        """Without `debug` dante logs the RESOLVED address ("127.0.0.1:port" for "localhost"); with it, the
        name as the client asked (the only way to see socks5h at work) — at ~1,000 log lines per request."""
        pattern = self.REQUESTED if self.debug else self.TARGET
        return [f"{m.group(1)}:{m.group(2)}" for m in pattern.finditer(self.log_text())]

    def write_config(self) -> None:
        rules = "from: 127.0.0.0/8 to: 0.0.0.0/0"
        # server settings must precede the rules; as root dante wants to know whom to run as: stay root
        users = "user.privileged: root\nuser.unprivileged: root" if os.geteuid() == 0 else ""
        text = f"""
logoutput: {self.log_path}
internal: {HOST} port = {self.port}
external: {self.bind_out}
clientmethod: none
socksmethod: none
{"debug: 1" if self.debug else ""}
{users}
client pass {{
    {rules}
    log: error connect
}}
socks pass {{
    {rules}
    command: connect
    log: error connect
}}
"""
        self.config_path.write_text(text)

    def command(self) -> list[str]:
        return [self.binary, "-f", str(self.config_path), "-N", "1", "-p", str(self.dir / "danted.pid")]


class BlackHole(_Server):
    """A TCP server that accepts every connection and never answers or closes it (until stopped).

    For "the proxy handshake is bounded by the connect timeout": as a proxy URL (`url`, any scheme via
    `url_for`) it accepts TCP and then stays silent. What clients send is read and discarded so they never
    block on a full buffer. `accepted()` counts connections; stop() closes them all and the listener.
    """

    def __init__(self, scheme: str = "socks5", port: int | None = None) -> None:
        super().__init__(port, None, None)
        self.scheme = scheme
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._accepted = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def accepted(self) -> int:
        return self._accepted

    def tunnels(self) -> int:
        """A black hole opens none."""
        return 0

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((HOST, self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, args=(listener, self._wake[1]),
                                        name=f"blackhole-{self.port}", daemon=True)
        self._thread.start()

    def _serve(self, listener: socket.socket, wake: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ, "accept")
        selector.register(wake, selectors.EVENT_READ, "wake")
        held: list[socket.socket] = []
        try:
            while True:
                for key, _ in selector.select():
                    if key.data == "wake":
                        return
                    if key.data == "accept":
                        with contextlib.suppress(BlockingIOError, InterruptedError):
                            conn, _ = listener.accept()
                            conn.setblocking(False)
                            held.append(conn)
                            self._accepted += 1
                            selector.register(conn, selectors.EVENT_READ, "conn")
                        continue
                    conn = key.fileobj  # type: ignore[assignment]
                    try:
                        data = conn.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:  # the client gave up: forget it
                        selector.unregister(conn)
                        held.remove(conn)
                        conn.close()
        finally:
            selector.close()
            for conn in held:
                conn.close()
            listener.close()
            wake.close()

    def stop(self, timeout: float = 5.0) -> None:
        thread, wake, self._thread, self._wake = self._thread, self._wake, None, None
        if thread is None or wake is None:
            return
        with contextlib.suppress(OSError):
            wake[0].send(b"x")
        thread.join(timeout)
        wake[0].close()
