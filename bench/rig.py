"""The benchmark's rig: the processes it starts (redis, fake upstream, pass-through, microsocks, gateways),
the request bodies and configs, and the load primitives (wrk, reviving a dead server; the CPU meter and waiting
for a quiet machine are in `procs`). `run.py` measures with it; `extras.py` holds the measurements beside the table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procs
from bodies import PROMPT, agent_conversation, agent_messages

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PY = sys.executable
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
GATEWAY_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}  # as deploy/systemd's unit sets them
NOISY_PCT = 25.0  # a run during which other processes used more than this % of a core is marked noisy
MICROSOCKS_TUNNEL = re.compile(r"^client\[\d+\] \S+: connected to (\S+)$", re.M)  # as tests/proxies.py
# the references beside the gateway: one route (chat, whatever the body), no /readyz (an open port is up)
CHAT_ONLY = ("passthrough", "floor")


@dataclass(frozen=True)
class Variant:
    name: str
    model: str
    stream: bool
    chunks: int  # content chunks per answer (0: not streamed)
    turns: int = 0  # tool-call rounds of an agent's conversation before the question (0: PROMPT alone)
    path: str = CHAT  # where the gateway is sent it (the pass-through relays any body to chat)


VARIANTS = {
    "json": Variant("json", "bench-20", False, 0),
    "s20": Variant("s20", "bench-20", True, 20),
    "s1000": Variant("s1000", "bench-1000", True, 1000),
    # what a coding agent sends each turn: ~30 tools with schemas, 40 rounds of calls and results holding code
    "agent": Variant("agent", "bench-20", False, 0, turns=40),
    # the same conversation as Claude Code sends it (Anthropic's format: system blocks with cache marks, tools
    # with input_schema, tool_use / tool_result blocks), streamed, on /v1/messages translated to the OpenAI upstream
    "agent-messages": Variant("agent-messages", "bench-20", True, 20, turns=40, path=MESSAGES),
    # the same body on the native Claude route (an Anthropic-kind provider: no translation), as most Claude Code
    # users of a gateway run it; the fake upstream answers /v1/messages in Anthropic's stream format
    "agent-claude": Variant("agent-claude", "claude-bench-20", True, 20, turns=40, path=MESSAGES),
    # s20's prompt on the native Claude route: what a chat UI's Claude stream costs, per request and per event
    "claude-s20": Variant("claude-s20", "claude-bench-20", True, 20, path=MESSAGES),
    "claude-s1000": Variant("claude-s1000", "claude-bench-1000", True, 1000, path=MESSAGES),
    # a long answer on /v1/messages from an OpenAI-kind model (Claude Code on GPT): every chunk translated
    "messages-s1000": Variant("messages-s1000", "bench-1000", True, 1000, path=MESSAGES),
    # a long answer of a Claude model on /v1/chat/completions (an OpenAI SDK on Claude): every event translated
    "claude-chat-s1000": Variant("claude-chat-s1000", "claude-bench-1000", True, 1000),
    # s1000 as OpenAI itself streams by default: an `obfuscation` string of random length on every chunk, to a chat
    # client (kept) and translated to /v1/messages (dropped)
    "s1000-padded": Variant("s1000-padded", "bench-padded-1000", True, 1000),
    "messages-s1000-padded": Variant("messages-s1000-padded", "bench-padded-1000", True, 1000, path=MESSAGES),
    # an OpenAI SDK on a Gemini model (generateContent, streamGenerateContent?alt=sse): the answer and every event
    # translated
    "gemini-json": Variant("gemini-json", "gemini-bench-20", False, 0),
    "gemini-chat-s1000": Variant("gemini-chat-s1000", "gemini-bench-1000", True, 1000),
    # the same as Gemini 2.5 on streams it: the answer's count so far on every event
    "gemini-running-s1000": Variant("gemini-running-s1000", "gemini-bench-running-1000", True, 1000),
}

BODIES = ("agent", "agent-claude")  # the agents' bodies the full run pairs with the pass-through at c=16 (no target)
# the other routes' long streams, paired the same way (the pass-through relays each as OpenAI chunks on chat)
ROUTES = ("claude-s1000", "claude-chat-s1000", "messages-s1000", "s1000-padded", "messages-s1000-padded",
          "gemini-chat-s1000", "gemini-running-s1000")


@dataclass(frozen=True)
class Case:
    id: str
    target: str  # which server: upstream | passthrough | gateway | gateway_socks | gateway_w2
    variants: tuple[str, ...]
    what: str


CASES = (
    Case("1-direct", "upstream", ("json", "s20", "s1000"), "wrk -> fake upstream"),
    Case("2-bare", "passthrough", ("json", "s20", "s1000"), "wrk -> bare aiohttp pass-through -> upstream"),
    Case("3-gw", "gateway", ("json",), "gateway, non-streamed, billing + limits on (Redis)"),
    Case("4-gw", "gateway", ("s20",), "gateway, streamed, 20 chunks"),
    Case("5-gw", "gateway", ("s1000",), "gateway, streamed, 1,000 chunks"),
    Case("6-gw-socks5", "gateway_socks", ("json",), "gateway, non-streamed, upstream through microsocks"),
    Case("7-gw-workers2", "gateway_w2", ("json",), "gateway --workers 2, non-streamed"),
)


@dataclass(frozen=True)
class Settings:
    quick: bool
    duration_s: int
    warmup_s: int
    warmup_every_run: bool
    concurrency: tuple[int, ...]
    threads: int
    open_streams: int
    slow_stream_s: int
    sequential_requests: int

    @classmethod
    def of(cls, args: argparse.Namespace) -> Settings:
        if args.quick:
            return cls(True, args.duration or 1, 1, False, tuple(args.concurrency), args.threads,
                       args.streams or 200, 3, 1000)
        return cls(False, args.duration or 5, 1, True, tuple(args.concurrency), args.threads,
                   args.streams or 1000, 10, 1000)


# --- configs ---------------------------------------------------------------------------------------

def gateway_config(redis_port: int, upstream_ports: list[int], socks_port: int | None = None,
                   slow_models: tuple[str, ...] = ()) -> str:
    """The bench config: Redis store, billing on (prices > 0), limits high enough never to refuse.

    With several upstream ports, provider `bench` uses the first and `benchN` the others (a per-host
    connection cap in the gateway cannot then hide the memory of many open streams).
    """
    egress = "direct"
    pools = "  pools: {}\n"
    if socks_port is not None:
        egress = "socks"
        # probes every hour: the tunnels counted at the proxy are then the requests' own
        pools = (f"  pools:\n    socks:\n      proxies:\n        - {{name: microsocks-1, url: "
                 f"\"socks5://127.0.0.1:{socks_port}\"}}\n"
                 f"      health: {{interval_s: 3600, probe: \"tcp://127.0.0.1:{upstream_ports[0]}\"}}\n")
    providers, models = [], []
    price = "{input_per_mtok: 0.15, output_per_mtok: 0.6}"
    for i, port in enumerate(upstream_ports):
        name = "bench" if i == 0 else f"bench{i}"
        providers.append(f"  {name}: {{kind: openai, base_url: \"http://127.0.0.1:{port}/v1\", "
                         f"api_key: \"sk-bench-upstream-key-0000\", egress: {egress}}}")
        for model in (("bench-20", "bench-1000", "bench-padded-1000") if i == 0 else ()) + slow_models:
            alias = model if i == 0 else f"{model}@{i}"
            models.append(f"  {name}/{model}: {{price: {price}, aliases: [\"{alias}\"]}}")
    providers.append(f"  claude: {{kind: anthropic, base_url: \"http://127.0.0.1:{upstream_ports[0]}\", "
                     f"api_key: \"sk-ant-bench-upstream-0000\", egress: {egress}}}")
    models += [f"  claude/{m}: {{price: {price}, aliases: [\"claude-{m}\"]}}" for m in ("bench-20", "bench-1000")]
    # Gemini (generateContent) on the same fake upstream: `google/gemini-bench-N`, aliases `gemini-bench-N`
    providers.append(f"  google: {{kind: gemini, base_url: \"http://127.0.0.1:{upstream_ports[0]}\", "
                     f"api_key: \"bench-gemini-upstream-key-0000\", egress: {egress}}}")
    models += [f"  google/gemini-{m}: {{price: {price}, aliases: [\"gemini-{m}\"]}}" for m in ("bench-20",
                                                                                            "bench-1000",
                                                                                            "bench-running-1000")]
    return (
        "server: {host: 127.0.0.1, port: 8080, log_level: info}\n"
        f"store: {{url: \"redis://127.0.0.1:{redis_port}/0\", prefix: \"bench:\"}}\n"
        f"egress:\n{pools}"
        "providers:\n" + "\n".join(providers) + "\n"
        "limits:\n  default: {rpm: 100000000, rpd: 100000000}\n"
        "models:\n" + "\n".join(models) + "\n"
    )


def body_for(variant: Variant) -> bytes:
    if variant.path == MESSAGES:
        asked = agent_messages(variant.turns) if variant.turns else {
            "max_tokens": 1024, "system": PROMPT[0]["content"], "messages": [PROMPT[1]]}
        return json.dumps({"model": variant.model, **asked, "stream": variant.stream}).encode()
    body: dict[str, Any] = {"model": variant.model, "messages": PROMPT}
    if variant.turns:
        body.update(agent_conversation(variant.turns))
    if variant.stream:
        body["stream"] = True
    return json.dumps(body).encode()


# --- the environment -------------------------------------------------------------------------------

class Bench:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        self.settings = settings
        self.dir = workdir
        self.servers: dict[str, procs.Server] = {}
        self.key = ""
        self.bodies: dict[str, Path] = {}
        self.notes: list[str] = []
        for name, variant in VARIANTS.items():
            path = workdir / f"body-{name}.json"
            path.write_bytes(body_for(variant))
            self.bodies[name] = path

    # processes
    def start_redis(self) -> None:
        port = procs.free_port()
        server = procs.start("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                       "--daemonize", "no", "--dir", str(self.dir)], port, self.dir)
        procs.wait_port(server)
        self.servers["redis"] = server

    def start_upstream(self, name: str = "upstream") -> procs.Server:
        port = procs.free_port()
        server = procs.start(name, [PY, str(BENCH / "fake_upstream.py"), "--port", str(port)], port, self.dir)
        procs.wait_port(server)
        self.servers[name] = server
        return server

    def passthrough_command(self, port: int) -> list[str]:
        return [PY, str(BENCH / "passthrough.py"), "--port", str(port), "--upstream",
                f"http://127.0.0.1:{self.servers['upstream'].port}"]

    def start_passthrough(self) -> None:
        port = procs.free_port()
        server = procs.start("passthrough", self.passthrough_command(port), port, self.dir)
        procs.wait_port(server)
        self.servers["passthrough"] = server

    def floor_command(self, port: int) -> list[str]:
        """`floor.py` against this bench's upstream and Redis; to start after `create_key` (it reads the keys
        once)."""
        return [PY, str(BENCH / "floor.py"), "--port", str(port), "--upstream",
                f"http://127.0.0.1:{self.servers['upstream'].port}", "--redis",
                f"redis://127.0.0.1:{self.servers['redis'].port}/0"]

    def start_floor(self) -> None:
        port = procs.free_port()
        server = procs.start("floor", self.floor_command(port), port, self.dir, env=GATEWAY_ENV, cwd=ROOT)
        procs.wait_port(server)
        self.servers["floor"] = server

    def start_microsocks(self) -> None:
        port = procs.free_port()
        binary = shutil.which("microsocks") or "microsocks"
        server = procs.start("microsocks", [binary, "-i", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1"],
                             port, self.dir)
        procs.wait_port(server)
        self.servers["microsocks"] = server

    def tunnels(self) -> int:
        return len(MICROSOCKS_TUNNEL.findall(self.servers["microsocks"].err.read_text(errors="replace")))

    def write_config(self, name: str, text: str) -> Path:
        path = self.dir / f"{name}.yaml"
        path.write_text(text)
        return path

    def start_gateway(self, name: str, config: Path, workers: int = 1) -> procs.Server:
        port = procs.free_port()
        cmd = [PY, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)]
        if workers != 1:
            cmd += ["--workers", str(workers)]
        server = procs.start(name, cmd, port, self.dir, env=GATEWAY_ENV, cwd=ROOT)
        self.servers[name] = server
        procs.wait_http_ok(server, "/readyz", timeout=30)
        return server

    def create_key(self, config: Path) -> None:
        out = subprocess.run([PY, "-m", "gateway", "keys", "create", "--config", str(config), "--name", "bench",
                              "--balance", "1000000", "--json"], cwd=ROOT, capture_output=True, text=True,
                             check=False, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"keys create failed ({out.returncode}): {out.stderr.strip()}")
        self.key = json.loads(out.stdout.strip().splitlines()[-1])["key"]

    def redis_stats(self) -> dict[str, int]:
        """Calls per Redis command so far (INFO commandstats)."""
        import redis  # the project's dependency

        client = redis.Redis(port=self.servers["redis"].port)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    # checks
    def check(self, target: str, variant: Variant) -> None:
        """One request before measuring: 200, and for streams every chunk and [DONE] arrived."""
        server = self.servers[target]
        path = CHAT if target == "passthrough" else variant.path
        status, body = post(server.port, self.bodies[variant.name].read_bytes(), self.key, path=path)
        if status != 200:
            raise RuntimeError(f"{target}/{variant.name}: HTTP {status}: {body[:500]!r}")
        if variant.stream:
            events, end = body.count(b"data: "), b"event: message_stop" if path == MESSAGES else b"data: [DONE]"
            if end not in body or events < variant.chunks + 1:
                raise RuntimeError(f"{target}/{variant.name}: {events} events, no {end!r}?\n{body[-500:]!r}")
        if target.startswith("gateway") and b'"billing"' not in body:
            raise RuntimeError(f"{target}/{variant.name}: no billing block in the answer: {body[-500:]!r}")


def sequential_bench(workdir: Path) -> tuple[Bench, Path]:
    """Redis, the fake upstream, the bench config and a key: what the one-request-at-a-time measurements
    (`instructions.py`, `lines.py`) start before their server. The caller stops them (`procs.stop_all`)."""
    bench = Bench(Settings(quick=True, duration_s=1, warmup_s=0, warmup_every_run=False, concurrency=(1,),
                           threads=1, open_streams=0, slow_stream_s=10, sequential_requests=0), workdir)
    bench.start_redis()
    upstream = bench.start_upstream()
    config = bench.write_config("gateway", gateway_config(bench.servers["redis"].port, [upstream.port]))
    bench.create_key(config)
    return bench, config


def gateway_code(config: Path, port: int) -> str:
    """Python source that serves the gateway as `python -m gateway serve` does, for `python -c` after a prelude of
    a measurement's own (a tracer, timestamps, parts switched off)."""
    argv = ["gateway", "serve", "--config", str(config), "--port", str(port)]
    return f"import runpy, sys\nsys.argv = {argv!r}\nrunpy.run_module('gateway', run_name='__main__')\n"


def drive_sequential(bench: Bench, server: procs.Server, target: str, variant: str, requests: int, warmup: int,
                     on: Callable[[], None], off: Callable[[], None], ready_timeout: float) -> None:
    """Once `server` is ready: `warmup` requests, then `requests` between `on()` and `off()` (what turns
    the measurement on and off), one at a time on one keep-alive connection; any non-200 is an error."""
    if target in CHAT_ONLY:
        procs.wait_port(server, timeout=ready_timeout)
    else:
        procs.wait_http_ok(server, "/readyz", timeout=ready_timeout)
    body = bench.bodies[variant].read_bytes()
    path = CHAT if target in CHAT_ONLY else VARIANTS[variant].path
    conn = http.client.HTTPConnection(procs.HOST, server.port, timeout=120)
    try:
        for _ in range(warmup):
            post(server.port, body, bench.key, conn, path)
        on()
        for _ in range(requests):
            status, answer = post(server.port, body, bench.key, conn, path)
            if status != 200:
                raise RuntimeError(f"{target}: HTTP {status}: {answer[:300]!r}")
        off()
    finally:
        conn.close()


def post(port: int, body: bytes, key: str, conn: http.client.HTTPConnection | None = None,
         path: str = CHAT) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection(procs.HOST, port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {key}",
                                                        "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


# --- wrk -------------------------------------------------------------------------------------------

def wrk(port: int, body: Path, key: str, concurrency: int, threads: int, duration_s: int,
        path: str = CHAT) -> dict[str, Any]:
    cmd = ["wrk", f"-t{min(threads, concurrency)}", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", "10s",
           "-s", str(BENCH / "post.lua"), f"http://127.0.0.1:{port}{path}", "--", str(body), key]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=duration_s + 60)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return json.loads(line.removeprefix("BENCH_JSON "))  # type: ignore[no-any-return]


def revive(bench: Bench, target: str, settle_s: float = 0.3) -> str | None:
    """If the server died (or lost a worker) during the last wrk, say how, and bring it back."""
    server = bench.servers[target]
    time.sleep(settle_s)  # a process killed by the hang-ups at the end of a wrk run dies within this
    if server.alive():
        return None
    reason = server.exit_reason()
    server.deaths.append(reason)
    log(f"       !! {target} died ({reason}); restarting it")
    server.restart()
    if target.startswith("gateway"):
        procs.wait_http_ok(server, "/readyz", timeout=30)
    else:
        procs.wait_port(server)
    return reason


def warm_gently(bench: Bench, target: str, variant: Variant, n: int = 200) -> None:
    """Sequential requests over one keep-alive connection that is closed only between answers."""
    server = bench.servers[target]
    conn = http.client.HTTPConnection(procs.HOST, server.port, timeout=30)
    try:
        for _ in range(n):
            post(server.port, bench.bodies[variant.name].read_bytes(), bench.key, conn,
                 CHAT if target == "passthrough" else variant.path)
    finally:
        conn.close()



def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
