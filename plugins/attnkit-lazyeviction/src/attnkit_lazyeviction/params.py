"""Parameters of the ``lazyeviction`` cache spec. Imports no torch: the entry point imports
this module when attnkit loads plugins."""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnkit.cache.params import check_aggregation, check_budget

__all__ = ["PREFILL_MODES", "LazyEvictionParams"]

#: What happens to the prompt (see :class:`LazyEvictionParams`).
PREFILL_MODES = ("compress", "keep")


@dataclass(frozen=True)
class LazyEvictionParams:
    """LazyEviction: lagged eviction by the MRI-centric score.

    Defaults are the official scripts' (``eval_qwen.sh``, GSM8K: ``max_kv_capacity=1492``,
    ``decoding_recent_size = obs_size = 101``, ``--alpha 0.0001``).

    :param budget: tokens kept per sequence, layer and KV head right after an eviction: int
        >= 1, or a ratio in (0, 1] of the prompt length (the paper's ``max_kv_capacity``).
        Between evictions the cache holds up to ``window`` more.
    :param window: ``W``, the observation window: eviction runs at decode steps that are
        multiples of ``W`` and always keeps the ``W`` newest tokens (``min(W, budget)`` when the
        budget is not larger).
    :param alpha: a token recurs at a step when the attention it gets is ``>= alpha`` (an
        absolute probability, after the GQA ``aggregation``).
    :param aggregation: ``"mean"`` or ``"max"``: how the attention probabilities of the query
        heads of one KV head become that KV head's probability before the ``alpha`` test.
    :param prefill: ``"compress"``: the prompt's queries are observed like decode steps and a
        prompt longer than the budget is evicted down to it at the prefill (attnkit's convention
        for every policy); ``"keep"``: the paper's behaviour, the prompt is stored whole, its
        tokens start as recurring at the prefill's end with MRI 0, and the first eviction is at
        decode step ``W``.
    :param chunk: queries per chunk when recomputing attention over the prompt (bounds memory).
    """

    budget: int | float = 1492
    window: int = 101
    alpha: float = 1e-4
    aggregation: str = "mean"
    prefill: str = "compress"
    chunk: int = 128

    def __post_init__(self) -> None:
        check_budget(self.budget)
        for name, value in (("window", self.window), ("chunk", self.chunk)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
            raise TypeError(f"alpha must be a float in (0, 1], got {type(self.alpha).__name__} {self.alpha!r}")
        if not (math.isfinite(self.alpha) and 0.0 < self.alpha <= 1.0):
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        check_aggregation(self.aggregation)
        if self.prefill not in PREFILL_MODES:
            raise ValueError(f"prefill must be one of {', '.join(PREFILL_MODES)}, got {self.prefill!r}")
