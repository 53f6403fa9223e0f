"""ONNX-exportable SF-Attn: the mask from index arithmetic on the symbolic sequence length.

``torch.onnx.export(..., dynamo=True)`` traces this with symbolic batch and token sizes, so
nothing here branches on a size: the group size ``max(1, floor(T * ratio))`` (when
``group_size`` is not fixed) is computed as a float64 tensor from ``T``, group ids are
``(pos + shift_h) // G`` (``shift_h = G - G // 2`` on shifted heads) on ``torch.arange(T)``, and
the attention is dense under that mask (:func:`attnkit.kernels.onnx.masked_attention`,
``O(T^2)``: the graph is meant for portability, the numba/Triton kernels are the fast paths).
Float64 keeps ``floor(T * ratio)`` identical to the Python value the other backends use.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``,
``R = Hq // Hkv``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import masked_attention
from attnkit_sinklora.params import SFAttnParams

__all__ = ["sf_attention", "sf_mask"]


def sf_mask(params: SFAttnParams, q: torch.Tensor, causal: bool) -> torch.Tensor:
    """``(Hq, T, T)`` bool, True where the query may attend; built from traceable ops only."""
    hq, t = q.shape[1], q.shape[2]
    pos = torch.arange(t, device=q.device)
    if params.group_size is not None:
        g = torch.full((), params.group_size, dtype=torch.int64, device=q.device)
    else:
        t_f = (pos[-1:] + 1).to(torch.float64)
        g = torch.clamp(torch.floor(t_f * params.group_size_ratio), min=1.0).to(torch.int64)
    heads = torch.arange(hq, device=q.device)
    shifted = (heads >= hq // 2) & torch.tensor(params.shifted, device=q.device)
    shift = torch.where(shifted, g - g // 2, torch.zeros_like(g))[:, None]  # (Hq, 1)
    grp = torch.div(pos[None, :] + shift, g, rounding_mode="floor")  # (Hq, T)
    ok = (grp[:, :, None] == grp[:, None, :]) | (pos < params.n_sink)[None, None, :]
    if causal:
        ok = ok & (pos[None, :] <= pos[:, None])[None]
    return ok


@kernel
def sf_attention(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """SF-Attn as dense attention under an index-arithmetic mask (export-friendly).

    :returns: ``out (B, Hq, T, Dv)`` in ``q.dtype`` (and ``lse (B, Hq, T)``).
    """
    return masked_attention(call, sf_mask(call.params, call.q, call.is_causal))
