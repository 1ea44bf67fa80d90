"""Config loading: env substitution, validation messages that name the YAML path, cross-references."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.catalog import Catalog
from gateway.config import ConfigError, to_nano
from gateway.config_load import load, parse
from providers.anthropic_request import enforces_schemas

ROOT = Path(__file__).resolve().parents[1]

BASE = """
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "${OPENAI_API_KEY:-}"}
models:
  openai/gpt-5:
    price: {input_per_mtok: 1.25, output_per_mtok: 10.0}
    aliases: [gpt-5]
"""


def test_shipped_config_loads_on_a_fresh_machine() -> None:
    config = load(ROOT / "config.yaml", environ={})
    assert config.store.url == ""
    assert config.providers["openai"].api_key == ""
    assert config.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert {"openai", "anthropic", "google", "x", "deepseek", "ollama"} <= set(config.providers)
    seed = {"openai/gpt-5", "openai/gpt-5-mini", "openai/gpt-5-nano", "anthropic/claude-opus-4-0",
            "anthropic/claude-sonnet-4-0", "google/gemini-2.5-pro", "google/gemini-2.0-flash",
            "google/gemini-2.0-flash-lite", "x/grok-4-0709", "x/grok-3", "x/grok-3-mini", "deepseek/deepseek-chat",
            "deepseek/deepseek-reasoner", "ollama/qwen2.5vl:32b", "ollama/gemma3:27b"}
    assert seed <= set(config.models)
    assert config.providers["anthropic"].kind == "anthropic" and config.providers["google"].kind == "gemini"
    gpt5 = config.models["openai/gpt-5"]
    assert gpt5.params.max_tokens_field == "max_completion_tokens"
    assert "temperature" in gpt5.params.drop


def test_shipped_claude_fallbacks_hold_strict_schemas() -> None:
    """A `.parse()` or strict-tool request that falls back to Claude keeps its guarantee only on a Claude
    that has strict tools (4.5 and later): the shipped fallbacks name such models."""
    config = load(ROOT / "config.yaml", environ={})
    claude_fallbacks = {fallback for model in config.models.values() for fallback in model.fallbacks
                        if fallback.startswith("anthropic/")}
    assert claude_fallbacks, "the shipped config should fall back to a Claude model somewhere"
    upstream = {name: config.models[name].upstream or name.split("/", 1)[1] for name in claude_fallbacks}
    assert all(enforces_schemas(model) for model in upstream.values()), upstream
    assert {"anthropic/claude-sonnet-4-5", "anthropic/claude-haiku-4-5"} <= set(config.models)


def test_env_substitution_with_and_without_default() -> None:
    text = BASE + 'store: {url: "${REDIS_URL:-redis://127.0.0.1:6379/0}", prefix: "${PFX}"}\n'
    config = parse(text, {"PFX": "x:", "OPENAI_API_KEY": "sk-test-123456"})
    assert config.store.url == "redis://127.0.0.1:6379/0"
    assert config.store.prefix == "x:"
    assert config.providers["openai"].api_key == "sk-test-123456"


def test_substitution_happens_after_parsing_so_values_cannot_inject_yaml() -> None:
    config = parse(BASE, {"OPENAI_API_KEY": "abc # not a comment\nserver: {port: 1}"})
    assert config.providers["openai"].api_key.startswith("abc # not a comment")
    assert config.server.port == 8080


def test_unset_variable_without_default_names_the_path() -> None:
    text = BASE.replace("${OPENAI_API_KEY:-}", "${MISSING_KEY}")
    with pytest.raises(ConfigError, match=r"providers\.openai\.api_key: environment variable MISSING_KEY"):
        parse(text, {})


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        pytest.param("input_per_mtok: 1.25", "input_per_mtok: -1",
                     "models.openai/gpt-5.price.input_per_mtok: must be a number >= 0", id="negative-price"),
        pytest.param("input_per_mtok: 1.25", "input_per_mtok: cheap",
                     "models.openai/gpt-5.price.input_per_mtok: must be a number", id="price-not-number"),
        pytest.param("kind: openai", "kind: telepathy",
                     "providers.openai.kind: must be one of anthropic, gemini, openai", id="unknown-kind"),
        pytest.param("aliases: [gpt-5]", "aliasez: [gpt-5]", "models.openai/gpt-5.aliasez: unknown key",
                     id="typo-key"),
        pytest.param('base_url: "https://api.openai.com/v1"', 'base_url: "api.openai.com"',
                     "providers.openai.base_url: must match", id="base-url-scheme"),
        pytest.param("openai/gpt-5:", "anthropic/claude:", "models.anthropic/claude: no provider named 'anthropic'",
                     id="model-of-unknown-provider"),
        pytest.param('api_key: "${OPENAI_API_KEY:-}"', 'api_key: "", egress: eu',
                     "providers.openai.egress: no pool named 'eu'", id="unknown-egress-pool"),
        pytest.param("aliases: [gpt-5]", "aliases: [gpt-5]\n    fallbacks: [x/y]",
                     "models.openai/gpt-5.fallbacks.0: no model 'x/y'", id="unknown-fallback"),
        pytest.param("aliases: [gpt-5]", "aliases: [openai/gpt-5]",
                     "models.openai/gpt-5.aliases.0: 'openai/gpt-5' is already used", id="alias-collision"),
        pytest.param("aliases: [gpt-5]", 'aliases: ["@preset/fast"]',
                     "models.openai/gpt-5.aliases.0: '@preset/fast' is a preset's name (presets answer to @preset/)",
                     id="alias-in-the-presets-namespace"),
        pytest.param("openai/gpt-5:", '"@preset/gpt-5":', "models.@preset/gpt-5: '@preset/' names presets",
                     id="model-in-the-presets-namespace"),
    ],
)
def test_validation_errors_name_the_yaml_path(old: str, new: str, expected: str) -> None:
    assert old in BASE
    with pytest.raises(ConfigError) as info:
        parse(BASE.replace(old, new), {})
    assert expected in str(info.value)


def test_all_problems_are_reported_at_once() -> None:
    text = BASE.replace("input_per_mtok: 1.25", "input_per_mtok: -1").replace("10.0", "-2")
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert len(str(info.value).splitlines()) == 2


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("server: [1, 2", "not valid YAML", id="broken-yaml"),
    pytest.param("- just\n- a list", "top level must be a mapping", id="not-a-mapping"),
])
def test_unreadable_files_are_config_errors(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse(text, {})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("usd", "nano"), [(1.25, 1_250_000_000), (0.1, 100_000_000), (1.1, 1_100_000_000),
                                          (0.000001, 1_000), (0, 0)])
def test_dollars_become_exact_nano_dollars(usd: float, nano: int) -> None:
    assert to_nano(usd) == nano


POOLED = BASE.replace('api_key: "${OPENAI_API_KEY:-}"}', 'egress: eu, blocked_regions: [ru, cn]}') + """
egress:
  pools:
    eu:
      proxies:
        - {name: a, url: "socks5h://user:pw@127.0.0.1:1080", region: ru}
        - {name: b, url: "http://127.0.0.1:3128", region: cn}
"""


def test_a_provider_left_without_a_usable_proxy_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"providers\.openai\.blocked_regions: leaves no usable proxy in pool 'eu'"):
        parse(POOLED, {})
    assert parse(POOLED.replace("region: cn", "region: de"), {}).providers["openai"].blocked_regions == ["ru", "cn"]
    with pytest.raises(ConfigError, match=r"leaves no usable proxy"):  # a region's case does not hide it
        parse(POOLED.replace("region: cn", "region: CN"), {})
    fallback = POOLED.replace("      proxies:", "      fallback_direct: true\n      proxies:")
    assert parse(fallback, {}).egress.pools["eu"].fallback_direct


@pytest.mark.parametrize(("probe", "ok"), [
    ("tcp://api.openai.com:443", True), ("https://api.openai.com/v1/models", True), ("", True),
    ("api.openai.com:443", False), ("tcp://api.openai.com", False), ("ftp://host/x", False),
], ids=str)
def test_a_health_probe_is_a_tunnel_or_an_http_url(probe: str, ok: bool) -> None:
    """A probe the prober cannot read fails every time, and probes eject without the passive cap: a typo
    took every proxy of the pool down. It is refused at load instead."""
    health = f'      health: {{probe: "{probe}"}}\n      proxies:'
    text = POOLED.replace("region: cn", "region: de").replace("      proxies:", health)
    if ok:
        assert parse(text, {}).egress.pools["eu"].health.probe == probe
    else:
        with pytest.raises(ConfigError, match=r"egress\.pools\.eu\.health\.probe: must match"):
            parse(text, {})


@pytest.mark.parametrize(("env", "expected"), [
    pytest.param({}, "redis://127.0.0.1:6379/0", id="unset"),
    pytest.param({"REDIS_URL": ""}, "redis://127.0.0.1:6379/0", id="set-but-empty"),
    pytest.param({"REDIS_URL": "unix:///run/redis.sock"}, "unix:///run/redis.sock", id="set"),
])
def test_a_default_covers_unset_and_empty_variables_as_in_a_shell(env: dict[str, str], expected: str) -> None:
    text = BASE + 'store: {url: "${REDIS_URL:-redis://127.0.0.1:6379/0}"}\n'
    assert parse(text, env).store.url == expected


def test_a_variable_without_default_may_be_empty_but_must_be_set() -> None:
    text = BASE.replace("${OPENAI_API_KEY:-}", "${OPENAI_API_KEY}")
    assert parse(text, {"OPENAI_API_KEY": ""}).providers["openai"].api_key == ""
    with pytest.raises(ConfigError, match="environment variable OPENAI_API_KEY is not set"):
        parse(text, {})


@pytest.mark.parametrize("url", [
    "", "redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380/2", "redis://127.0.0.1",
    "unix:///run/redis/redis-server.sock", "unix:///run/redis/redis-server.sock?password=pw&db=1",
])
def test_store_urls_the_store_can_open(url: str) -> None:
    assert parse(BASE + f'store: {{url: "{url}"}}\n', {}).store.url == url


@pytest.mark.parametrize(("url", "expected"), [
    pytest.param("http://:hunter2-secret@127.0.0.1:6379", "must be a redis://, rediss:// or unix:// URL, or empty",
                 id="http"),
    pytest.param("127.0.0.1:6379", "must be a redis://, rediss:// or unix:// URL", id="no-scheme"),
    pytest.param("memory", "or empty for the in-process memory store", id="memory-word"),
    pytest.param("REDIS://127.0.0.1:6379", "must be a redis://", id="upper-case"),  # redis-py refuses it
    pytest.param("redis://:hunter2-secret@127.0.0.1:63x9/0", "is not a valid Redis URL", id="bad-port"),
    pytest.param("redis://:hunter2/secret@127.0.0.1:6379/0", "percent-encode @ : / in a password",
                 id="slash-in-password"),
    pytest.param("redis://:hunter2-secret@127.0.0.1:6379/zero", "the database number", id="bad-db"),
    pytest.param("unix://", "needs the socket's path", id="unix-without-path"),
])
def test_store_url_is_checked_at_load_without_quoting_it(url: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(BASE + 'store: {url: "${REDIS_URL}"}\n', {"REDIS_URL": url})
    message = str(info.value)
    assert message.startswith("store.url: ") and expected in message
    assert "hunter2" not in message and "secret" not in message


def test_every_kind_of_problem_is_reported_in_one_go() -> None:
    """Unset variables, invalid values and dangling references: one run names them all."""
    text = BASE.replace("input_per_mtok: 1.25", "input_per_mtok: -1") + """
  openai/gpt-4o: {price: {output_per_mtok: 5}, fallbacks: [openai/nope]}
  ghost/model: {}
server: {admin_token: "${ADMIN_TOKEN}"}
presets:
  helper: {model: openai/gpt-4o, system_overide: true}
"""
    text = text.replace('api_key: "${OPENAI_API_KEY:-}"}', 'api_key: "${OPENAI_API_KEY:-}", egress: eu}')
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert sorted(str(info.value).splitlines()) == sorted([
        "server.admin_token: environment variable ADMIN_TOKEN is not set",
        "models.openai/gpt-5.price.input_per_mtok: must be a number >= 0.0",
        "presets.helper.system_overide: unknown key (typo?)",
        "providers.openai.egress: no pool named 'eu' (or use 'direct')",
        "models.openai/gpt-4o.fallbacks.0: no model 'openai/nope' in models",
        "models.ghost/model: no provider named 'ghost' in providers",
    ])


def test_references_to_an_invalid_entry_are_not_reported_twice() -> None:
    """A provider with a bad kind is reported once; its models do not add 'no provider named ...'."""
    text = BASE.replace("kind: openai", "kind: telepathy")
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert str(info.value).splitlines() == ["providers.openai.kind: must be one of anthropic, gemini, openai"]


def test_an_invalid_proxy_is_reported_once_and_its_pool_is_not_missing() -> None:
    """Without its invalid proxy the pool would leave the provider only a blocked region: not reported."""
    valid = POOLED.replace("region: cn", "region: de")
    text = valid.replace('url: "http://127.0.0.1:3128"', 'url: "ftp://127.0.0.1:21"')
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert str(info.value).splitlines() == [
        "egress.pools.eu.proxies.1.url: must match ^(socks5h?|socks4a?|https?)://"]


@pytest.mark.parametrize("url", [
    "socks5h://u:${PW}@127.0.0.1:1080",  # a password from the environment holding '#' (or '/', '?'), not encoded
    "socks5h://u:pw-0000@127.0.0.1:99999",  # a port out of range
    "socks5h://u:pw-0000@127.0.0.1:10a80",  # not a number
    "socks5h://u:pw-0000@127.0.0.1:0",
    "http://",  # no host
])
def test_a_proxy_url_the_gateway_cannot_use_is_refused_without_quoting_it(url: str) -> None:
    """Refused when the config loads, not at start-up or mid-reload, whose error quoted the password up to
    its '#' ("Port could not be cast to integer value as 'zq9'")."""
    text = POOLED.replace("region: cn", "region: de").replace("socks5h://user:pw@127.0.0.1:1080", url)
    with pytest.raises(ConfigError) as info:
        parse(text, {"PW": "zq9#cd-proxy-secret"})
    assert str(info.value).startswith("egress.pools.eu.proxies.0.url: ")
    assert "zq9" not in str(info.value) and "pw-0000" not in str(info.value)


@pytest.mark.parametrize(("url", "says"), [
    ("socks5h://u:p%C3%A4ssw%C3%B6rd-zq9@127.0.0.1:1080", "printable ASCII"),  # SOCKS5 sends ASCII only
    ("http://u:p%C3%A4ssw%C3%B6rd-zq9@127.0.0.1:3128", "printable ASCII"),  # Basic auth: charset unknown
    ("socks5h://u:zq9%0Apw@127.0.0.1:1080", "printable ASCII"),  # a control character
    ("socks5h://u:" + "zq9" * 86 + "@127.0.0.1:1080", "255"),  # RFC 1929: a length byte
    ("http://us%3Aer:zq9-pw@127.0.0.1:3128", "':'"),  # RFC 7617: Basic auth's user-id ends at the first ':'
    ("https://us%3Aer:zq9-pw@127.0.0.1:3128", "':'"),
])
def test_proxy_credentials_the_proxy_libraries_cannot_send_are_refused(url: str, says: str) -> None:
    """python-socks raised a ValueError at every connect (ASCII encoding, a length byte, BasicAuth's ':'
    check), which no failover caught: every request through the proxy was a 500 with a traceback, and the
    proxy was never counted as failing. Refused at load instead, naming the rule, never the credential."""
    text = POOLED.replace("region: cn", "region: de").replace("socks5h://user:pw@127.0.0.1:1080", url)
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    message = str(info.value)
    assert message.startswith("egress.pools.eu.proxies.0.url: ") and says in message, message
    assert "zq9" not in message and "us:er" not in message and "us%3Aer" not in message


def test_printable_ascii_proxy_credentials_with_url_special_characters_load() -> None:
    url = "socks5h://us%40er:p%40ss%3Aw%25rd%2Fx%3F%23~!$&'()*+,;=@127.0.0.1:1080"
    text = POOLED.replace("region: cn", "region: de").replace("socks5h://user:pw@127.0.0.1:1080", url)
    assert parse(text, {}).egress.pools["eu"].proxies[0].url == url


@pytest.mark.parametrize(("url", "password"), [
    ("socks5h://user:pw@127.0.0.1:1080", "pw"),  # too short to redact
    ("socks5h://u:p@ssword123@127.0.0.1:1080", "p@ssword123"),  # an '@' left unencoded: the last one ends it
    ("socks5h://u:pa%2Fss%40word@127.0.0.1:1080", "pa/ss@word"),  # as sent to the proxy
])
def test_every_proxy_password_is_a_secret_to_redact(url: str, password: str) -> None:
    config = parse(POOLED.replace("region: cn", "region: de").replace("socks5h://user:pw@127.0.0.1:1080", url), {})
    assert (password in config.secrets()) is (len(password) >= 4)
    assert "p" not in config.secrets() and "user" not in config.secrets()


def _names_in_config(text: str) -> set[str]:
    """Every ${NAME} in the text, but the placeholder its header comment writes as "${VAR}"."""
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) - {"VAR"}


def test_the_deploy_env_example_and_config_yaml_name_the_same_variables() -> None:
    """Every ${VAR} of the shipped config (its commented examples included) has a line in the env file
    template, set or commented out, and the template names nothing the config does not read."""
    config_vars = _names_in_config((ROOT / "config.yaml").read_text())
    example = (ROOT / "deploy" / "gateway.env.example").read_text()
    example_vars = set(re.findall(r"(?m)^#?\s*([A-Z_][A-Z0-9_]*)=", example))
    assert config_vars, "config.yaml reads no variables?"
    assert config_vars - example_vars == set(), "missing from deploy/gateway.env.example"
    assert example_vars - config_vars == set(), "not read by config.yaml"


@pytest.mark.parametrize(("extra", "expected"), [
    pytest.param("modelz: {}\n", ["modelz: unknown key (typo?)",
                                  "models.openai/gpt-5.fallbacks.0: no model 'x/y' in models"], id="stray-section"),
    pytest.param("presets: [a, b]\n", ["presets: must be a mapping"], id="section-not-a-mapping"),
    pytest.param("providers: [openai]\n", ["providers: must be a mapping"], id="providers-not-a-mapping"),
    pytest.param("presets: {p: [1]}\n", ["presets.p: must be a mapping",
                                         "models.openai/gpt-5.fallbacks.0: no model 'x/y' in models"],
                 id="entry-not-a-mapping"),
])
def test_a_bad_section_fakes_no_dangling_references(extra: str, expected: list[str]) -> None:
    """A stray top-level key or a broken entry hides nothing; a section that is not even a mapping is
    reported alone, as every reference into the rest could be its echo."""
    text = BASE.replace("aliases: [gpt-5]", "aliases: [gpt-5]\n    fallbacks: [x/y]") + extra
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert str(info.value).splitlines() == expected


@pytest.mark.parametrize(("base_url", "drops"), [("https://api.mistral.ai/v1", True),
                                                 ("https://API.Mistral.ai/v1", True),
                                                 ("https://api.openai.com/v1", False)])
def test_mistral_is_sent_no_stream_options(base_url: str, drops: bool) -> None:
    doc = f"providers:\n  p: {{kind: openai, base_url: \"{base_url}\"}}\nmodels:\n  p/m: {{}}\n"
    assert ("stream_options" in Catalog(parse(doc, {})).resolve("p/m").target("").drop) is drops


@pytest.mark.parametrize(("fields", "keeps"), [
    ('base_url: "https://api.openai.com/v1"', False),
    ('base_url: "https://openrouter.ai/api/v1"', True),
    ('base_url: "https://OpenRouter.ai/api/v1"', True),
    ('base_url: "https://openrouter.ai.example.com/v1"', False),
    ('base_url: "https://openrouter.ai/api/v1", cache_control: false', False),
    ('base_url: "http://127.0.0.1:4000/v1", cache_control: true', True),
], ids=["openai", "openrouter", "openrouter_any_case", "lookalike_host", "openrouter_turned_off", "proxy_turned_on"])
def test_cache_control_marks_go_to_openrouter_or_where_configured(fields: str, keeps: bool) -> None:
    doc = f"providers:\n  p: {{kind: openai, {fields}}}\nmodels:\n  p/m: {{}}\n"
    config = parse(doc, {})
    assert config.providers["p"].keeps_cache_control is keeps
    assert Catalog(config).resolve("p/m").target("").keep_cache_control is keeps
    assert Catalog(config).resolve("p/m").target("").keep_reasoning_details is ("openrouter.ai/" in fields.lower())
