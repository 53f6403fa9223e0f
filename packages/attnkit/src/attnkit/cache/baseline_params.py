"""Parameters of the baseline KV-cache policies (:mod:`attnkit.cache.baselines`): SnapKV,
observed attention, key norm, and AdaKV's head-wise allocation over any of them.

Imports no torch: the registration module (:mod:`attnkit.default_plugins.caches`) imports these
at plugin-load time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attnkit.cache.params import check_aggregation, check_budget

__all__ = [
    "ALLOCATIONS",
    "POOLINGS",
    "SCORERS",
    "AdaKVParams",
    "KeyNormParams",
    "ObservedAttentionParams",
    "SnapKVParams",
    "check_allocation",
    "check_alpha_safeguard",
]

#: How a layer's budget is split over its KV heads: the same for every head, or AdaKV's
#: joint top scores over the heads of the layer.
ALLOCATIONS = ("uniform", "adaptive")
#: SnapKV's pooling of the observation window's scores along the key axis.
POOLINGS = ("max", "avg")
#: The scorers :class:`AdaKVParams` composes with (the spec names of the policies).
SCORERS = ("snapkv", "observed_attention", "key_norm")


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_allocation(allocation: object, name: str = "allocation") -> None:
    if allocation not in ALLOCATIONS:
        raise ValueError(f"{name} must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")


def check_alpha_safeguard(alpha: object, name: str = "alpha_safeguard") -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1], got {type(alpha).__name__} {alpha!r}")
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {alpha}")


@dataclass(frozen=True)
class SnapKVParams:
    """SnapKV: the attention of the prompt's last ``window`` queries, pooled along the keys,
    chooses the prompt keys kept; the ``window`` newest tokens are always kept.

    :param budget: tokens kept per sequence, layer and KV head: int >= 1, or a ratio in (0, 1]
        of the prompt length. It includes the window (SnapKV's ``max_capacity_prompt``).
    :param window: observation window (queries scored with) and recent tokens always kept, int
        >= 1 (32 in SnapKV); the kept window is ``min(window, budget)``.
    :param kernel_size: pooling kernel along the key axis, an odd int >= 1; 1 disables pooling.
        15 by default, where SnapKV's LongBench configurations use 7 and kvpress 5: on SmolLM2's
        needles (about 15 tokens of answer) a kernel of 7 keeps the first half of the needle and
        the answers stop there (0.50 at 12.5% and 25% of 1024 tokens, n = 8), a kernel of 15 or 21
        keeps all of it (1.00); see docs/benchmarks.md.
    :param pooling: ``"max"`` (SnapKV's LongBench setting) or ``"avg"`` (its default, kvpress's).
    :param aggregation: ``"mean"`` (kvpress) or ``"max"`` over the query heads of a KV head.
    :param allocation: ``"uniform"`` (``budget`` per KV head) or ``"adaptive"`` (AdaKV: the
        layer's ``budget x Hkv`` split over its KV heads by joint top scores).
    :param alpha_safeguard: with ``"adaptive"``, the share of ``budget`` every KV head keeps
        at least (AdaKV's floor; 0.2 in kvpress).
    """

    budget: int | float = 0.25
    window: int = 32
    kernel_size: int = 15
    pooling: str = "max"
    aggregation: str = "mean"
    allocation: str = "uniform"
    alpha_safeguard: float = 0.2

    def __post_init__(self) -> None:
        check_budget(self.budget)
        _check_int(self.window, "window", 1)
        _check_int(self.kernel_size, "kernel_size", 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd (the pooled scores keep the keys' length), got {self.kernel_size}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        check_aggregation(self.aggregation)
        check_allocation(self.allocation)
        check_alpha_safeguard(self.alpha_safeguard)


@dataclass(frozen=True)
class ObservedAttentionParams:
    """Observed attention: the attention a key has received from every query so far, divided
    by the number of queries that could see it (kvpress's ``ObservedAttentionPress``, kept up
    over decoding).

    :param budget: int >= 1 tokens, or a ratio in (0, 1] of the prompt length.
    :param window: newest tokens always kept, int >= 0 (0, as kvpress: every key competes,
        the newest included).
    :param aggregation: ``"mean"`` (kvpress) or ``"max"`` over the query heads of a KV head.
    :param allocation: ``"uniform"`` or ``"adaptive"`` (AdaKV), as for :class:`SnapKVParams`.
    :param alpha_safeguard: AdaKV's floor share per KV head.
    """

    budget: int | float = 0.25
    window: int = 0
    aggregation: str = "mean"
    allocation: str = "uniform"
    alpha_safeguard: float = 0.2

    def __post_init__(self) -> None:
        check_budget(self.budget)
        _check_int(self.window, "window", 0)
        check_aggregation(self.aggregation)
        check_allocation(self.allocation)
        check_alpha_safeguard(self.alpha_safeguard)


@dataclass(frozen=True)
class KeyNormParams:
    """Key norm (kvpress's ``KnormPress``): keep the keys of smallest L2 norm; no queries.

    :param budget: int >= 1 tokens, or a ratio in (0, 1] of the prompt length.
    :param window: newest tokens always kept, int >= 0 (0, as kvpress).
    :param allocation: ``"uniform"`` or ``"adaptive"`` (AdaKV), as for :class:`SnapKVParams`.
    :param alpha_safeguard: AdaKV's floor share per KV head.
    """

    budget: int | float = 0.25
    window: int = 0
    allocation: str = "uniform"
    alpha_safeguard: float = 0.2

    def __post_init__(self) -> None:
        check_budget(self.budget)
        _check_int(self.window, "window", 0)
        check_allocation(self.allocation)
        check_alpha_safeguard(self.alpha_safeguard)


_SCORER_PARAMS: dict[str, type] = {
    "snapkv": SnapKVParams,
    "observed_attention": ObservedAttentionParams,
    "key_norm": KeyNormParams,
}


@dataclass(frozen=True)
class AdaKVParams:
    """AdaKV: a scorer's keys chosen per layer rather than per KV head: the layer keeps its
    ``budget x Hkv`` best-scored keys over all its KV heads jointly, each head at least
    ``floor(alpha_safeguard x budget)`` (and its always-kept window), so heads hold different
    numbers of keys.

    :param budget: the mean number of tokens kept per KV head (int >= 1, or a ratio in (0, 1]
        of the prompt length); a layer keeps ``budget x Hkv`` per sequence.
    :param scorer: the policy whose scores are allocated: ``"snapkv"`` (kvpress's usual
        pairing), ``"observed_attention"`` or ``"key_norm"``.
    :param alpha_safeguard: the share of ``budget`` every KV head keeps at least, in [0, 1].
    :param scorer_params: the scorer's other parameters (``{"window": 8}``...), checked by its
        parameter class; stored as a sorted tuple of ``(name, value)`` pairs.
    """

    budget: int | float = 0.25
    scorer: str = "snapkv"
    alpha_safeguard: float = 0.2
    scorer_params: Mapping[str, Any] | tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_budget(self.budget)
        if self.scorer not in _SCORER_PARAMS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")
        check_alpha_safeguard(self.alpha_safeguard)
        raw = self.scorer_params
        if isinstance(raw, Mapping):
            items = tuple(sorted(raw.items()))
        elif isinstance(raw, tuple) and all(isinstance(p, tuple) and len(p) == 2 for p in raw):
            items = tuple(sorted(raw))
        else:
            raise TypeError(
                f"scorer_params must be a mapping of parameter names to values, got {type(raw).__name__} {raw!r}"
            )
        taken = sorted({"budget", "allocation", "alpha_safeguard"} & {k for k, _ in items})
        if taken:
            raise ValueError(f"scorer_params must not set {', '.join(taken)}: AdaKVParams sets them itself")
        try:
            self.scorer_class_params()
        except TypeError as exc:
            raise TypeError(f"scorer_params {dict(items)!r} do not fit scorer {self.scorer!r}: {exc}") from exc
        object.__setattr__(self, "scorer_params", items)

    def scorer_class_params(self) -> Any:
        """The scorer's parameter dataclass, with ``allocation="adaptive"``."""
        items = self.scorer_params.items() if isinstance(self.scorer_params, Mapping) else self.scorer_params
        cls = _SCORER_PARAMS[self.scorer]
        return cls(budget=self.budget, allocation="adaptive", alpha_safeguard=self.alpha_safeguard, **dict(items))
