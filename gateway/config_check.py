"""What is wrong with a config, all of it in one go: the loader (`gateway.config_load.parse`) validates, and an
invalid part is dropped and the rest validated again so that the references between sections are checked
too; each problem is said as `yaml.path: what is wrong`, never quoting a value that may be a secret.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.config import STANDARD_TIERS
from providers import registry

if TYPE_CHECKING:
    from gateway.config import Config, ModelConfig, ProviderConfig

M = TypeVar("M", bound=BaseModel)

_PRUNE_ROUNDS = 6  # an invalid proxy URL takes 4 (url, proxy, empty list, pool); nesting is bounded


def validate(model: type[M], data: dict[str, Any], problems: list[str]) -> tuple[M | None, list[tuple[Any, ...]]]:
    """Validate, adding every problem to `problems`; then drop the invalid parts and validate what is left,
    so the cross-references of the rest are checked too and an operator sees every problem in one go.

    Returns the pruned config (None if pruning could not make one) and the paths that were dropped.
    """
    named = {p.split(": ", 1)[0] for p in problems}  # an unset variable's "" would be reported twice
    pruned: list[tuple[Any, ...]] = []
    for attempt in range(_PRUNE_ROUNDS):
        try:
            return model.model_validate(data), pruned
        except ValidationError as exc:
            errors = exc.errors()
        if attempt == 0:  # later rounds only meet the consequences of pruning
            problems += [_describe(e) for e in errors if ".".join(map(str, e["loc"])) not in named]
        for err in errors:
            loc = tuple(err["loc"])
            path = _prune(data, loc[:-1] if err["type"] == "missing" else loc)
            if path:
                pruned.append(path)
        _drop_holes(data)
    return None, pruned


_HOLE = object()  # a list item pruned in this round; removed afterwards so other items' indexes hold meanwhile


def _prune(data: dict[str, Any], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Remove the deepest node that exists on `loc` (a mapping key then takes its default); its path.

    `loc` may run past what exists (pydantic names union members and missing keys): it is cut there.
    """
    parent: Any = None
    node: Any = data
    path: tuple[Any, ...] = ()
    for part in loc:
        if not _has(node, part):
            break
        parent, node, path = node, node[part], (*path, part)
    if not path:
        return ()
    if isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = _HOLE
    return path


def _has(node: Any, part: Any) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node) and node[part] is not _HOLE


def _drop_holes(node: Any) -> None:
    if isinstance(node, dict):
        for value in node.values():
            _drop_holes(value)
    elif isinstance(node, list):
        node[:] = [v for v in node if v is not _HOLE]
        for value in node:
            _drop_holes(value)


_COLLECTIONS = {("providers",), ("models",), ("presets",), ("egress", "pools")}


def unless_pruned(problems: list[str], pruned: list[tuple[Any, ...]], sections: set[str]) -> list[str]:
    """Cross-check problems that are not echoes of a dropped part: none about a dropped path itself,
    none naming a dropped entry (a model of a provider that was itself invalid) or one that lost a list
    item (a pool without its invalid proxy), none at all when a whole section was dropped."""
    if any(len(path) == 1 and path[0] in sections for path in pruned):
        return []
    paths = [".".join(map(str, path)) for path in pruned]
    entries = [repr(path[len(c)]) for path in pruned for c in _COLLECTIONS if path[:len(c)] == c
               and (len(path) == len(c) + 1 or any(isinstance(part, int) for part in path))]
    return [p for p in problems if not any(p.startswith((f"{d}.", f"{d}:")) for d in paths)
            and not any(name in p for name in entries)]


_MESSAGES = {
    "greater_than_equal": "must be a number >= {ge}",
    "greater_than": "must be a number > {gt}",
    "less_than_equal": "must be a number <= {le}",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "list_type": "must be a list",
    "missing": "is required",
    "extra_forbidden": "unknown key (typo?)",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
}


_NAME = re.compile(r"[A-Za-z0-9_-]*")


def _describe(err: Any) -> str:
    parts = [str(p) for p in err["loc"]]
    if err["type"] == "extra_forbidden" and parts and not _NAME.fullmatch(parts[-1]):
        # not a misspelt name but a key and its value run together (`{api_key:sk-...}` in a flow mapping
        # is one plain scalar): the value may be a secret, so only the name before it is said
        parts[-1] = f"{_NAME.match(parts[-1]).group(0)}... (a key holding ':' or a space; not quoted)"  # type: ignore[union-attr]
    loc = ".".join(parts)
    template = _MESSAGES.get(err["type"])
    if template is None:
        return f"{loc}: {str(err['msg']).removeprefix('Value error, ')}"
    return f"{loc}: {template.format(**(err.get('ctx') or {}))}"


def cross_check(config: Config) -> list[str]:
    """References between sections: a reader should not meet a dangling name at request time."""
    problems = []
    for name, prov in config.providers.items():
        pool = config.egress.pools.get(prov.egress)
        if prov.egress != "direct" and pool is None and ("://" in prov.egress or "@" in prov.egress):
            problems.append(f"providers.{name}.egress: names a pool, not a proxy URL (a proxy goes in "
                            "egress.pools.<name>.proxies; the value is not quoted, as it may hold a password)")
        elif prov.egress != "direct" and pool is None:
            problems.append(f"providers.{name}.egress: no pool named {prov.egress!r} (or use 'direct')")
        elif pool is not None and not pool.fallback_direct and all(
                (px.region or "") in prov.blocked_regions for px in pool.proxies):
            problems.append(f"providers.{name}.blocked_regions: leaves no usable proxy in pool {prov.egress!r} "
                            f"(every proxy is in {sorted(prov.blocked_regions)}); add one or set fallback_direct")
    public: dict[str, str] = {}
    for mid in config.models:
        public[mid] = f"models.{mid}"
    for mid, model in config.models.items():
        provider, sep, rest = mid.partition("/")
        if not sep or not rest:
            problems.append(f"models.{mid}: model ids are 'provider/model'")
        elif provider == "@preset":
            problems.append(f"models.{mid}: '@preset/' names presets; this model could never be reached")
        elif provider not in config.providers:
            problems.append(f"models.{mid}: no provider named {provider!r} in providers")
        for i, alias in enumerate(model.aliases):
            if alias.startswith("@preset/"):  # looked up as a preset first: listed, and never reached
                problems.append(f"models.{mid}.aliases.{i}: {alias!r} is a preset's name (presets answer to @preset/)")
            elif alias in public:
                problems.append(f"models.{mid}.aliases.{i}: {alias!r} is already used by {public[alias]}")
            public[alias] = f"models.{mid}.aliases"
        for i, fb in enumerate(model.fallbacks):
            if fb not in config.models:
                problems.append(f"models.{mid}.fallbacks.{i}: no model {fb!r} in models")
    for mid, model in config.models.items():
        serving = config.providers.get(mid.partition("/")[0])
        if model.completions == "native" and serving is not None and serving.kind != "openai":
            problems.append(f"models.{mid}.completions: native legacy completions need a provider of kind openai")
        problems += _reasoning_problems(mid, model, serving)
    problems += _default_tier_problems(config)
    for name, preset in config.presets.items():
        if preset.model not in config.models:
            problems.append(f"presets.{name}.model: no model {preset.model!r} in models")
    for endpoint, mid in config.default_models.model_dump().items():
        if mid and mid not in config.models:
            problems.append(f"default_models.{endpoint}: no model {mid!r} in models")
    for pname, pool in config.egress.pools.items():
        names = [p.name for p in pool.proxies]
        if len(set(names)) != len(names):
            problems.append(f"egress.pools.{pname}.proxies: proxy names must be unique")
    return problems


def _reasoning_problems(mid: str, model: ModelConfig, serving: ProviderConfig | None) -> list[str]:
    """A `reasoning` block that could never take effect: on a Claude model (served natively on /v1/messages,
    its `thinking` sent as it is), or sending a field the model's `params.drop` removes."""
    if model.reasoning is None:
        return []
    if serving is not None and serving.kind == "anthropic":
        return [f"models.{mid}.reasoning: a Claude model takes /v1/messages' thinking as it is sent; the block "
                "is for models translated to another kind"]
    field = "reasoning_effort" if model.reasoning.efforts is not None else "reasoning"
    if field in model.params.drop:
        return [f"models.{mid}.reasoning: params.drop removes {field}, which the block would send"]
    return []


def _default_tier_problems(config: Config) -> list[str]:
    """A `default_service_tier` that could never price anything: a standard tier's name, a kind whose requests and
    answers carry no tier (Gemini: every answer would be charged it, unconfirmed), or a name no model of the
    provider prices (a typo). A model that alone does not price it is served at the standard tier (logged)."""
    problems = []
    for name, prov in config.providers.items():
        tier, path = prov.default_service_tier, f"providers.{name}.default_service_tier"
        if not tier:
            continue
        if tier in STANDARD_TIERS:
            problems.append(f"{path}: {tier!r} is the standard tier, which needs no setting (leave the key out)")
        elif not registry.get(prov.kind).SENDS_TIERS:
            problems.append(f"{path}: kind {prov.kind} carries no processing tier and its answers name none")
        elif not any(mid.partition("/")[0] == name and tier in model.price.service_tiers
                     for mid, model in config.models.items()):
            problems.append(f"{path}: no model of provider {name!r} prices {tier[:40]!r} under "
                            "price.service_tiers (a typo? the account's tier must have a price)")
    return problems
