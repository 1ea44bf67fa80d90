"""Reading a config file into a `Config`: the only code that reads config files or os.environ.

`load(path)` reads YAML, substitutes `${VAR}` / `${VAR:-default}` inside string values (after parsing, so
a password holding `#` or `: ` cannot change the YAML's structure), validates it, and raises one
`ConfigError` listing every problem as `yaml.path: what is wrong`, so an operator fixes a file in one go
(`gateway.config_check` finds them all: validation that goes on past an invalid part, and the references
between sections). A file that is not YAML is reported by line and column, never quoting the line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from gateway import config_check
from gateway.config import Config, ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def load(path: str | os.PathLike[str], environ: dict[str, str] | None = None) -> Config:
    """Read, substitute and validate a config file; ConfigError says what and where."""
    return parse(read(path), environ if environ is not None else dict(os.environ), source=str(path))


def read(path: str | os.PathLike[str]) -> str:
    """A config file's text; ConfigError when it cannot be read or is not UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # a ValueError: the CLI and a reload catch ConfigError only
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None


def parse(text: str, environ: dict[str, str], source: str = "<config>") -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # not chained: its text quotes the offending line
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from None
    if raw is None:  # not "every default": that serves no model, and a truncated write or a wrong path would pass
        raise ConfigError(f"{source}: the file is empty (or only comments): no provider, no model")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    problems: list[str] = []
    data = _substitute(raw, environ, (), problems)
    _note_key_env(raw, data)
    config, pruned = config_check.validate(Config, data, problems)
    if config is not None:
        problems += config_check.unless_pruned(config_check.cross_check(config), pruned, set(Config.model_fields))
    if problems or config is None:
        raise ConfigError("\n".join(problems))
    return config


# what PyYAML names in quotes: a token's kind ('<stream end>') or one character ('\\t') is kept; anything
# longer is a piece of the file (an alias, a tag, a key) and may be a piece of a secret
_QUOTED = re.compile(r"'(<[a-z ]+>|\\?.)'|'[^']*'|\"[^\"]*\"")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where the YAML parser stopped and why, without the snippet of the line it quotes (the line may hold
    a provider key or a proxy password) nor the piece of a value it names."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character that YAML does not allow: no text quoted
        return f"unacceptable character #x{exc.character:04x} at position {exc.position}"
    if not isinstance(exc, yaml.MarkedYAMLError):
        return type(exc).__name__
    parts = []
    for what, mark in ((exc.context, exc.context_mark), (exc.problem, exc.problem_mark)):
        if what or mark:
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            said = _QUOTED.sub(lambda m: m.group(0) if m.group(1) else "...", what or "")
            parts.append(": ".join(p for p in (where, said) if p))
    return "; ".join(parts) or "syntax error"


def _substitute(node: Any, env: dict[str, str], path: tuple[str, ...], problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, env, (*path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, (*path, str(i)), problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def repl(m: re.Match[str]) -> str:
        name, has_default, default = m.group(1), m.group(2) is not None, m.group(3) or ""
        if has_default:  # as in a shell: a variable that is set but empty takes the default too
            return env.get(name) or default
        if name in env:
            return env[name]
        problems.append(f"{'.'.join(path)}: environment variable {name} is not set")
        return ""

    return _VAR.sub(repl, node)


def _note_key_env(raw: dict[str, Any], data: dict[str, Any]) -> None:
    """Remember which variable each provider key came from, so errors can say "set OPENAI_API_KEY"."""
    providers = raw.get("providers")
    for name, prov in (providers if isinstance(providers, dict) else {}).items():  # else validation says why
        if not isinstance(prov, dict) or not isinstance(prov.get("api_key"), str):
            continue
        m = _VAR.fullmatch(prov["api_key"].strip())
        if m and "api_key_env" not in prov:
            data["providers"][name]["api_key_env"] = m.group(1)
