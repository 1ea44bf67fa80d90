"""What a chat request asks of the model's reasoning, read once for every provider kind.

Two spellings reach the gateway: OpenAI's `reasoning_effort` ("none" ... "xhigh") and OpenRouter's unified
`reasoning` object `{"effort", "max_tokens", "exclude", "enabled"}`. They mean one thing, `Reasoning`, which
the Anthropic and Gemini translations turn into their own controls (`thinking`, `thinkingConfig`).

- `enabled: false`, effort "none" or `max_tokens: 0` turn thinking off; `enabled: true` alone means medium.
- `max_tokens` is the thinking budget itself; an effort is a share of the answer's output tokens
  (`EFFORT_SHARE`, OpenRouter's figures), which each kind applies within its own limits.
- `exclude: true` keeps the reasoning out of the answer (the tokens are still generated and billed); with
  nothing else set it leaves the model's own default (on or off) alone.
- `reasoning_effort` and `reasoning.effort` that disagree are refused, as OpenRouter refuses them.

`Limits` is the other side: what one model's reasoning control takes (`models.*.reasoning` in the config), for
translations that must choose a value the model accepts (Anthropic's `thinking` on /v1/messages).

Pure: no I/O. A malformed value is an `Untranslatable` naming the field (the gateway's 400 `invalid_value`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from providers.types import JSON, Untranslatable, record

# effort -> share of the request's output tokens given to thinking (OpenRouter's reasoning-tokens guide)
EFFORT_SHARE = {"max": 0.95, "xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}
EFFORTS = frozenset({*EFFORT_SHARE, "none"})
LEVELS = ("minimal", "low", "medium", "high", "xhigh", "max")  # least thinking to most; "none" is none at all
FIELDS = ("reasoning", "reasoning_effort")  # the request fields this module reads

__all__ = ["EFFORTS", "EFFORT_SHARE", "FIELDS", "LEVELS", "Limits", "Reasoning", "excluded", "level_for_share",
           "requested"]


@dataclass(frozen=True, slots=True)
class Limits:
    """What one model's reasoning control takes: `reasoning_effort` values (`efforts`, in `LEVELS` order, "none"
    among them when the model can stop reasoning: gpt-5.1) or a range of thinking tokens (`budget`, (least, most):
    Gemini 2.5's `thinkingBudget`, OpenRouter's `reasoning.max_tokens`; `can_disable`: a budget of 0 turns it
    off, as on Gemini 2.5 Flash and Flash-Lite and not on Pro). One of the two; built once per config."""

    efforts: tuple[str, ...] = ()
    budget: tuple[int, int] | None = None
    can_disable: bool = False

    def snap(self, level: str) -> str | None:
        """The effort the model takes nearest to `level` (a `LEVELS` value), the higher of two as near; never
        "none" (a wish for some thinking is not one for none). None when the model takes no other."""
        want = LEVELS.index(level)
        taken = [LEVELS.index(effort) for effort in self.efforts if effort != "none"]
        return LEVELS[min(taken, key=lambda have: (abs(have - want), -have))] if taken else None

    def clamp(self, tokens: int) -> int:
        """A thinking budget within the model's range (its least non-zero budget at the bottom)."""
        least, most = self.budget or (tokens, tokens)
        return min(max(tokens, least, 1), most)


def level_for_share(share: float) -> str:
    """The effort whose `EFFORT_SHARE` is nearest to `share` (thinking's part of the output tokens), the higher
    of two as near: a client that gives nearly all of `max_tokens` to thinking asks for the most there is."""
    return min(reversed(LEVELS), key=lambda level: abs(EFFORT_SHARE[level] - share))


@record
class Reasoning:
    """One request's reasoning wish. `on` is None when the request leaves the model's default alone."""

    on: bool | None
    effort: str = "medium"  # used when `budget` is None
    budget: int | None = None  # thinking tokens asked for directly (`reasoning.max_tokens`)
    exclude: bool = False

    def budget_for(self, max_output: int) -> int:
        """The thinking budget for an answer of at most `max_output` tokens (before a kind's own bounds)."""
        if self.budget is not None:
            return self.budget
        return int(max_output * EFFORT_SHARE.get(self.effort, EFFORT_SHARE["medium"]))


def requested(body: JSON) -> Reasoning | None:
    """The request's `Reasoning`, or None when it says nothing about reasoning."""
    effort = _effort(body.get("reasoning_effort"), "reasoning_effort")
    obj = body.get("reasoning")
    if obj is None:
        return None if effort is None else Reasoning(on=effort != "none", effort=_level(effort))
    if not isinstance(obj, dict):
        raise Untranslatable("'reasoning' must be an object {effort, max_tokens, exclude, enabled}", param="reasoning")
    inner = _effort(obj.get("effort"), "reasoning.effort")
    if effort is not None and inner is not None and effort != inner:
        raise Untranslatable(f"'reasoning_effort' ({effort!r}) and 'reasoning.effort' ({inner!r}) disagree: "
                             "send one of them", param="reasoning_effort")
    effort = effort or inner
    budget = obj.get("max_tokens")
    if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 0):
        raise Untranslatable("'reasoning.max_tokens' must be a whole number >= 0", param="reasoning.max_tokens")
    exclude, enabled = _flag(obj, "exclude"), _flag(obj, "enabled")
    if enabled is False or effort == "none" or budget == 0:
        return Reasoning(on=False, exclude=bool(exclude))
    on = True if (enabled or effort is not None or budget is not None) else None
    return Reasoning(on=on, effort=_level(effort), budget=budget, exclude=bool(exclude))


def excluded(body: JSON) -> bool:
    """Whether the client asked for the reasoning to stay out of the answer (`reasoning.exclude`)."""
    obj = body.get("reasoning")
    return isinstance(obj, dict) and obj.get("exclude") is True


def _effort(value: Any, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in EFFORTS:
        raise Untranslatable(f"'{param}' must be one of {', '.join(sorted(EFFORTS))}", param=param)
    return value


def _level(effort: str | None) -> str:
    return effort if effort in EFFORT_SHARE else "medium"


def _flag(obj: JSON, name: str) -> bool | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, bool):
        raise Untranslatable(f"'reasoning.{name}' must be true or false", param=f"reasoning.{name}")
    return value
