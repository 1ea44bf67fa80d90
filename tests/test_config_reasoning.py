"""`models.*.reasoning`: what a model's reasoning control takes, checked at load with messages that name the YAML
path, handed to the translation as plain data (`providers.reasoning.Limits`) once per config, and set in the
shipped config only for the models whose limits the providers document."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from gateway.catalog import Catalog
from gateway.config import ConfigError
from gateway.config_load import load, parse
from gateway.config_reasoning import Effort
from providers.reasoning import EFFORTS, Limits

ROOT = Path(__file__).resolve().parents[1]

BASE = """
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: ""}
  google: {kind: gemini, base_url: "https://generativelanguage.googleapis.com", api_key: ""}
  anthropic: {kind: anthropic, base_url: "https://api.anthropic.com", api_key: ""}
models:
  openai/gpt-5:
    reasoning: {efforts: [high, minimal, medium, low]}
  google/gemini-2.5-flash:
    reasoning: {budget: {min: 0, max: 24576}}
  google/gemini-2.5-flash-lite:
    reasoning: {budget: {min: 512, max: 24576, can_disable: true}}
  google/gemini-2.5-pro:
    reasoning: {budget: {min: 128, max: 32768}}
  openai/gpt-4o: {}
"""


def test_the_block_reaches_each_route_as_plain_limits() -> None:
    routes = Catalog(parse(BASE, {})).routes
    assert routes["openai/gpt-5"].reasoning_limits == Limits(efforts=("minimal", "low", "medium", "high"))
    assert routes["google/gemini-2.5-flash"].reasoning_limits == Limits(budget=(0, 24576), can_disable=True)
    assert routes["google/gemini-2.5-flash-lite"].reasoning_limits == Limits(budget=(512, 24576), can_disable=True)
    assert routes["google/gemini-2.5-pro"].reasoning_limits == Limits(budget=(128, 32768), can_disable=False)
    assert routes["openai/gpt-4o"].reasoning_limits is None  # unknown: /v1/messages leaves thinking out


def test_the_efforts_a_block_may_name_are_the_ones_the_gateway_reads() -> None:
    assert set(get_args(Effort)) == EFFORTS


@pytest.mark.parametrize(("block", "expected"), [
    ("{efforts: [low, extreme]}", "models.openai/gpt-5.reasoning.efforts.1: must be one of 'none', 'minimal', "
                                  "'low', 'medium', 'high', 'xhigh' or 'max'"),
    ("{efforts: []}", "models.openai/gpt-5.reasoning.efforts: must not be empty"),
    ("{efforts: [low, low]}", "models.openai/gpt-5.reasoning: efforts: each value once"),
    ("{}", "models.openai/gpt-5.reasoning: set one of efforts"),
    ("{efforts: [low], budget: {max: 100}}", "models.openai/gpt-5.reasoning: set one of efforts"),
    ("{budget: {min: 200, max: 100}}", "models.openai/gpt-5.reasoning.budget: min (200) is above max (100)"),
    ("{budget: {min: -1, max: 100}}", "models.openai/gpt-5.reasoning.budget.min: must be a number >= 0"),
    ("{budget: {min: 1}}", "models.openai/gpt-5.reasoning.budget.max: is required"),
    ("{effort: [low]}", "models.openai/gpt-5.reasoning.effort: unknown key (typo?)"),
    ("low", "models.openai/gpt-5.reasoning: must be a mapping"),
], ids=["unknown-effort", "no-effort", "twice", "empty", "both", "min-above-max", "negative", "no-max", "typo",
        "not-a-block"])
def test_a_bad_block_is_refused_naming_its_path(block: str, expected: str) -> None:
    text = BASE.replace("reasoning: {efforts: [high, minimal, medium, low]}", f"reasoning: {block}")
    with pytest.raises(ConfigError) as info:
        parse(text, {})
    assert expected in str(info.value)


@pytest.mark.parametrize(("model", "block", "expected"), [
    ("anthropic/claude-sonnet-4-5", "{budget: {min: 1024, max: 64000}}",
     "models.anthropic/claude-sonnet-4-5.reasoning: a Claude model takes /v1/messages' thinking as it is sent"),
    ("openai/o3", "{efforts: [low, high]}\n    params: {drop: [reasoning_effort]}",
     "models.openai/o3.reasoning: params.drop removes reasoning_effort, which the block would send"),
    ("google/gemini-2.0-flash", "{budget: {max: 8192}}\n    params: {drop: [reasoning, reasoning_effort]}",
     "models.google/gemini-2.0-flash.reasoning: params.drop removes reasoning, which the block would send"),
], ids=["claude", "dropped-effort", "dropped-budget"])
def test_a_block_that_could_never_apply_is_refused(model: str, block: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(BASE + f"  {model}:\n    reasoning: {block}\n", {})
    assert expected in str(info.value)


def test_the_shipped_config_states_the_documented_limits_only() -> None:
    """Gemini 2.5 Pro (Google's thinking guide: 128 to 32,768, cannot turn thinking off), the gpt-5 family
    (minimal, low, medium, high; none only from gpt-5.1), grok-3-mini (low, high: xAI's reasoning guide). Models
    that refuse `reasoning_effort` (grok-3, grok-4) or whose control is not documented stay without a block."""
    routes = Catalog(load(ROOT / "config.yaml", environ={})).routes
    limits = {mid: route.reasoning_limits for mid, route in routes.items() if route.reasoning_limits is not None}
    gpt5 = Limits(efforts=("minimal", "low", "medium", "high"))
    assert limits == {
        "google/gemini-2.5-pro": Limits(budget=(128, 32768), can_disable=False),
        "openai/gpt-5": gpt5, "openai/gpt-5-mini": gpt5, "openai/gpt-5-nano": gpt5,
        "x/grok-3-mini": Limits(efforts=("low", "high")),
    }
