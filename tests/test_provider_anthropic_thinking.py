"""Anthropic's `thinking` and `output_config.effort` on translated models (`anthropic_inbound.chat_body` with the
model's `reasoning` limits): a thinking budget clamped to the range a Gemini model takes, an effort snapped to the
`reasoning_effort` values an OpenAI-kind model takes, `disabled` turned off only where the model can be off, and
nothing at all for a model whose limits are unknown (no `reasoning` block), as before.

Each case is checked on the chat body and, where the upstream's own field matters, on the body the real adapter
builds from it (Gemini's `thinkingConfig`), since that is what the provider refuses or takes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.messages import TranslatedExchange
from providers import anthropic_inbound, registry
from providers.reasoning import Limits
from providers.types import Target, Untranslatable

FLASH = Limits(budget=(0, 24576), can_disable=True)  # Gemini 2.5 Flash: 0 to 24,576 (0 turns it off)
LITE = Limits(budget=(512, 24576), can_disable=True)  # Gemini 2.5 Flash-Lite: 512 to 24,576, or 0
PRO = Limits(budget=(128, 32768))  # Gemini 2.5 Pro: 128 to 32,768, cannot stop thinking
GPT5 = Limits(efforts=("minimal", "low", "medium", "high"))
GPT51 = Limits(efforts=("none", "low", "medium", "high"))
CODEX = Limits(efforts=("low", "medium", "high", "xhigh"))
GROK_MINI = Limits(efforts=("low", "high"))
GEMINI = Target(provider="google", base_url="https://generativelanguage.googleapis.com", api_key="k",
                upstream_model="gemini-2.5-flash", public_model="google/flash")
CLAUDE_CODE = {"type": "enabled", "budget_tokens": 31999}  # Claude Code's default, with max_tokens 32000
REASONING_FIELDS = ("reasoning", "reasoning_effort")


def _body(max_tokens: int = 32000, **fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Hi"}], **fields}


def _asked(limits: Limits | None, body: dict[str, Any]) -> dict[str, Any]:
    """The reasoning fields of the chat body the translation makes for a model with `limits`."""
    chat = anthropic_inbound.chat_body(body, reasoning_limits=limits)
    return {name: chat[name] for name in REASONING_FIELDS if name in chat}


def _effort(value: str) -> dict[str, Any]:
    return {"output_config": {"effort": value}}


# -- a thinking budget on a model that takes a token range (Gemini) --------------------------------------------


@pytest.mark.parametrize(("limits", "body", "budget"), [
    (FLASH, _body(thinking=CLAUDE_CODE), 24576),  # above Flash's 24,576: Gemini would answer 400
    (PRO, _body(thinking=CLAUDE_CODE), 31999),  # within Pro's range: as asked
    (PRO, _body(thinking={"type": "enabled", "budget_tokens": 64}), 128),  # below Pro's least
    (LITE, _body(thinking={"type": "enabled", "budget_tokens": 100}), 512),  # below Lite's least non-zero
    (FLASH, _body(thinking={"type": "enabled", "budget_tokens": 4096}, **_effort("max")), 4096),  # the budget wins
    (FLASH, _body(20000, **_effort("low")), 4000),  # an effort alone: its share of max_tokens (20 %)
    (PRO, _body(200, **_effort("low")), 128),  # ... within the model's range
    (FLASH, _body(30000, thinking={"type": "adaptive"}, **_effort("max")), 24576),  # 95 %, at most the range's top
], ids=["claude-code-flash", "claude-code-pro", "below-pro", "below-lite", "budget-over-effort", "effort-share",
        "effort-share-raised", "adaptive-with-effort"])
def test_a_budget_is_held_within_the_models_range(limits: Limits, body: dict[str, Any], budget: int) -> None:
    assert _asked(limits, body) == {"reasoning": {"max_tokens": budget}}


def test_the_clamped_budget_reaches_gemini_as_its_thinking_budget() -> None:
    exchange = TranslatedExchange(registry.get("gemini"))
    exchange.reasoning_limits = FLASH
    sent = json.loads(exchange.build(_body(thinking=CLAUDE_CODE), GEMINI, stream=False).body)["generationConfig"]
    assert sent["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 24576}
    assert sent["maxOutputTokens"] == 32000  # thoughts count against it: the answer's room is the client's own


@pytest.mark.parametrize("preset", [{"reasoning_effort": "low"}, {"reasoning": {"effort": "low"}}], ids=str)
def test_a_presets_reasoning_is_set_over_the_clients_thinking(preset: dict[str, Any]) -> None:
    """A preset's params are set over what the translation chose: its effort, not the client's budget beside it
    (Gemini's adapter takes a budget over an effort, so the client's thinking would have won)."""
    exchange = TranslatedExchange(registry.get("gemini"))
    exchange.reasoning_limits, exchange.preset_params = FLASH, preset
    sent = json.loads(exchange.build(_body(thinking=CLAUDE_CODE), GEMINI, stream=False).body)["generationConfig"]
    assert sent["thinkingConfig"] == {"includeThoughts": True, "thinkingBudget": 1024}  # "low", as on the chat route
    assert set(exchange.chat_body(_body(thinking=CLAUDE_CODE))) & set(REASONING_FIELDS) == set(preset)


# -- an effort on a model that takes reasoning_effort values (OpenAI kind) ----------------------------------------


@pytest.mark.parametrize(("limits", "body", "effort"), [
    (GPT5, _body(thinking=CLAUDE_CODE), "high"),  # ~100 % of max_tokens: the most the model takes
    (GROK_MINI, _body(thinking=CLAUDE_CODE), "high"),
    (GPT5, _body(20000, thinking={"type": "enabled", "budget_tokens": 4000}), "low"),  # 20 %
    (GPT5, _body(20000, thinking={"type": "enabled", "budget_tokens": 10000}), "medium"),  # 50 %
    (GPT5, _body(20000, thinking={"type": "enabled", "budget_tokens": 2000}), "minimal"),  # 10 %
    (GPT51, _body(20000, thinking={"type": "enabled", "budget_tokens": 2000}), "low"),  # no minimal there; not none
    (GROK_MINI, _body(20000, thinking={"type": "enabled", "budget_tokens": 10000}), "high"),  # medium: ties go up
    (GPT5, _body(thinking=CLAUDE_CODE, **_effort("low")), "low"),  # the effort named wins over the budget's share
    (GPT5, _body(**_effort("max")), "high"),  # "max": the highest the model takes
    (CODEX, _body(**_effort("max")), "xhigh"),
    (CODEX, _body(**_effort("xhigh")), "xhigh"),
    (GROK_MINI, _body(**_effort("medium")), "high"),
    (GPT51, _body(thinking={"type": "adaptive"}, **_effort("medium")), "medium"),
], ids=["claude-code-gpt5", "claude-code-grok", "share-low", "share-medium", "share-minimal", "share-minimal-snapped",
        "share-tie-up", "effort-over-budget", "max-gpt5", "max-codex", "xhigh", "medium-grok", "adaptive-with-effort"])
def test_an_effort_is_snapped_to_the_values_the_model_takes(limits: Limits, body: dict[str, Any], effort: str) -> None:
    assert _asked(limits, body) == {"reasoning_effort": effort}


# -- disabled, adaptive, and what is not understood ---------------------------------------------------------------


@pytest.mark.parametrize(("limits", "asked"), [
    (FLASH, {"reasoning": {"max_tokens": 0}}),  # budget 0 turns Flash's thinking off
    (LITE, {"reasoning": {"max_tokens": 0}}),
    (GPT51, {"reasoning_effort": "none"}),
    (GPT5, {"reasoning_effort": "minimal"}),  # no "none" before gpt-5.1: "very few or no reasoning tokens"
    (PRO, {}),  # cannot stop thinking: its default, rather than the 400 budget 0 gets
    (GROK_MINI, {}),  # "low" is real thinking, not a near-off: its default
], ids=["flash", "lite", "none", "minimal", "pro", "grok"])
def test_disabled_turns_thinking_off_only_where_the_model_can(limits: Limits, asked: dict[str, Any]) -> None:
    assert _asked(limits, _body(thinking={"type": "disabled"})) == asked


@pytest.mark.parametrize("fields", [
    {},
    {"thinking": {"type": "adaptive"}},  # Claude decides: the model's own default
    {"thinking": {"type": "enabled"}},  # no budget to read
    {"thinking": {"type": "enabled", "budget_tokens": "lots"}},
    {"thinking": {"type": "enabled", "budget_tokens": True}},
    {"thinking": {"type": "enabled", "budget_tokens": 0}},
    {"thinking": "on"},
    {"thinking": {"type": "sometimes", "budget_tokens": 4096}},
    {"output_config": "high"},
    {"output_config": {"effort": None}},
], ids=str)
def test_what_says_nothing_readable_leaves_the_models_default(fields: dict[str, Any]) -> None:
    for limits in (FLASH, PRO, GPT5, GPT51):
        assert _asked(limits, _body(**fields)) == {}


@pytest.mark.parametrize("effort", ["extreme", "none", "HIGH", ["high"], {"level": "high"}, 3], ids=str)
def test_an_effort_anthropic_does_not_have_is_refused_as_anthropic_refuses_it(effort: Any) -> None:
    """It was left to the model's default without a word, where Anthropic answers a 400 naming its efforts; a
    value of another type is the same 400 (and no TypeError from looking it up: a 500). Whatever the model's
    reasoning limits, known or not."""
    for limits in (FLASH, PRO, GPT5, GPT51, None):
        with pytest.raises(Untranslatable) as info:
            anthropic_inbound.chat_body(_body(thinking={"type": "adaptive"}, output_config={"effort": effort}),
                                        reasoning_limits=limits)
        assert info.value.param == "output_config.effort"
        assert str(info.value) == "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"


@pytest.mark.parametrize("fields", [
    {"thinking": CLAUDE_CODE}, {"thinking": {"type": "disabled"}}, _effort("high"),
    {"thinking": {"type": "adaptive"}, **_effort("low")},
], ids=str)
def test_a_model_without_limits_gets_no_reasoning_as_before(fields: dict[str, Any]) -> None:
    assert _asked(None, _body(**fields)) == {}
    assert anthropic_inbound.chat_body(_body(**fields)) == anthropic_inbound.chat_body(_body())


def test_reasoning_fields_are_what_the_chat_body_carries() -> None:
    """`reasoning_fields` (the hold reads it) says what `chat_body` sends, no more."""
    body = _body(thinking=CLAUDE_CODE)
    for limits in (FLASH, PRO, GPT5, GROK_MINI):
        assert anthropic_inbound.reasoning_fields(body, limits) == _asked(limits, body)
