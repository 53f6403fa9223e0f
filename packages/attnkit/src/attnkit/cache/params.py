"""Parameter dataclasses of the built-in KV-cache policies, and the budget rules they share.

Imports no torch: the registration module (:mod:`attnkit.default_plugins.caches`) and plugin
entry points import these at plugin-load time.

A *budget* is how many tokens a policy keeps per sequence, per layer and per KV head between
forward calls. It is either an absolute ``int >= 1`` or a ratio ``float`` in ``(0, 1]`` of the
prompt length, fixed when the prompt arrives (H2O's and kvpress's convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AGGREGATIONS", "SinkWindowParams", "WindowParams", "check_aggregation", "check_budget", "resolve_budget"]

#: How per-query-head scores become one score per KV head (the query group of a GQA head).
AGGREGATIONS = ("mean", "max")


def check_budget(budget: object, name: str = "budget") -> None:
    """Raise ``TypeError``/``ValueError`` naming ``name`` unless ``budget`` is an int >= 1 or a
    float ratio in (0, 1]."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(
            f"{name} must be an int >= 1 or a float ratio in (0, 1], got {type(budget).__name__} {budget!r}"
        )
    if isinstance(budget, int):
        if budget < 1:
            raise ValueError(f"{name} must be >= 1 tokens when given as an int, got {budget}")
    elif not (math.isfinite(budget) and 0.0 < budget <= 1.0):
        raise ValueError(f"{name} as a float is a ratio of the prompt length and must be in (0, 1], got {budget}")


def resolve_budget(budget: int | float, prompt_length: int) -> int:
    """The absolute token budget: ``budget`` itself, or ``max(1, floor(ratio * prompt_length))``."""
    check_budget(budget)
    if prompt_length < 1:
        raise ValueError(f"prompt_length must be >= 1 to resolve a budget, got {prompt_length}")
    if isinstance(budget, int):
        return budget
    return max(1, math.floor(budget * prompt_length))


def check_aggregation(aggregation: object, name: str = "aggregation") -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"{name} must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")


@dataclass(frozen=True)
class WindowParams:
    """Sliding window: keep the most recent ``budget`` tokens.

    :param budget: int >= 1 tokens, or a ratio in (0, 1] of the prompt length.
    """

    budget: int | float = 512

    def __post_init__(self) -> None:
        check_budget(self.budget)


@dataclass(frozen=True)
class SinkWindowParams:
    """StreamingLLM: keep the first ``n_sink`` tokens (attention sinks) plus the most recent ones,
    ``budget`` tokens in all.

    :param budget: int >= 1 tokens, or a ratio in (0, 1] of the prompt length; an int budget must
        exceed ``n_sink`` (a ratio is checked when it is resolved against the prompt).
    :param n_sink: number of leading tokens always kept (4 in the paper).
    """

    budget: int | float = 512
    n_sink: int = 4

    def __post_init__(self) -> None:
        check_budget(self.budget)
        if isinstance(self.n_sink, bool) or not isinstance(self.n_sink, int):
            raise TypeError(f"n_sink must be an int, got {type(self.n_sink).__name__} {self.n_sink!r}")
        if self.n_sink < 0:
            raise ValueError(f"n_sink must be >= 0, got {self.n_sink}")
        if isinstance(self.budget, int) and self.budget <= self.n_sink:
            raise ValueError(
                f"budget ({self.budget}) must exceed n_sink ({self.n_sink}) to leave room for recent tokens"
            )
