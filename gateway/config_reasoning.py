"""`models.*.reasoning`: what a model's reasoning control takes, in the config (its own module, as `config` is at
the house size).

A client of /v1/messages (Claude Code) asks for thinking in Anthropic's terms (`thinking.budget_tokens`,
`output_config.effort`); a model of another kind takes either a few `reasoning_effort` values (OpenAI's
gpt-5: minimal...high; xAI's grok-3-mini: low, high; gpt-4o and grok-4 none at all) or a range of thinking
tokens (Gemini 2.5 Flash: 0 to 24,576; Pro: 128 to 32,768 and never off), and answers 400 to anything else.
The block says which, so the translation (`providers.anthropic_inbound`) can choose a value the model takes;
without it that thinking is left out, as it always was. It changes nothing on /v1/chat/completions, where a
client's own `reasoning_effort` / `reasoning` goes as the client sent it.

    reasoning:
      efforts: [minimal, low, medium, high]         # the reasoning_effort values the model takes
    reasoning:
      budget: {min: 128, max: 32768}                # the thinking tokens it takes; 0 turns it off when
                                                    # min is 0, or with can_disable: true (Flash-Lite)
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from providers.reasoning import LEVELS, Limits

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]  # providers.reasoning.EFFORTS
_ORDER = ("none", *LEVELS)


class _Block(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BudgetConfig(_Block):
    """The thinking tokens a model takes: at least `min` (when thinking at all) and at most `max`."""

    min: Annotated[int, Field(ge=0)] = 0
    max: Annotated[int, Field(ge=1)]
    can_disable: bool | None = None  # a budget of 0 turns thinking off; None: when `min` is 0

    @model_validator(mode="after")
    def _ordered(self) -> BudgetConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class ReasoningConfig(_Block):
    """One of `efforts` (OpenAI-style `reasoning_effort` values) or `budget` (a token range: Gemini's
    `thinkingBudget`, OpenRouter's `reasoning.max_tokens`)."""

    efforts: Annotated[list[Effort], Field(min_length=1)] | None = None
    budget: BudgetConfig | None = None

    @model_validator(mode="after")
    def _one_control(self) -> ReasoningConfig:
        if (self.efforts is None) == (self.budget is None):
            raise ValueError("set one of efforts (the reasoning_effort values the model takes) or budget "
                             "({min, max}: the thinking tokens it takes); leave the block out when unknown")
        if self.efforts is not None and len(set(self.efforts)) != len(self.efforts):
            raise ValueError("efforts: each value once")
        return self

    def limits(self) -> Limits:
        """The plain data the translation reads (built once per config, by the catalog)."""
        if self.budget is not None:
            can_disable = self.budget.min == 0 if self.budget.can_disable is None else self.budget.can_disable
            return Limits(budget=(self.budget.min, self.budget.max), can_disable=can_disable)
        return Limits(efforts=tuple(sorted(self.efforts or (), key=_ORDER.index)))
