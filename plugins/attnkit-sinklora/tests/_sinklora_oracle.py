"""Shared test helper: dense float64 attention under the brute-force mask."""

from __future__ import annotations

import torch

from attnkit.reference import attention
from attnkit_sinklora.masks import brute_force_mask
from attnkit_sinklora.params import SFAttnParams


def inputs(
    shape: tuple[int, int, int, int], hkv: int, dv: int | None = None, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)`` from one seed."""
    gen = torch.Generator().manual_seed(seed)
    b, _, t, d = shape
    q = torch.randn(shape, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, t, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, t, dv or d, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def dense_oracle(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: SFAttnParams, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` in float64 (differentiable when the inputs require grad)."""
    mask = brute_force_mask(params, tuple(q.shape), tuple(k.shape), causal)
    return attention(q.double(), k.double(), v.double(), mask=mask, scale=scale, return_lse=True)
