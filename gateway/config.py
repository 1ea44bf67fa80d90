"""Typed, frozen configuration: what every section of `config.yaml` may hold, with its defaults.

`gateway.config_load` reads a file into a `Config` (the only code that reads config files or os.environ),
`gateway.config_check` says everything wrong with one in one go.

Exception tree::

    ConfigError        the file is missing, not YAML, or not a valid config (message names YAML paths)
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from redis.connection import parse_url as parse_redis_url

from egress.proxy import POOL_IDLE_S, sendable_credentials
from gateway.config_reasoning import ReasoningConfig
from gateway.fetch import local_host
from gateway.store.boundary import url_secrets
from providers.registry import KINDS

NANO = 1_000_000_000  # nano-dollars per dollar
CACHE_CONTROL_HOSTS = frozenset({"openrouter.ai"})  # OpenAI-compatible APIs that document `cache_control`
# and those that want an earlier answer's `reasoning_details` back in the history (OpenRouter: Gemini 3's
# thought signatures and Claude's signed thinking ride in it); other servers answer 400 to the field
REASONING_DETAILS_HOSTS = frozenset({"openrouter.ai"})
# and those that refuse `stream_options` (422 extra_forbidden), to which the gateway's `include_usage` is not
# added: Mistral, whose streams end with their usage anyway
NO_STREAM_OPTIONS_HOSTS = frozenset({"api.mistral.ai", "codestral.mistral.ai"})
# How long an idle connection to a local or plain-http upstream may be reused: under the idle timeouts their
# servers close connections at (uvicorn, llama-server, Node: 5 s; gunicorn's uvicorn workers: 2 s), as a
# request sent just as the server closes is lost. A new connection there costs one TCP handshake, no TLS.
LOCAL_POOL_IDLE_S = 1.0


class ConfigError(Exception):
    """The config cannot be used; the message names the YAML path of each problem."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


NonNegFloat = Annotated[float, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: PosInt = 20 * 1024 * 1024
    admin_token: str = ""
    sse_keepalive_s: PosFloat = 10.0  # ': keep-alive' comment while the upstream is silent
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: PosFloat = 30.0  # streams in flight may finish for this long after SIGTERM
    # the longest a request body may take to arrive whole, however it trickles (60 s of silence end it sooner)
    body_timeout_s: PosFloat = 300.0
    metrics_listen: str = Field(default="", pattern=r"^$|^[^:]+:\d+$")  # "host:port": /metrics there only
    metrics_token: str = ""  # when set, /metrics needs "Authorization: Bearer <token>"
    admin_listen: str = Field(default="", pattern=r"^$|^[^:]+:\d+$")  # "host:port": /admin/* there only

    @field_validator("metrics_listen", "admin_listen")
    @classmethod
    def _listen_port(cls, address: str) -> str:
        if address and not 1 <= int(address.rpartition(":")[2]) <= 65535:
            raise ValueError("the port must be 1-65535")
        return address


STORE_SCHEMES = ("redis", "rediss", "unix")


class StoreConfig(_Model):
    url: str = ""  # empty: in-process memory store
    prefix: str = "gw:"
    starter_key_balance: NonNegFloat = 1.0  # USD on the key a memory-store gateway creates at startup

    @field_validator("url")
    @classmethod
    def _store_url(cls, url: str) -> str:
        """Refused at load rather than at the first request; never quoted back, as it may hold a password."""
        if not url:
            return url
        scheme, sep, _ = url.partition("://")
        if not sep or scheme not in STORE_SCHEMES:  # lower case: redis-py refuses "REDIS://"
            raise ValueError("must be a redis://, rediss:// or unix:// URL, or empty for the in-process "
                             "memory store (one process only)")
        try:
            parse_redis_url(url)  # redis-py's own parser (port, db, options), the one the store uses
        except ValueError:  # its message may quote a fragment of a malformed password: say it our way
            raise ValueError("is not a valid Redis URL (check the port and db; percent-encode @ : / in a "
                             "password)") from None
        path = urlsplit(url).path
        if scheme == "unix" and not path:
            raise ValueError("a unix:// URL needs the socket's path (unix:///run/redis/redis-server.sock)")
        if scheme != "unix" and not re.fullmatch(r"/?\d*", path):  # redis-py would ignore it: db 0
            raise ValueError("the path of a redis:// URL is the database number (redis://host:6379/0)")
        return url


class HealthConfig(_Model):
    interval_s: PosFloat = 10.0
    timeout_s: PosFloat = 5.0
    # tcp://host:port (a tunnel), http(s)://... (any HTTP answer); anything else failed every probe, and
    # probes eject without a cap: every proxy of the pool went down
    probe: str = Field(default="", pattern=r"^$|^tcp://[^/:]+:\d+/?$|^https?://[^/]+")
    eject_after_failures: PosInt = 3
    restore_after_successes: PosInt = 1


class ProxyConfig(_Model):
    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^(socks5h?|socks4a?|https?)://")
    region: str | None = None

    @field_validator("region")
    @classmethod
    def _region_case(cls, region: str | None) -> str | None:
        return region.lower() if region else region  # `DE` and `de` are one region to `blocked_regions`

    @field_validator("url")
    @classmethod
    def _usable_url(cls, url: str) -> str:
        """Refused at load rather than at start-up or reload; never quoted back (it holds a password)."""
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("a proxy URL is scheme://[user:password@]host[:port]: percent-encode / ? # @ "
                             "in the user name or password")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number 0-65535)
        except ValueError:
            raise ValueError("the port must be a number 1-65535 (percent-encode : / ? # @ in a password)") from None
        if not parts.hostname or parts.port == 0:
            raise ValueError("a proxy URL needs a host and a port 1-65535")
        sendable_credentials(parts.scheme, unquote(parts.username or ""), unquote(parts.password or ""))
        return url


class PoolConfig(_Model):
    strategy: Literal["round_robin", "least_latency", "random"] = "round_robin"
    proxies: list[ProxyConfig] = Field(min_length=1)
    health: HealthConfig = HealthConfig()
    fallback_direct: bool = False
    affinity: bool = True  # each upstream API key keeps leaving through one proxy
    max_attempts: PosInt = 3  # proxies tried for one request when connecting fails
    max_ejected_share: Annotated[float, Field(ge=0, le=1)] = 0.5  # cap on passive ejections at once


class EgressConfig(_Model):
    pools: dict[str, PoolConfig] = {}


class TimeoutsConfig(_Model):
    """Split timeouts: no total cap, so a long generation that keeps streaming is never cut."""

    connect_s: PosFloat = 10.0
    first_byte_s: PosFloat = 300.0  # until the upstream's response headers
    between_chunks_s: PosFloat = 300.0  # longest silence inside a body
    # an idle pooled connection is reused only within this (0: never); None: ProviderConfig.pool_idle_s
    pool_idle_s: Annotated[float, Field(ge=0, le=POOL_IDLE_S)] | None = None


# `providers.*.headers` names whose value is a credential (a key-checking proxy's `api-key`, `cf-aig-authorization`,
# `x-portkey-api-key`, `X-Auth-Token`...); other headers (`HTTP-Referer`, `X-Title`) are not secret
_SECRET_HEADER = re.compile(r"(?i)auth|key|token|secret|passw|cookie|session|signature|credential")


class ProviderConfig(_Model):
    kind: str
    base_url: str = Field(pattern=r"^https?://")
    api_key: str = ""
    api_key_env: str = ""  # filled by the loader from `${VAR}` in api_key: named in "set VAR" errors
    egress: str = "direct"
    blocked_regions: list[str] = []  # never leave through a proxy tagged with one of these regions
    headers: dict[str, str] = {}
    timeouts: TimeoutsConfig = TimeoutsConfig()
    max_concurrency: PosInt | None = None  # requests in flight per process; beyond it a fast 503, no queue
    # kind openai: pass Anthropic-style `cache_control` marks on (OpenRouter documents them); None: only when
    # base_url is OpenRouter's. Strict OpenAI-compatible servers refuse the unknown field, so they get none.
    cache_control: bool | None = None
    default_service_tier: str = ""  # the tier the account serves a request naming none (README "Processing tiers")

    @cached_property
    def base_host(self) -> str:
        """The base URL's host name, lower case: what the per-host defaults below are decided on."""
        return (urlsplit(self.base_url).hostname or "").lower()

    @cached_property
    def keeps_cache_control(self) -> bool:
        """Whether an OpenAI-kind upstream is sent clients' `cache_control` marks (worked out once for all targets)."""
        if self.cache_control is not None:
            return self.cache_control
        return self.base_host in CACHE_CONTROL_HOSTS

    @cached_property
    def keeps_reasoning_details(self) -> bool:
        return self.base_host in REASONING_DETAILS_HOSTS

    @cached_property
    def refuses_stream_options(self) -> bool:
        return self.base_host in NO_STREAM_OPTIONS_HOSTS

    @cached_property
    def pool_idle_s(self) -> float:
        """How long an idle connection to this upstream may be reused: `timeouts.pool_idle_s`, else short for a
        server of one's own (plain http, a local host), whose idle timeout is short, and the pool's longest
        for a cloud provider, whose TLS connections are worth keeping."""
        if self.timeouts.pool_idle_s is not None:
            return self.timeouts.pool_idle_s
        if self.base_url.startswith("http://") or local_host(self.base_host):
            return LOCAL_POOL_IDLE_S
        return POOL_IDLE_S

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"must be one of {', '.join(sorted(KINDS))}")
        return kind

    @field_validator("blocked_regions")
    @classmethod
    def _regions_case(cls, regions: list[str]) -> list[str]:
        return [r.lower() for r in regions]  # as proxies' regions are read


class TokenPriceConfig(_Model):
    """USD per million tokens, by kind of token."""

    input_per_mtok: NonNegFloat = 0.0
    output_per_mtok: NonNegFloat = 0.0
    cached_input_per_mtok: NonNegFloat | None = None  # None: cached tokens cost as input
    cache_write_per_mtok: NonNegFloat | None = None  # None: tokens written to a cache cost as input
    cache_write_1h_per_mtok: NonNegFloat | None = None  # None: 2x input, never below cache_write (see below)

    @property
    def cache_read(self) -> float:
        """USD per million prompt tokens read from the cache: the input price unless set."""
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def cache_write(self) -> float:
        """USD per million prompt tokens written to the cache: the input price unless set."""
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok

    @property
    def cache_write_1h(self) -> float:
        """USD per million prompt tokens written to the cache for an hour (Anthropic's `ttl: "1h"`): unless set,
        twice the input price, what Anthropic charges, and never less than a (5-minute) write."""
        if self.cache_write_1h_per_mtok is not None:
            return self.cache_write_1h_per_mtok
        return max(2 * self.input_per_mtok, self.cache_write)


# Request fields that choose a processing tier at another price: Anthropic's `speed` (fast: 2-6x), OpenAI's and
# Anthropic's `service_tier` (flex: ~0.5x, priority: ~2x), Anthropic's `inference_geo` (us: 1.1x); dearest first.
TIER_FIELDS = ("speed", "service_tier", "inference_geo")
# What clients send and providers answer for the ordinary tier (OpenAI: auto/default; Anthropic: auto,
# standard_only, standard, global and, in answers, not_available): the model's own price.
STANDARD_TIERS = frozenset({"auto", "default", "standard", "standard_only", "global", "not_available"})


class PriceConfig(TokenPriceConfig):
    per_request: NonNegFloat = 0.0
    per_image: NonNegFloat = 0.0  # USD per generated image (/v1/images/generations)
    per_web_search: NonNegFloat = 0.01  # USD per search of Anthropic's server tool (what Anthropic bills: $10 / 1,000)
    # token prices of the provider's other processing tiers, by the value naming them (OpenAI's `service_tier`
    # flex/priority/scale, Anthropic's `speed` fast, `service_tier` priority, `inference_geo` us): a request may
    # ask only for a tier priced here, and is billed by the tier its answer says served it
    service_tiers: dict[str, TokenPriceConfig] = {}

    @model_validator(mode="after")
    def _tiers(self) -> PriceConfig:
        """A tier has a name of its own and prices every kind of token its model prices: one left out would cost
        nothing (output) or the tier's input price (cache reads at 10x their price, Claude's writes below theirs)."""
        for name, tier in self.service_tiers.items():
            if not name or name in STANDARD_TIERS:
                raise ValueError(f"service_tiers: {name!r} is the standard tier, priced by the model's own prices")
            for kind in TokenPriceConfig.model_fields:
                if kind in self.model_fields_set and kind not in tier.model_fields_set:
                    raise ValueError(f"service_tiers.{name} does not set {kind}, which the model's price sets: "
                                     "set the tier's own price for those tokens")
        return self


class ParamsConfig(_Model):
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] | None = None
    drop: list[str] = []
    reasoning_beyond_max_tokens: bool = False  # max_tokens bounds the answer's text only (xAI): the hold adds room


class LimitsConfig(_Model):
    rpm: PosInt | None = None
    rpd: PosInt | None = None
    tpm: PosInt | None = None


class ModelConfig(_Model):
    upstream: str | None = None
    price: PriceConfig = PriceConfig()
    max_output_tokens: PosInt | None = None
    context_window: PosInt | None = None
    vision: bool = False
    params: ParamsConfig = ParamsConfig()
    limits: LimitsConfig | None = None
    aliases: list[str] = []
    fallbacks: list[str] = []
    # /v1/completions: "chat" translates it to one chat turn; "native" passes it to the upstream's own
    # /completions (kind openai: instruct and base models, e.g. gpt-3.5-turbo-instruct, vLLM, Ollama)
    completions: Literal["native", "chat"] = "chat"
    reasoning: ReasoningConfig | None = None  # what its reasoning control takes (`gateway.config_reasoning`)


class PresetConfig(_Model):
    """A virtual model (`@preset/<name>`): a catalog model plus a system prompt and fixed parameters."""

    model: str
    system: str = ""
    params: dict[str, Any] = {}  # set on every request, over the client's own values
    system_override: bool = False  # true: a client's system message replaces the preset's instead of following it


class DefaultModels(_Model):
    """The model an endpoint uses when a request names none (the OpenAI SDK may omit it there)."""

    moderations: str = ""
    images: str = ""


class BillingConfig(_Model):
    hold_ttl_s: PosInt = 900  # an unsettled hold (its process died) returns to the balance after this
    generation_ttl_s: PosInt = 30 * 86400  # how long /v1/generation can find a request's record
    stream_billing_event: bool = False  # always send the named `billing_update` SSE event
    byok_fee: NonNegFloat = 0.0  # USD charged per request made with the client's own provider key
    default_max_output_tokens: PosInt = 4096  # worst case when neither client nor model sets a maximum
    key_cache_s: NonNegFloat = 2.0  # key lookups cached in-process; disable/top-up visible within this


class RetriesConfig(_Model):
    """Retries of one model on retryable upstream failures, before any byte reached the client."""

    max_retries: Annotated[int, Field(ge=0)] = 2
    base_delay_s: PosFloat = 0.5  # exponential back-off with full jitter
    max_delay_s: PosFloat = 8.0
    deadline_s: PosFloat = 60.0  # no new attempt (retry or fallback) starts after this
    honor_retry_after_up_to_s: NonNegFloat = 20.0
    budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.2  # retries in flight per provider vs its active requests
    budget_min: Annotated[int, Field(ge=0)] = 3  # retries in flight always allowed per provider


class DefaultLimits(_Model):
    default: LimitsConfig = LimitsConfig()


class Config(_Model):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    egress: EgressConfig = EgressConfig()
    providers: dict[str, ProviderConfig] = {}
    limits: DefaultLimits = DefaultLimits()
    billing: BillingConfig = BillingConfig()
    retries: RetriesConfig = RetriesConfig()
    models: dict[str, ModelConfig] = {}
    presets: dict[str, PresetConfig] = {}
    default_models: DefaultModels = DefaultModels()

    def secrets(self) -> list[str]:
        """Every secret value in this config, for the log redactor."""
        out = [self.server.admin_token, self.server.metrics_token, *(p.api_key for p in self.providers.values())]
        out += [v for p in self.providers.values() for name, value in p.headers.items()
                if _SECRET_HEADER.search(name) for v in (value, value.rpartition(" ")[2])]  # "Bearer <token>"
        out += [pw for pool in self.egress.pools.values() for px in pool.proxies for pw in url_secrets(px.url)]
        out += url_secrets(self.store.url)
        return [s for s in out if len(s) >= 4]


# what only a restart changes (README "What a reload changes"); `max_body_bytes` may only go down
RESTART_ONLY_SERVER = ("host", "port", "metrics_listen", "admin_listen", "shutdown_grace_s")


def with_restart_settings(config: Config, started: Config) -> Config:
    """`config` as a process started on `started` runs it after reloading it: the store, the listeners and
    the shutdown grace stay `started`'s, and a `max_body_bytes` above `started`'s is `started`'s (aiohttp's
    own limit, set at startup, answers 413 first)."""
    server = {f: getattr(started.server, f) for f in RESTART_ONLY_SERVER}
    server["max_body_bytes"] = min(config.server.max_body_bytes, started.server.max_body_bytes)
    return config.model_copy(update={"store": started.store, "server": config.server.model_copy(update=server)})


def to_nano(usd: float) -> int:
    """Dollars as written in YAML -> integer nano-dollars, exactly (1.1 stays 1_100_000_000)."""
    return int(Decimal(repr(usd)) * NANO)
