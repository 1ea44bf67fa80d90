"""Presets (the Timeweb seed's agents): `@preset/<name>` is a catalog model plus a system prompt and fixed
parameters, configured under `presets:`.

The preset's system prompt comes first and the client's own system message follows it, or replaces it
when the preset sets `system_override: true`; the preset's `params` are set over the client's values.
Chat requests carry the system prompt as a leading system message, Anthropic-format requests as `system`.
"""

from __future__ import annotations

from typing import Any

from gateway.config import PresetConfig
from gateway.errors import NotFound

PREFIX = "@preset/"
# what Anthropic's Messages API takes as it is; a preset's other params are chat's (reasoning_effort, seed...)
# (Claude's tier fields among them: set on the Anthropic body, they are held, sent and charged as a client's own)
ANTHROPIC_FIELDS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "metadata", "thinking",
                              "tool_choice", "tools", "service_tier", "speed", "inference_geo", "output_config",
                              "stream"})


def lookup(presets: dict[str, PresetConfig], model: Any) -> PresetConfig | None:
    """The preset a model name refers to, None for an ordinary model; 404 for an unknown preset."""
    if not isinstance(model, str) or not model.startswith(PREFIX):
        return None
    preset = presets.get(model[len(PREFIX):])
    if preset is None:
        raise NotFound(f"The preset '{model[:200]}' does not exist on this gateway.", code="model_not_found",
                       param="model")
    return preset


def apply_chat(preset: PresetConfig, body: dict[str, Any]) -> dict[str, Any]:
    """A chat body with the preset's model, system message first (or the client's instead) and params."""
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    client_system = any(m.get("role") in ("system", "developer") for m in messages)
    lead = [] if not preset.system or (preset.system_override and client_system) else \
        [{"role": "system", "content": preset.system}]
    return {**body, **preset.params, "model": preset.model, "messages": [*lead, *body.get("messages", [])]}


def chat_params(preset: PresetConfig) -> dict[str, Any]:
    """A preset's params Anthropic's format has no field for: set over a translated route's chat body."""
    return {k: v for k, v in preset.params.items() if k not in ANTHROPIC_FIELDS}


def apply_anthropic(preset: PresetConfig, body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages body with the preset's model, `system` and params."""
    own = body.get("system")
    blocks = [{"type": "text", "text": own}] if isinstance(own, str) and own else own if isinstance(own, list) else []
    lead = [] if not preset.system or (preset.system_override and blocks) else \
        [{"type": "text", "text": preset.system}]
    native = {k: v for k, v in preset.params.items() if k in ANTHROPIC_FIELDS}
    out = {**body, **native, "model": preset.model}
    if lead or blocks:
        out["system"] = [*lead, *blocks]
    return out
