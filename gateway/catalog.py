"""Model id or alias -> Route: which provider serves it, under which upstream name, at what price.

Built once per config (and rebuilt on reload), so a request does one dict lookup. Model ids follow the
`provider/model` convention; the provider is the part before the first "/".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gateway.config import (
    STANDARD_TIERS,
    TIER_FIELDS,
    Config,
    LimitsConfig,
    ModelConfig,
    PriceConfig,
    ProviderConfig,
    TokenPriceConfig,
    to_nano,
)
from gateway.errors import NotFound
from gateway.logging import get_logger
from providers import reasoning, registry
from providers.anthropic_request import enforces_schemas
from providers.types import Target

log = get_logger("gateway.catalog")


@dataclass(frozen=True, slots=True)
class Price:
    """Integer nano-dollars: per million tokens for token prices, per call for `per_request`."""

    input_per_mtok: int
    output_per_mtok: int
    cached_input_per_mtok: int
    per_request: int
    per_image: int = 0
    cache_write_per_mtok: int | None = None  # None: as input
    cache_write_1h_per_mtok: int | None = None  # None: twice input, never below the write price
    per_web_search: int = 0  # per search an upstream ran itself (Anthropic's web_search server tool)
    tiers: tuple[tuple[str, Price], ...] = ()  # the provider's other processing tiers, by the name it gives them

    def cache_writes(self) -> tuple[int, int]:
        """Per million prompt tokens written to the cache for 5 minutes and for an hour: unless set, the input
        price and twice it (Anthropic's), never below the 5-minute write."""
        write = self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok
        hour = self.cache_write_1h_per_mtok
        return write, max(2 * self.input_per_mtok, write) if hour is None else hour

    def tier(self, name: str) -> Price | None:
        """The price of processing tier `name`: this one for the standard tier (or none named), None for a
        tier not priced here."""
        if not name or name in STANDARD_TIERS:
            return self
        for tier, price in self.tiers:
            if tier == name:
                return price
        return None

    def stacked(self, name: str) -> tuple[Price, str, str]:
        """The price of the tiers `name` names, one or several joined by "+" (Claude's fast mode run in the US:
        "fast+us"), whose premiums multiply, as the provider bills them (Anthropic: "data residency multipliers
        apply on top of fast mode pricing") unless a tier of that name prices them; the name of those priced
        here, and of those not ("" when every one is)."""
        price = self.tier(name)
        if price is not None:
            return price, name, ""
        price, priced, unpriced = self, [], []
        for part in name.split("+"):
            tier = self.tier(part)
            if tier is None:
                unpriced.append(part)
            elif tier is not self:
                price = self._over(price, tier)
                priced.append(part)
        return price, "+".join(priced), "+".join(unpriced)

    def _over(self, a: Price, b: Price) -> Price:
        """`a` with `b`'s premium over this (standard) price on top, token kind by token kind, rounded up."""
        kinds = zip(_token_prices(self), _token_prices(a), _token_prices(b), strict=True)
        stacked = [-(-x * y // standard) if standard else max(x, y) for standard, x, y in kinds]
        return replace(a, tiers=(), **dict(zip(_TOKEN_PRICES, stacked, strict=True)))


_TOKEN_PRICES = ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok", "cache_write_per_mtok",
                 "cache_write_1h_per_mtok")


def _token_prices(price: Price) -> tuple[int, ...]:
    """A price's `_TOKEN_PRICES`, the defaults of the cache writes' worked out."""
    return (price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok, *price.cache_writes())


@dataclass(slots=True)
class Learned:
    """What the gateway learned about one provider from its answers, shared by that provider's routes: kept
    in-process, and forgotten on reload (a new catalog starts afresh)."""

    refuses_stream_options: bool = False  # a strict server refused the `stream_options` the gateway adds


@dataclass(frozen=True, slots=True)
class Route:
    model_id: str  # the catalog id ("openai/gpt-5")
    provider_name: str
    provider: ProviderConfig
    upstream_model: str
    price: Price
    model: ModelConfig
    limits: LimitsConfig
    learned: Learned = field(default_factory=Learned, compare=False)

    keyless: Target = field(init=False, repr=False, compare=False)
    keyed: Target = field(init=False, repr=False, compare=False)  # with the configured key
    # the same, asking no usage of a stream: for a provider that `learned` refuses `stream_options`
    quiet_keyless: Target = field(init=False, repr=False, compare=False)
    quiet_keyed: Target = field(init=False, repr=False, compare=False)
    # what the model's reasoning control takes (`models.*.reasoning`), None when the config does not say
    reasoning_limits: reasoning.Limits | None = field(init=False, repr=False, compare=False)
    # the tier the provider account may serve a request naming none (`providers.*.default_service_tier`) and its
    # price, when this model prices it: worked out once, so other routes' requests do nothing more
    unasked: tuple[str, Price] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        default = self.provider.default_service_tier
        unasked = self.price.tier(default) if default else None
        object.__setattr__(self, "unasked", None if unasked is None or unasked is self.price else (default, unasked))
        limits = self.model.reasoning.limits() if self.model.reasoning is not None else None
        object.__setattr__(self, "reasoning_limits", limits)
        keyless = Target(
            provider=self.provider_name,
            base_url=self.provider.base_url.rstrip("/"),
            api_key="",
            upstream_model=self.upstream_model,
            public_model=self.model_id,
            max_tokens_field=self.model.params.max_tokens_field,
            drop=tuple(self.model.params.drop),
            headers=tuple(self.provider.headers.items()),
            default_max_tokens=self.model.max_output_tokens,
            keep_cache_control=self.provider.keeps_cache_control,
            keep_reasoning_details=self.provider.keeps_reasoning_details,
        )
        # a server known to refuse `stream_options` (Mistral's hosts) is never sent it
        object.__setattr__(self, "keyless", without_stream_options(keyless) if self.provider.refuses_stream_options
                           else keyless)
        object.__setattr__(self, "keyed", replace(self.keyless, api_key=self.provider.api_key))
        object.__setattr__(self, "quiet_keyless", without_stream_options(self.keyless))
        object.__setattr__(self, "quiet_keyed", without_stream_options(self.keyed))

    def target(self, api_key: str, quiet: bool = False) -> Target:
        """What the adapter needs to build this route's upstream request: built once for the configured key
        (dataclasses.replace costs more than a request's auth), per call for a client's own key. `quiet`:
        without the `stream_options` the gateway would add (the client sent none, and the provider refuses it)."""
        keyed, keyless = (self.quiet_keyed, self.quiet_keyless) if quiet else (self.keyed, self.keyless)
        if api_key == keyed.api_key:
            return keyed
        return replace(keyless, api_key=api_key) if api_key else keyless

    def public_info(self, created: int) -> dict[str, Any]:
        """The /v1/models entry: OpenAI's Model object plus what a client needs to choose and budget."""
        p = self.model.price
        return {
            "id": self.model_id,
            "object": "model",
            "created": created,
            "owned_by": self.provider_name,
            "pricing": {
                "currency": "USD",
                **_token_prices_usd(p),
                "per_request": p.per_request,
                "per_image": p.per_image,
                # other processing tiers a request may ask for (`service_tier`, `speed`, `inference_geo`)
                "service_tiers": {name: _token_prices_usd(tier) for name, tier in p.service_tiers.items()},
            },
            "vision": self.model.vision,
            "context_window": self.model.context_window,
            "max_output_tokens": self.model.max_output_tokens,
            "aliases": list(self.model.aliases),
            "provider": self.provider_name,
            "supported_parameters": self.supported_parameters(),
        }

    def tiers_asked(self, body: dict[str, Any]) -> list[tuple[str, Any, Price | None]]:
        """The processing-tier fields (`TIER_FIELDS`) the request sets that reach this route's upstream (not
        dropped by the model's `params.drop`, and a kind that sends them), each with its value and its price here
        (None: not priced, or not a name)."""
        if body.keys().isdisjoint(TIER_FIELDS):  # nearly every request, on every validation of every route
            return []
        asked = [(name, value) for name in TIER_FIELDS
                 if (value := body.get(name)) is not None and name not in self.model.params.drop]
        if not asked or not registry.get(self.provider.kind).SENDS_TIERS:
            return []
        return [(name, value, self.price.tier(value) if value.__class__ is str else None) for name, value in asked]

    def supported_parameters(self) -> list[str]:
        """What the provider kind carries upstream, less what this model drops (`structured_outputs`, a JSON
        schema in `response_format`, goes with `response_format`) or cannot enforce (a Claude model before 4.5
        has no strict tools: a strict schema goes to it as an ordinary tool, followed but not enforced)."""
        dropped = set(self.model.params.drop)
        if "response_format" in dropped or (
                self.provider.kind == "anthropic" and not enforces_schemas(self.upstream_model)):
            dropped.add("structured_outputs")
        return [p for p in registry.get(self.provider.kind).SUPPORTED_PARAMETERS if p not in dropped]


def without_stream_options(target: Target) -> Target:
    """The target with `stream_options` dropped: the adapters then add none (and a client's own goes too)."""
    return target if "stream_options" in target.drop else replace(target, drop=(*target.drop, "stream_options"))


def _token_prices_usd(price: TokenPriceConfig) -> dict[str, float]:
    """USD per million tokens by kind, the cache prices' defaults worked out, as /v1/models shows them."""
    return {"input_per_mtok": price.input_per_mtok, "output_per_mtok": price.output_per_mtok,
            "cached_input_per_mtok": price.cache_read, "cache_write_per_mtok": price.cache_write,
            "cache_write_1h_per_mtok": price.cache_write_1h}


def _price(price: PriceConfig) -> Price:
    """The model's price in nano-dollars; its other tiers have their own token prices and share its fees."""
    def tokens(config: TokenPriceConfig, tiers: tuple[tuple[str, Price], ...] = ()) -> Price:
        return Price(to_nano(config.input_per_mtok), to_nano(config.output_per_mtok), to_nano(config.cache_read),
                     to_nano(price.per_request), to_nano(price.per_image), to_nano(config.cache_write),
                     to_nano(config.cache_write_1h), to_nano(price.per_web_search), tiers)

    return tokens(price, tuple((name, tokens(tier)) for name, tier in price.service_tiers.items()))


def _tell_unpriced_defaults(config: Config, routes: dict[str, Route]) -> None:
    """Say once per load which models of an account with a default tier do not price it: they are held and charged
    at the standard price (providers sell priority per model: no gpt-5-nano, embeddings or images at it), and an
    answer that names the tier anyway is charged standard and logged as it comes."""
    for name, provider in config.providers.items():
        if not provider.default_service_tier:
            continue
        unpriced = [mid for mid, route in routes.items() if route.provider_name == name and route.unasked is None]
        if unpriced:
            log.info("models of a provider with a default service tier that do not price it are held and charged "
                     "at their standard price", provider=name, default_service_tier=provider.default_service_tier,
                     models=unpriced[:50])


class Catalog:
    def __init__(self, config: Config) -> None:
        self.routes: dict[str, Route] = {}
        self._aliases: dict[str, str] = {}
        learned = {name: Learned() for name in config.providers}  # per provider, for all its models
        for mid, model in config.models.items():
            provider_name, _, rest = mid.partition("/")
            price = model.price
            self.routes[mid] = Route(
                model_id=mid,
                provider_name=provider_name,
                provider=config.providers[provider_name],
                upstream_model=model.upstream or rest,
                price=_price(price),
                model=model,
                limits=model.limits or config.limits.default,
                learned=learned[provider_name],
            )
            for alias in model.aliases:
                self._aliases[alias] = mid
        _tell_unpriced_defaults(config, self.routes)

    def resolve(self, name: str) -> Route:
        """The route of a model id or alias; 404 model_not_found otherwise (echoing only the client's name)."""
        route = self.routes.get(name) or self.routes.get(self._aliases.get(name, ""))
        if route is None:
            raise NotFound(f"The model '{name[:200]}' does not exist or is not served by this gateway. "
                           "GET /v1/models lists the available models.", code="model_not_found", param="model")
        return route
