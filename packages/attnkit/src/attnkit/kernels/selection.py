"""Pieces of data-dependent key selection (top-k chunks, blocks or tokens), shared by the
plugins whose allowed keys depend on the scores (dhsa, longheads): a stable top-k that exports
to ONNX in the same order, and the scoring inputs' non-finite rows read as zeros.

Shape legend: any ``(..., N)`` for the keys of :func:`stable_topk`; ``(..., D)`` rows for
:func:`zero_non_finite_rows`.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["stable_topk", "zero_non_finite_rows"]


def stable_topk(key: torch.Tensor, width: Any, *, largest: bool = True) -> torch.Tensor:
    """Indices of the first ``width`` entries of ``key`` ordered along the last axis (largest
    first, or smallest with ``largest=False``), equal keys in ascending index order.

    Eager: a stable sort. While exporting: ``torch.topk``, since ONNX has no stable sort but
    its ``TopK`` puts the lower index first among equal values (the operator's spec), which
    is the same order. A selection that breaks ties by position therefore picks the same keys
    in eager torch and in onnxruntime.
    """
    if torch.compiler.is_exporting():
        return torch.topk(key, width, dim=-1, largest=largest, sorted=True).indices
    return torch.argsort(key, dim=-1, descending=largest, stable=True)[..., :width]


def zero_non_finite_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every row (last axis) that holds a NaN or an infinity set to zeros: how a
    selection scores non-finite input (attnkit's non-finite rule then applies to the keys it
    keeps, in the attention)."""
    return x.masked_fill(~torch.isfinite(x).all(dim=-1, keepdim=True), 0.0)
