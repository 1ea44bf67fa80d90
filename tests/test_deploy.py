"""The operator files under deploy/ are checked by the tools that will read them on a server.

Sections: metric catalog · systemd unit · Prometheus config, alert rules and their unit tests · Grafana
dashboard · metric names and labels used by alerts and dashboard · Redis persistence.

A check is skipped (with its reason) only when its tool is missing: `make test` installs systemd-analyze
(Debian package systemd), promtool (prometheus) and redis-server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.metrics import MetricWrapperBase
from redis_server import HOST, answers_ping, free_port

import egress.metrics
import gateway.metrics

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "llm-gateway.service"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "llm-gateway.json"
REDIS_CONF = DEPLOY / "redis" / "redis.conf"

# --- metric catalog -----------------------------------------------------------------------------------
# The gateway's metrics by name: (type, labels). Dashboards and alerts may use nothing else, so renaming a
# metric or a label without updating deploy/ fails here.

METRICS: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels.split()))
    for name, kind, labels in [
        ("gateway_requests_total", "counter", "route provider model status_class"),
        ("gateway_request_duration_seconds", "histogram", "route provider model"),
        ("gateway_time_to_first_token_seconds", "histogram", "provider model"),
        ("gateway_upstream_duration_seconds", "histogram", "provider model"),
        ("gateway_tokens_total", "counter", "provider model direction"),
        ("gateway_cost_dollars_total", "counter", "provider model"),
        ("gateway_rate_limited_total", "counter", "model"),
        ("gateway_insufficient_balance_total", "counter", "model"),
        ("gateway_store_errors_total", "counter", "operation"),
        ("gateway_active_streams", "gauge", ""),
        ("gateway_config_reloads_total", "counter", "result"),
        ("gateway_upstream_retries_total", "counter", "provider outcome"),
        ("gateway_provider_overloaded_total", "counter", "provider"),
        ("gateway_config_age_seconds", "gauge", ""),
        ("gateway_store_up", "gauge", ""),
        ("gateway_egress_proxy_up", "gauge", "pool proxy"),
        ("gateway_egress_requests_total", "counter", "pool proxy outcome"),
        ("gateway_egress_connect_seconds", "histogram", "pool proxy"),
        ("gateway_egress_ejections_total", "counter", "pool proxy"),
        ("gateway_egress_probes_total", "counter", "pool proxy result"),
        ("gateway_egress_direct_total", "counter", "pool"),
        ("up", "gauge", "job instance"),  # Prometheus's own, per scrape target
    ]
}
TARGET_LABELS = frozenset({"job", "instance"})  # Prometheus adds these to every scraped series


def series_labels(name: str) -> frozenset[str] | None:
    """Labels a series of this name carries, or None when the gateway exposes no such series.

    A histogram exposes only `_bucket` (with `le`), `_sum` and `_count`; its bare name is not a series.
    """
    if name in METRICS:
        kind, labels = METRICS[name]
        return None if kind == "histogram" else labels | TARGET_LABELS
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and METRICS.get(base, ("", frozenset()))[0] == "histogram":
            extra = {"le"} if suffix == "_bucket" else set()
            return METRICS[base][1] | TARGET_LABELS | extra
    return None


def test_metric_catalog_matches_the_code() -> None:
    """The catalog above is what gateway/metrics.py and egress/metrics.py define: names, types, labels."""
    defined: dict[str, tuple[str, frozenset[str]]] = {}
    for module in (gateway.metrics, egress.metrics):
        for metric in vars(module).values():
            if isinstance(metric, MetricWrapperBase):
                name = metric._name + ("_total" if metric._type == "counter" else "")
                defined[name] = (str(metric._type), frozenset(metric._labelnames))
    assert defined == {name: spec for name, spec in METRICS.items() if name != "up"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (`make test` installs it: see APT_PACKAGES in the Makefile)")
    return path


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


# --- systemd unit -------------------------------------------------------------------------------------


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists, in order (keys like ExecReload= may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(section: str, key: str) -> list[str]:
    return [v for k, v in unit_entries(UNIT.read_text()).get(section, []) if k == key]


def unit_value(section: str, key: str) -> str:
    values = unit_values(section, key)
    assert values, f"[{section}] {key}= is missing from {UNIT.name}"
    return values[-1]


@pytest.mark.parametrize(("key", "expected"), [
    ("Type", "notify"),
    ("NotifyAccess", "main"),
    ("ExecStart", "/opt/llm-gateway/.venv/bin/python -m gateway serve --config /etc/llm-gateway/config.yaml"),
    ("EnvironmentFile", "/etc/llm-gateway/gateway.env"),
    ("WorkingDirectory", "/opt/llm-gateway"),
    ("User", "llm-gateway"),
    ("KillMode", "mixed"),
    ("Restart", "on-failure"),
    ("LimitNOFILE", "65536"),
    ("NoNewPrivileges", "yes"),
    ("CapabilityBoundingSet", ""),
    ("ProtectSystem", "strict"),
    ("ProtectHome", "yes"),
    ("PrivateTmp", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
])
def test_unit_sets(key: str, expected: str) -> None:
    assert unit_value("Service", key) == expected


def test_unit_reload_stop_and_restart_policy() -> None:
    assert unit_values("Service", "ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
    assert "@system-service" in unit_values("Service", "SystemCallFilter")
    assert re.fullmatch(r"\d+[KMG]", unit_value("Service", "MemoryMax"))
    # Longer than the gateway's shutdown grace period (30 s by default), so streams finish before SIGKILL.
    assert int(unit_value("Service", "TimeoutStopSec").removesuffix("s")) > 30
    assert int(unit_value("Service", "RestartSec").removesuffix("s")) >= 1
    assert int(unit_value("Unit", "StartLimitBurst")) >= 1
    assert int(unit_value("Unit", "StartLimitIntervalSec").removesuffix("s")) > 0


@pytest.fixture
def runnable_unit(tmp_path: Path) -> Path:
    """The unit with paths that exist here: this interpreter, the repo's config and env example, root."""
    text = UNIT.read_text()
    for installed, here in [("/opt/llm-gateway/.venv/bin/python", sys.executable),
                            ("/etc/llm-gateway/config.yaml", str(REPO / "config.yaml")),
                            ("/etc/llm-gateway/gateway.env", str(DEPLOY / "gateway.env.example")),
                            ("WorkingDirectory=/opt/llm-gateway", f"WorkingDirectory={REPO}")]:
        assert installed in text
        text = text.replace(installed, here)
    text = re.sub(r"(?m)^User=.*$", "User=root", text)
    text = re.sub(r"(?m)^Group=.*$", "Group=root", text)
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify(runnable_unit: Path) -> None:
    result = run(tool("systemd-analyze"), "verify", str(runnable_unit))
    assert result.returncode == 0, result.stderr
    for word in ("Unknown", "ignoring", "Failed", "not executable", "Invalid", "Missing"):
        assert word.lower() not in result.stderr.lower(), result.stderr


def test_unit_hardening_scores_ok() -> None:
    """`systemd-analyze security` rates exposure 0-10; the unit must stay under 2.5 ("OK")."""
    result = run(tool("systemd-analyze"), "security", "--offline=yes", "--threshold=25", str(UNIT))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


# Two sandbox lines enforced by seccomp, rebuilt here as systemd 252 installs them, so the real gateway can
# be started under them without systemd: MemoryDenyWriteExecute= refuses (EPERM) mmap with
# PROT_WRITE|PROT_EXEC and any mprotect/pkey_mprotect adding PROT_EXEC; RestrictAddressFamilies= refuses
# (EAFNOSUPPORT) socket() of any family but AF_UNIX, AF_INET, AF_INET6.
_SECCOMP_ARCH = {  # machine: (AUDIT_ARCH, mmap, mprotect, pkey_mprotect, socket)
    "x86_64": (0xC000003E, 9, 10, 329, 41),
    "aarch64": (0xC00000B7, 222, 226, 288, 198),
}
_SANDBOX_LAUNCHER = r"""
import ctypes, errno, mmap, runpy, socket, struct, sys
arch, nr_mmap, nr_mprotect, nr_pkey, nr_socket = (int(a) for a in sys.argv[1:6])
LD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
ALLOW, EPERM, EAFNOSUPPORT = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.EAFNOSUPPORT
prog = [  # (code, jump if true, jump if false, k); jumps count instructions after the next one
    (LD, 0, 0, 4), (JEQ, 1, 0, arch), (RET, 0, 0, ALLOW),                                  # 0-2 other ABI
    (LD, 0, 0, 0), (JEQ, 4, 0, nr_mmap), (JEQ, 6, 0, nr_mprotect), (JEQ, 5, 0, nr_pkey),    # 3-6
    (JEQ, 7, 0, nr_socket), (RET, 0, 0, ALLOW),                                            # 7-8
    (LD, 0, 0, 32), (AND, 0, 0, 6), (JEQ, 8, 9, 6),                # 9-11 mmap: prot has W and X
    (LD, 0, 0, 32), (AND, 0, 0, 4), (JEQ, 5, 6, 4),                # 12-14 mprotect: prot has X
    (LD, 0, 0, 16), (JEQ, 4, 0, 1), (JEQ, 3, 0, 2), (JEQ, 2, 0, 10),  # 15-18 socket: family
    (RET, 0, 0, EAFNOSUPPORT), (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW),                     # 19-21
]
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
fprog = Prog(len(prog), ctypes.cast(code, ctypes.c_void_p))
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, f"PR_SET_SECCOMP errno {ctypes.get_errno()}"
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("the filter let a writable+executable mapping through")
except PermissionError:
    pass
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)
    sys.exit("the filter let a netlink socket through")
except OSError as exc:
    assert exc.errno == errno.EAFNOSUPPORT, exc
socket.getaddrinfo("localhost", 443, flags=socket.AI_ADDRCONFIG)  # glibc asks netlink first, then copes
import ssl
ssl.create_default_context()
sys.argv = ["gateway", *sys.argv[6:]]
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def sandboxed_gateway() -> Iterator[str]:
    """`gateway serve` (memory store, the repo's config) under the seccomp filter above; its base URL."""
    machine = os.uname().machine
    if machine not in _SECCOMP_ARCH:
        pytest.skip(f"the seccomp filter here is written for {sorted(_SECCOMP_ARCH)}, not {machine}")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "NOTIFY_SOCKET")}
    args = [str(a) for a in _SECCOMP_ARCH[machine]]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SANDBOX_LAUNCHER, *args, "serve", "--config", str(REPO / "config.yaml"),
         "--host", HOST, "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://{HOST}:{port}"
    try:
        ready, deadline = False, time.monotonic() + 20
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                    ready = True
            except OSError:
                time.sleep(0.1)
        if not ready:
            proc.kill()
            output = proc.communicate()[0].decode(errors="replace")
            pytest.fail(f"the gateway did not serve inside the sandbox (exit {proc.returncode}):\n{output}")
        yield base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_gateway_serves_under_memory_deny_write_execute_and_address_families(sandboxed_gateway: str) -> None:
    for path in ("/healthz", "/metrics", "/v1/models"):
        request = urllib.request.Request(f"{sandboxed_gateway}{path}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:  # /v1/models without a key: a proper 401 is an answer too
            status = exc.code
        assert status in (200, 401), path


# --- Prometheus ---------------------------------------------------------------------------------------


def test_prometheus_config_passes_promtool() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_gateway_and_loads_the_alerts() -> None:
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert "alerts.yml" in config["rule_files"]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "llm-gateway"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["127.0.0.1:8080"]


def test_alert_rules_pass_promtool() -> None:
    result = run(tool("promtool"), "check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_unit_tests_pass() -> None:
    """alerts_test.yml feeds made-up series and states which alerts fire, with their exact annotations."""
    result = run(tool("promtool"), "test", "rules", str(ALERTS_TEST), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def test_every_alert_has_for_severity_and_text() -> None:
    for rule in alert_rules():
        assert "alert" in rule, f"not an alert: {rule}"
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]


def test_the_alerts_operators_expect_exist() -> None:
    """Each named situation is covered by an alert over the metric that shows it."""
    by_metric = {
        "scrape down": "up",
        "egress pool down / proxy ejected": "gateway_egress_proxy_up",
        "error ratio": "gateway_requests_total",
        "store unreachable": "gateway_store_up",
        "store errors": "gateway_store_errors_total",
        "p99 latency": "gateway_request_duration_seconds_bucket",
        "balance refusals": "gateway_insufficient_balance_total",
        "rate-limit refusals": "gateway_rate_limited_total",
        "config reload failures": "gateway_config_reloads_total",
    }
    exprs = [rule["expr"] for rule in alert_rules()]
    for situation, metric in by_metric.items():
        assert any(metric in metric_names(e) for e in exprs), situation
    assert any(re.search(r"sum by \(pool\) \(gateway_egress_proxy_up\) == 0", e) for e in exprs)


def test_the_store_alert_names_every_word_of_the_readyz_store_check() -> None:
    """gateway_store_up is 0 for each way the store check fails; the alert tells the operator which to look
    for on /readyz, since each is fixed differently (a restart, the password, a wait, a failover)."""
    from gateway import openapi

    ready = openapi.document([])["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]
    words = set(ready["schema"]["properties"]["checks"]["properties"]["store"]["enum"]) - {"ok"}
    rule = next(r for r in alert_rules() if r["alert"] == "LLMGatewayStoreUnreachable")
    description = " ".join(rule["annotations"]["description"].split())
    assert "/readyz" in description
    assert {word for word in words if f'"{word}"' not in description} == set(), description


# --- Grafana ------------------------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [p for p in panels if p["type"] != "row"]


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target."""
    return [(f"panel {p['id']} {p['title']!r} {t['refId']}", t.get("expr", ""))
            for p in dashboard_panels() for t in p.get("targets", [])]


def test_dashboard_is_a_prometheus_dashboard() -> None:
    dash = dashboard()
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard_panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_has_promql() -> None:
    panels = dashboard_panels()
    assert len(panels) >= 15
    for panel in panels:
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']} {target['refId']}"


def test_dashboard_covers_every_gateway_metric() -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    used |= {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert set(METRICS) - used == set()


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every panel query, once Grafana's variables are filled in."""
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(expr)}
             for i, (_, expr) in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def grafana_to_promql(expr: str) -> str:
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "6h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # $model, ${pool}: only inside regex matchers here


# --- metric names and labels in alerts and dashboard --------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "inf", "nan"}


def metric_names(expr: str) -> list[str]:
    """Metric names an expression selects (functions, keywords, labels, strings and ranges left out)."""
    text = _STRING.sub('""', grafana_to_promql(expr))
    text = _SELECTOR.sub(lambda m: m.group(1) or "", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    return [n for n in _IDENT.findall(text) if n.lower() not in _PROMQL_WORDS]


def check_expr(where: str, expr: str, legend: str = "") -> None:
    names = metric_names(expr)
    assert names, f"{where}: selects no metric: {expr}"
    labels: set[str] = set()
    for name in names:
        known = series_labels(name)
        assert known is not None, f"{where}: {name} is not a metric the gateway exposes"
        labels |= known
    masked = _STRING.sub('""', grafana_to_promql(expr))
    for selector in _SELECTOR.finditer(masked):
        name = selector.group(1)
        assert name, f"{where}: a selector without a metric name: {selector.group(0)}"
        for label in _MATCHER_LABEL.findall(selector.group(2)):
            assert label in (series_labels(name) or ()), f"{where}: {name} has no label {label!r}"
    for group in _GROUPING.finditer(masked):
        for label in filter(None, (g.strip() for g in group.group(1).split(","))):
            assert label in labels, f"{where}: groups by {label!r}, which no selected metric has"
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        assert label in labels, f"{where}: legend uses {label!r}, which no selected metric has"


def test_metric_name_parser_sees_through_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(gateway_request_duration_seconds_bucket'
            '{model=~"$model"}[$__rate_interval]))) > 2 and on() absent(up{job="x"}) or vector(1e3)')
    assert metric_names(expr) == ["gateway_request_duration_seconds_bucket", "up"]
    with pytest.raises(AssertionError, match="gateway_requests_count"):
        check_expr("renamed", "sum(rate(gateway_requests_count[5m]))")
    with pytest.raises(AssertionError, match="no label 'status'"):
        check_expr("relabelled", 'sum(rate(gateway_requests_total{status="5xx"}[5m]))')
    with pytest.raises(AssertionError, match="'pool'"):
        check_expr("wrong grouping", "sum by (pool) (gateway_store_up)")
    with pytest.raises(AssertionError, match="not a metric"):
        check_expr("bare histogram", "rate(gateway_request_duration_seconds[5m])")


def test_alerts_use_only_gateway_metrics_and_labels() -> None:
    for rule in alert_rules():
        check_expr(rule["alert"], rule["expr"])


def test_dashboard_uses_only_gateway_metrics_and_labels() -> None:
    for panel in dashboard_panels():
        for target in panel["targets"]:
            where = f"panel {panel['title']!r} {target['refId']}"
            check_expr(where, target["expr"], target.get("legendFormat", ""))
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"variable {variable['name']}: {query}"
        assert match.group(2) in (series_labels(match.group(1)) or ()), f"variable {variable['name']}: {query}"


# --- Redis --------------------------------------------------------------------------------------------


def redis_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for raw in REDIS_CONF.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            settings[key.lower()] = value.strip()
    return settings


@pytest.mark.parametrize(("key", "expected"), [
    ("appendonly", "yes"),
    ("appendfsync", "everysec"),
    ("aof-use-rdb-preamble", "yes"),
    ("maxmemory-policy", "noeviction"),
    ("protected-mode", "yes"),
])
def test_redis_snippet_sets(key: str, expected: str) -> None:
    assert redis_settings().get(key) == expected


def test_redis_snippet_snapshots_and_listens_on_loopback_only() -> None:
    settings = redis_settings()
    assert re.fullmatch(r"(\d+ \d+ ?)+", settings["save"]), settings["save"]
    assert settings["bind"].split()[0] == "127.0.0.1"
    assert all(a in ("127.0.0.1", "-::1", "::1") for a in settings["bind"].split())
    assert "requirepass" in REDIS_CONF.read_text()  # documented, set by the operator


def test_redis_keeps_balances_across_a_crash(tmp_path: Path) -> None:
    """redis-server with the snippet included: a balance written, then SIGKILL, is there after restart."""
    binary = tool("redis-server")
    port = free_port()
    conf = tmp_path / "redis.conf"
    conf.write_text(f"include {REDIS_CONF}\nport {port}\nbind {HOST}\ndir {tmp_path}\n"
                    f"logfile {tmp_path / 'redis.log'}\ndaemonize no\n")

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"redis-server did not start:\n{(tmp_path / 'redis.log').read_text()}")
            time.sleep(0.05)
        return proc

    proc = start()
    try:
        client = redis.Redis(host=HOST, port=port)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.incrby("gw:balance:{k1}", 5_000_000_000)
        client.incrby("gw:balance:{k1}", -1_234)
        client.close()
        # everysec writes the log from Redis' own loop, and postpones that by up to 2 s while a background
        # fsync is still running (a busy disk): wait until the last write is in the log, within that bound
        deadline = time.monotonic() + 3
        while not any(b"-1234" in f.read_bytes() for f in tmp_path.glob("appendonlydir/*.aof")):
            assert time.monotonic() < deadline, "the write did not reach the append-only file within 3 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc = start()
    try:
        client = redis.Redis(host=HOST, port=port)
        assert client.get("gw:balance:{k1}") == b"4999998766"
        client.close()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# --- a fresh machine, the reload alert's first failure, the stop budget ---------------------------------


def test_make_test_installs_python3_venv_before_it_creates_the_venv(tmp_path: Path) -> None:
    """Debian's python3 has no ensurepip (it is in python3-venv / python3.X-venv): `python3 -m venv` fails
    on a fresh machine, and leaves a .venv/bin/python without pip that the next `make` takes as done. The
    Makefile must install python3-venv (when missing, as root) before it creates the venv."""
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, tmp_path / name)
    result = subprocess.run(["make", "-n", "test"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    venv_at = out.find("-m venv")
    assert venv_at >= 0, out
    assert "python3-venv" in out[:venv_at], f"nothing installs python3-venv before `-m venv`:\n{out}"


def test_reload_failure_series_exists_before_the_first_failure() -> None:
    """The alert is `increase(gateway_config_reloads_total{result="failure"}[15m]) > 0`. increase() needs two
    samples of a series: when the series appears only at the first failure (value 1), increase() is 0 and
    the first failed reload after a start never alerts. So the gateway must expose it at 0 from the start
    (alerts_test.yml assumes exactly that: '0 0 0 1 1 ...')."""
    out = _fresh_exposition()
    assert re.search(r'^gateway_config_reloads_total\{result="failure"\} 0\.0$', out, re.M), out


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_reload_failed_alert_fires_on_the_series_as_the_gateway_exposes_it(tmp_path: Path) -> None:
    """The failure series as a freshly started gateway exposes it (absent, before the fix), then one failed
    reload at minute 3: the alert must fire."""
    exposed = re.search(r'^gateway_config_reloads_total\{result="failure"\} 0\.0$', _fresh_exposition(), re.M)
    [rule] = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
              if r.get("alert") == "LLMGatewayConfigReloadFailed"]
    test = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": 'gateway_config_reloads_total{result="failure"}',
                          "values": ("0 0 0" if exposed else "_ _ _") + " 1 1 1 1 1 1 1 1 1"}],
        "alert_rule_test": [{"eval_time": "5m", "alertname": "LLMGatewayConfigReloadFailed", "exp_alerts": [
            {"exp_labels": {"severity": "warning", "result": "failure"},
             "exp_annotations": rule["annotations"]}]}]}]}
    path = tmp_path / "reload_test.yml"
    path.write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _fresh_exposition() -> str:
    code = "import gateway.metrics as m, sys; sys.stdout.write(m.render().decode())"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"}).stdout


def test_the_stop_budget_covers_the_grace_and_the_settlement_drain() -> None:
    """After SIGTERM requests in flight get server.shutdown_grace_s (30 s by default), then pending
    settlements get the drain: both must end before systemd's SIGKILL (TimeoutStopSec) and, with --workers,
    before the supervisor kills its workers (grace + 10 s), or retries still running die unlogged."""
    from gateway.app import SHUTDOWN_DRAIN_S
    from gateway.config import ServerConfig

    grace_s = ServerConfig().shutdown_grace_s
    stop = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("TimeoutStopSec=")]
    assert float(stop[-1].removesuffix("s")) > grace_s + SHUTDOWN_DRAIN_S
    assert SHUTDOWN_DRAIN_S < 10  # the supervisor's margin after the grace (gateway/supervisor.py)
