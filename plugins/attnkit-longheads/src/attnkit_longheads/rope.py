"""Rotary position embedding in the Hugging Face ``rotate_half`` convention (Llama family).

``rotate(x, pos, theta)`` turns ``x (..., T, D)`` as if it sat at positions ``pos (T,)`` or
``(..., T)``; a negative position undoes the rotation (``R(a)^T = R(-a)`` and
``R(a)^T R(b) = R(b - a)``), which is what LongHeads' re-indexing needs.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["inv_freq", "rotate"]


def inv_freq(head_dim: int, theta: float, device: Any = None) -> torch.Tensor:
    """float64 ``(D / 2,)``: ``theta ** (-2i / D)``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    return theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)


def rotate(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` at positions ``pos`` (broadcast over ``x[..., 0]``)."""
    freqs = pos.to(torch.float64)[..., None] * inv_freq(x.shape[-1], theta, x.device)  # (..., T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin
