"""Parameter dataclasses of the retrieval-head specs. Imports no torch: the entry point imports
this module when attnkit loads plugins."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from attnkit.cache.params import check_budget
from attnkit.paramcheck import check_int as _check_int

__all__ = ["RetrievalCacheParams", "RetrievalScoreParams"]


def _check_unit(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class RetrievalScoreParams:
    """Parameters of the ``retrieval_score`` analysis.

    :param threshold: score above which a head counts as a retrieval head (0.1 in the paper).
    :param min_recall: an instance counts only when the answer's ROUGE-1 recall against the
        needle answer exceeds this (0.5: the paper's "ROUGE recall > 50").
    """

    threshold: float = 0.1
    min_recall: float = 0.5

    def __post_init__(self) -> None:
        _check_unit("threshold", self.threshold)
        _check_unit("min_recall", self.min_recall)


@dataclass(frozen=True)
class RetrievalCacheParams:
    """Parameters of the ``retrieval_heads_cache`` policy.

    Which query heads are retrieval heads comes from ``heads`` or, when that is empty, from
    ``scores`` (heads scoring above ``threshold``, or the ``top_k`` best). With neither, no head
    is a retrieval head and the policy is sinks + window everywhere.

    :param scores: head scores: a path to a JSON file written by ``DetectionResult.save`` (or
        the paper's ``{"l-h": [per-instance scores]}`` files), or a mapping ``"l-h"`` -> score.
    :param heads: explicit retrieval query heads ``((layer, head), ...)``.
    :param threshold: score above which a head is a retrieval head (with ``scores``).
    :param top_k: take the ``top_k`` best-scoring heads instead of the threshold (with ``scores``).
    :param group_size: query heads per KV head (``num_attention_heads // num_key_value_heads``);
        query head ``h`` reads KV head ``h // group_size``.
    :param window: recent tokens every other KV head keeps.
    :param n_sink: leading tokens (attention sinks) every KV head keeps.
    :param budget: the most tokens any KV head keeps (int >= 1, or a ratio in (0, 1] of the
        prompt length): retrieval KV heads keep the ``budget`` most recent tokens plus the sinks
        instead of everything, the others at most ``budget`` instead of ``n_sink + window``.
        ``None``: retrieval KV heads keep everything. Must exceed ``n_sink``.
    """

    scores: Any = None
    heads: tuple[tuple[int, int], ...] = ()
    threshold: float = 0.1
    top_k: int | None = None
    group_size: int = 1
    window: int = 64
    n_sink: int = 4
    budget: int | float | None = None

    def __post_init__(self) -> None:
        if (
            self.scores is not None
            and not isinstance(self.scores, (str, dict))
            and not hasattr(self.scores, "__fspath__")
        ):
            raise TypeError(
                f"scores must be a JSON path or a mapping 'layer-head' -> score, got {type(self.scores).__name__}"
            )
        if isinstance(self.heads, (str, bytes)) or not hasattr(self.heads, "__iter__"):
            raise TypeError(f"heads must be (layer, head) pairs, got {type(self.heads).__name__}")
        heads = []
        for item in self.heads:
            if (
                not isinstance(item, (tuple, list))
                or len(item) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in item)
            ):
                raise ValueError(f"heads must be (layer, head) pairs of non-negative ints, got entry {item!r}")
            heads.append((int(item[0]), int(item[1])))
        object.__setattr__(self, "heads", tuple(heads))
        _check_unit("threshold", self.threshold)
        if self.top_k is not None:
            _check_int("top_k", self.top_k, 1)
        _check_int("group_size", self.group_size, 1)
        _check_int("window", self.window, 1)
        _check_int("n_sink", self.n_sink, 0)
        if self.budget is not None:
            check_budget(self.budget)
            if isinstance(self.budget, int) and self.budget <= self.n_sink:
                raise ValueError(
                    f"budget ({self.budget}) must exceed n_sink ({self.n_sink}) to leave room for recent tokens"
                )
