"""Parameters of the H2O KV-cache policy. Imports no torch (the entry point imports it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnkit.cache.params import check_aggregation, check_budget

__all__ = ["H2OParams", "split_budget"]


def split_budget(budget: int, heavy_ratio: float) -> tuple[int, int]:
    """``(heavy, recent)`` for a resolved ``budget``: ``heavy = floor(budget * heavy_ratio)``,
    ``recent = budget - heavy``."""
    heavy = math.floor(budget * heavy_ratio)
    return heavy, budget - heavy


@dataclass(frozen=True)
class H2OParams:
    """Heavy-Hitter Oracle: keep the ``recent`` newest tokens plus the ``heavy`` older tokens
    with the largest accumulated attention, ``budget = heavy + recent`` tokens per sequence,
    layer and KV head.

    :param budget: int >= 1 tokens, or a ratio in (0, 1] of the prompt length (the paper's
        scripts use 0.2: ``heavy_ratio = recent_ratio = 0.1``).
    :param heavy_ratio: share of the budget for heavy hitters, in [0, 1]; default 0.5, the
        paper's even split. ``heavy = floor(budget * heavy_ratio)``, the rest is the recent
        window; 0 makes H2O a sliding window.
    :param aggregation: ``"mean"`` or ``"max"`` over the query heads of a GQA group, applied to
        each step's per-query-head attention (summed over that step's queries) before it is
        added to the KV head's score.
    """

    budget: int | float = 0.2
    heavy_ratio: float = 0.5
    aggregation: str = "mean"

    def __post_init__(self) -> None:
        check_budget(self.budget)
        if isinstance(self.heavy_ratio, bool) or not isinstance(self.heavy_ratio, (int, float)):
            raise TypeError(
                f"heavy_ratio must be a float in [0, 1], got {type(self.heavy_ratio).__name__} {self.heavy_ratio!r}"
            )
        if not (math.isfinite(self.heavy_ratio) and 0.0 <= self.heavy_ratio <= 1.0):
            raise ValueError(f"heavy_ratio must be in [0, 1], got {self.heavy_ratio}")
        check_aggregation(self.aggregation)
