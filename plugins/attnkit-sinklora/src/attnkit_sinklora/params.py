"""Parameters of SF-Attn / S²-Attn, the group geometry they imply, and validation.

The group geometry lives here (not in a backend) so every backend reads one definition; the
brute-force mask in :mod:`attnkit_sinklora.masks` re-derives it independently with loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SFAttnParams", "contract_params", "group_size", "shift_of_head", "validate"]


@dataclass(frozen=True)
class SFAttnParams:
    """Parameters of :data:`attnkit_sinklora.SF_ATTN`.

    :param group_size: tokens per group ``G``; ``None`` (default) derives it from the sequence
        length as ``max(1, floor(T * group_size_ratio))``, as LongLoRA/SinkLoRA do.
    :param group_size_ratio: ``G / T`` when ``group_size`` is ``None``; SinkLoRA uses 1/4.
    :param n_sink: the first ``n_sink`` tokens are global "sink" keys every query may attend
        to (subject to causality); 0 turns the sinks off.
    :param shifted: the S²-Attn variant: query heads ``h >= Hq // 2`` use groups shifted by
        half a group, starting at positions ``G // 2 + j * G`` as after LongLoRA's
        ``roll(-G // 2)`` (``group = (pos + G - G // 2) // G``). The shift does not wrap
        around: the first ``G // 2`` tokens form a short group of their own, so no group
        mixes the end of the sequence with its beginning (LongLoRA's cyclic roll does,
        leaking the future in a causal LM).
    """

    group_size: int | None = field(default=None, metadata={"contract_invalid": [0, -1, "x", 2.5]})
    group_size_ratio: float = field(default=0.25, metadata={"contract_invalid": [0.0, -0.25, 1.5, "x"]})
    n_sink: int = field(default=4, metadata={"min": 0})
    shifted: bool = field(default=False, metadata={"contract_invalid": ["yes", 1]})

    def __post_init__(self) -> None:
        g = self.group_size
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, int):
                raise TypeError(f"group_size must be an int or None, got {type(g).__name__} {g!r}")
            if g < 1:
                raise ValueError(f"group_size must be >= 1, got {g}")
        r = self.group_size_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise TypeError(f"group_size_ratio must be a float in (0, 1], got {type(r).__name__} {r!r}")
        if not (0.0 < float(r) <= 1.0) or math.isnan(float(r)):
            raise ValueError(f"group_size_ratio must be in (0, 1], got {r}")
        object.__setattr__(self, "group_size_ratio", float(r))
        s = self.n_sink
        if isinstance(s, bool) or not isinstance(s, int):
            raise TypeError(f"n_sink must be an int, got {type(s).__name__} {s!r}")
        if s < 0:
            raise ValueError(f"n_sink must be >= 0, got {s}")
        if not isinstance(self.shifted, bool):
            raise TypeError(f"shifted must be a bool, got {type(self.shifted).__name__} {self.shifted!r}")


def group_size(params: SFAttnParams, seq_len: int) -> int:
    """The group size ``G`` used at sequence length ``seq_len``."""
    if params.group_size is not None:
        return params.group_size
    return max(1, math.floor(seq_len * params.group_size_ratio))


def shift_of_head(params: SFAttnParams, head: int, n_heads: int, g: int) -> int:
    """Token shift of query head ``head`` of ``n_heads``, as in ``group = (pos + shift) // G``:
    ``G - G // 2`` for the shifted half (groups then start at ``G // 2 + j * G``), else 0."""
    return g - g // 2 if params.shifted and head >= n_heads // 2 else 0


def validate(params: SFAttnParams, q: Any, k: Any, v: Any, is_causal: bool | tuple[bool, ...]) -> None:
    """Check the parameters against ``q (B, Hq, T, D)``; raises ``ValueError`` naming them."""
    tq, tk = q.shape[2], k.shape[2]
    if isinstance(tq, int) and isinstance(tk, int) and tq != tk:
        raise ValueError(
            f"SF-Attn is self-attention: q has {tq} tokens but k has {tk} (q (B, H, T, D), k (B, H, T, D))"
        )
    # While exporting T is symbolic: comparing it would pin the exported graph to one range.
    if params.group_size is not None and isinstance(tq, int) and params.group_size > tq:
        raise ValueError(f"group_size={params.group_size} exceeds the sequence length T={tq} of q {tuple(q.shape)}")


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets the contract suite runs with at sequence length ``seq_len``."""
    t = max(seq_len, 1)
    return [
        {},  # SinkLoRA's defaults: G = T/4, 4 sinks
        {"group_size": min(t, 5), "n_sink": 2, "shifted": True},
        {"group_size": min(t, 3), "n_sink": 0},
    ]
