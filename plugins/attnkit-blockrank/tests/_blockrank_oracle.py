"""Shared test helper: inputs, and dense float64 attention under the brute-force mask."""

from __future__ import annotations

import torch

from attnkit.reference import attention
from attnkit_blockrank.masks import brute_force_mask
from attnkit_blockrank.params import BlockrankParams


def inputs(
    tq: int, tk: int, hq: int = 4, hkv: int = 2, d: int = 8, dv: int | None = None, dtype=torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q (2, Hq, Tq, D)``, ``k (2, Hkv, Tk, D)``, ``v (2, Hkv, Tk, Dv)`` from one seed."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, tq, d, generator=g, dtype=torch.float64)
    k = torch.randn(2, hkv, tk, d, generator=g, dtype=torch.float64)
    v = torch.randn(2, hkv, tk, dv or d, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def dense_oracle(q, k, v, params: dict, causal: bool, scale: float | None = None):  # type: ignore[no-untyped-def]
    """``(out, lse)`` in float64 (differentiable when the inputs require grad)."""
    mask = brute_force_mask(BlockrankParams(**params), tuple(q.shape), tuple(k.shape), causal)
    return attention(q.double(), k.double(), v.double(), mask=mask, scale=scale, return_lse=True)
