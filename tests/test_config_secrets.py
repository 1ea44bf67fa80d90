"""A config that cannot be used says where and what, never quoting a value: a provider key, a proxy password
or a token may be on the offending line (check-config's stderr, a refused reload's log line, serve's start-up)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes.openai_upstream import FakeOpenAI
from fakes.openai_upstream import make_app as make_fake_app
from harness import gateway_config_text, run_cli, start_gateway

from gateway.app import reload_config
from gateway.config import ConfigError
from gateway.config_load import parse
from gateway.state import RUNTIME

SECRET = "sk-live-0f1e2d3c4b5a6978"
PASSWORD = "Tr0ub4dor-and-3"
HEAD = "providers:\n  openai:\n    kind: openai\n    base_url: https://api.openai.com/v1\n"

# YAML syntax errors a hand-edited secret typically makes; PyYAML's message quotes the line (and the alias,
# tag or escape it trips on), which is where the secret is
BROKEN = [
    pytest.param(HEAD + f"    api_key: {SECRET}: x\n", SECRET, 5, id="colon-space-inside-a-plain-value"),
    pytest.param(HEAD + f'    api_key: "{SECRET}\n', SECRET, 5, id="unclosed-double-quote"),
    pytest.param(HEAD + f"    api_key: '{SECRET}\n", SECRET, 5, id="unclosed-single-quote"),
    pytest.param(HEAD + f"    api_key {SECRET}\n", SECRET, 5, id="missing-colon"),
    pytest.param(HEAD + f"    api_key: *{SECRET}\n", SECRET, 5, id="value-read-as-an-alias"),
    pytest.param(HEAD + f"    api_key: !{SECRET}\n", SECRET, 5, id="value-read-as-a-tag"),
    pytest.param(HEAD + f'egress:\n  pools:\n    eu:\n      proxies:\n        - {{name: a, url: "socks5h://u:{PASSWORD[:5]}\\'
                 f'{PASSWORD[5:]}@203.0.113.1:1080"}}\n', PASSWORD[5:], 9, id="backslash-in-a-quoted-password"),
]


@pytest.mark.parametrize(("text", "secret", "line"), BROKEN)
def test_a_yaml_syntax_error_names_the_line_but_never_quotes_it(text: str, secret: str, line: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text, {}, source="gateway.yaml")
    message = str(info.value)
    assert message.startswith("gateway.yaml: not valid YAML"), message
    assert f"line {line}" in message, message
    assert secret not in message and secret[:8] not in message, message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained YAMLError to log


def test_a_key_missing_its_space_in_a_flow_mapping_is_not_quoted_back() -> None:
    """`{api_key:sk-...}` in a flow mapping is one plain scalar, a key: the unknown-key message named it whole."""
    text = f'providers: {{openai: {{kind: openai, base_url: "https://api.openai.com/v1", api_key:{SECRET}}}}}\n'
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    message = str(info.value)
    assert "providers.openai" in message and "unknown key" in message, message
    assert SECRET not in message and SECRET[:8] not in message, message


def test_check_config_does_not_print_a_secret_on_a_broken_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(HEAD + f'    api_key: "{SECRET}\n')
    result = run_cli("check-config", str(path), timeout=30)
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr and "line 5" in result.stderr, result.stderr
    assert SECRET not in result.stdout + result.stderr


async def test_a_refused_reload_does_not_log_a_secret_on_a_broken_line(
        make_gateway: Any, tmp_path: Path, log_lines: Callable[[], list[dict[str, Any]]]) -> None:
    gw = await make_gateway()
    path = tmp_path / "broken.yaml"
    path.write_text(HEAD + f"    api_key: {PASSWORD}: x\n")  # a new key, not yet known to the redactor
    gw.app[RUNTIME].config_path = str(path)
    assert await reload_config(gw.app) is False
    lines = json.dumps(log_lines())
    assert "config reload failed" in lines
    assert PASSWORD not in lines


# --- a credential the config sends through `providers.*.headers` ------------------------------------------

HEADER_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # hex, as Azure's `api-key`: no pattern knows its shape


@pytest.mark.parametrize("name", ["api-key", "X-Portkey-Api-Key", "cf-aig-authorization", "X-Auth-Token"])
async def test_a_credential_in_provider_headers_is_a_secret(
        aiohttp_server: Any, name: str, log_lines: Callable[[], list[dict[str, Any]]]) -> None:
    """A gateway in front of a key-checking proxy (Azure, Portkey, Cloudflare AI Gateway) sends its credential as
    a configured header; an upstream that quotes it back must not hand it to the client, nor to the log."""
    fake = FakeOpenAI()
    fake.status, fake.error_body = 400, {"error": {"message": f"header {name}={HEADER_SECRET} not accepted here",
                                                   "type": "invalid_request_error", "param": None, "code": None}}
    server = await aiohttp_server(make_fake_app(fake))
    text = gateway_config_text(str(server.make_url("/v1"))).replace(
        "    timeouts: {connect_s: 1,", f'    headers: {{"{name}": "{HEADER_SECRET}", HTTP-Referer: "https://app"}}\n'
                                       "    timeouts: {connect_s: 1,", 1)
    config = parse(text, {})
    assert config.providers["fake"].headers[name] == HEADER_SECRET
    gateway = await start_gateway(aiohttp_server, config, fake)
    try:
        async with aiohttp.ClientSession() as http, http.post(
                gateway.url + "/v1/chat/completions", headers=gateway.auth(),
                json={"model": "fake/gpt-4o", "messages": [{"role": "user", "content": "hi"}]}) as r:
            status, payload = r.status, await r.json()
        assert fake.last.headers[name] == HEADER_SECRET  # it was sent
        assert status == 400 and "not accepted here" in payload["error"]["message"], payload
        for where in (json.dumps(payload), json.dumps(log_lines())):
            assert HEADER_SECRET not in where
        assert "https://app" not in config.secrets()  # a plain header is no secret: logs keep it
    finally:
        await gateway.close()


# --- an error inside a 200 answer -------------------------------------------------------------------------


@pytest.mark.parametrize("api_gateway", ["memory"], indirect=True)
@pytest.mark.parametrize("byok", [False, True], ids=["operator-key", "byok"])
async def test_an_error_inside_a_200_answer_is_scrubbed_too(api_gateway: Any, byok: bool) -> None:
    """Gemini may answer 200 with a google.rpc.Status `error` (the adapter reads it as a failed answer): its
    text reached the client as it came, so a key the upstream quoted there was handed to any client."""
    from apis_config import GEMINI_KEY

    own = "my-own-gemini-key-without-a-known-shape"
    quoted = own if byok else GEMINI_KEY
    ups = api_gateway.extra["upstreams"]
    ups.gemini.unary_answer = lambda thinks=False: {
        "error": {"code": 400, "message": f"API key not valid: {quoted}", "status": "INVALID_ARGUMENT"}}
    body = {"model": "google/flash", "messages": [{"role": "user", "content": "hi"}],
            **({"provider_api_key": own} if byok else {})}
    async with aiohttp.ClientSession() as http, http.post(api_gateway.url + "/v1/chat/completions",
                                                          headers=api_gateway.auth(), json=body) as r:
        status, payload = r.status, await r.json()
    assert status == 502 and "API key not valid" in payload["error"]["message"], payload
    assert quoted not in json.dumps(payload)


def test_a_proxy_url_written_as_a_providers_egress_is_not_quoted_back() -> None:
    """`egress:` names a pool; an operator who writes the proxy's URL there got it quoted, password and all."""
    text = HEAD + f'    egress: "socks5h://user:{PASSWORD}@203.0.113.1:1080"\n'
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    message = str(info.value)
    assert message.startswith("providers.openai.egress: names a pool, not a proxy URL"), message
    assert PASSWORD not in message
