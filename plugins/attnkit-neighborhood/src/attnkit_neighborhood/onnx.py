"""ONNX-exportable neighborhood attention: window indices from the symbolic token sizes.

``torch.onnx.export(..., dynamo=True)`` traces this with symbolic batch and token sizes, so
nothing here branches on a size or reads a tensor value: the key indices of every window are
integer arithmetic on ``torch.arange`` of the token lengths (the border clamp included), then
one ``Gather`` per k/v tensor and small batched ``MatMul`` s. The graph therefore runs at any
token length at or above ``kernel_size * dilation`` on every axis.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``,
``N = prod(S)``, ``KK = prod(kernel_size)``, ``G = Hq // Hkv``.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.reference.dense import work_dtype
from attnkit_neighborhood.params import NeighborhoodParams, normalize

__all__ = ["neighborhood_attention", "window_indices"]


def _axis(
    n: Any, kernel: int, dilation: int, causal: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Key indices ``(n, kernel)`` on one axis, and for causal axes their validity.

    Group lengths are ``ceil((n - g) / dilation)``: a tensor, because ``g`` varies per query.
    """
    i = torch.arange(n, device=device)
    g = i % dilation
    ii = torch.div(i, dilation, rounding_mode="floor")
    offs = torch.arange(kernel, device=device)
    if causal:
        jj = ii[:, None] + (offs[None, :] - (kernel - 1))
        # Slots before the group start point at the query itself and are masked out.
        valid = jj >= 0
        jj = torch.where(valid, jj, ii[:, None])
        return jj * dilation + g[:, None], valid
    before = kernel // 2
    after = kernel // 2 + kernel % 2 - 1
    n_g = torch.div(n - g + (dilation - 1), dilation, rounding_mode="floor")
    center = torch.minimum(torch.clamp(ii, min=before), n_g - (1 + after))
    return (center - before)[:, None] * dilation + g[:, None] + offs[None, :] * dilation, None


def window_indices(
    spatial: tuple[Any, ...],
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flattened key indices ``(N, KK)`` of every query, and their validity (``None`` when
    every slot is valid, i.e. no axis is causal).

    :param spatial: token sizes, Python ints or symbolic sizes.
    """
    idx: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    for n, kk, d, c in zip(spatial, kernel, dilation, causal):
        a_idx, a_valid = _axis(n, kk, d, c, device)
        if idx is None:
            idx, valid = a_idx, a_valid
            continue
        if valid is not None or a_valid is not None:
            vp = valid if valid is not None else torch.ones_like(idx, dtype=torch.bool)
            va = a_valid if a_valid is not None else torch.ones_like(a_idx, dtype=torch.bool)
            valid = (vp[:, None, :, None] & va[None, :, None, :]).flatten(0, 1).flatten(1, 2)
        # (N_prev, K_prev) x (n, kk) -> (N_prev * n, K_prev * kk), row-major like the tokens.
        idx = (idx[:, None, :, None] * n + a_idx[None, :, None, :]).flatten(0, 1).flatten(1, 2)
    assert idx is not None
    return idx, valid


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: NeighborhoodParams,
    is_causal: bool | tuple[bool, ...],
    scale: float,
    return_lse: bool,
    **_: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention as gathers and batched matmuls, traceable with symbolic sizes.

    :returns: ``out (B, Hq, *S, Dv)`` in ``q.dtype``, and ``lse (B, Hq, *S)`` (float32, or
        float64 for float64 inputs) when ``return_lse``.
    """
    spatial = tuple(q.shape[2:-1])
    ks, dl, causal = normalize(params, spatial, is_causal)
    b, hq, d = q.shape[0], q.shape[1], q.shape[-1]
    hkv, dv = k.shape[1], v.shape[-1]
    g = hq // hkv
    wd = work_dtype(q.dtype)
    idx, valid = window_indices(spatial, ks, dl, causal, q.device)  # (N, KK)
    kk = idx.shape[1]
    # Query heads grouped per k/v head: (B, Hkv, G, N, 1, D); k/v keep Hkv heads.
    qf = q.to(wd).reshape(b, hkv, g, -1, 1, d)
    n = qf.shape[3]
    kf = k.to(wd).reshape(b, hkv, -1, d)
    vf = v.to(wd).reshape(b, hkv, -1, dv)
    flat = idx.reshape(-1)
    kw = torch.index_select(kf, 2, flat).reshape(b, hkv, 1, n, kk, d)
    vw = torch.index_select(vf, 2, flat).reshape(b, hkv, 1, n, kk, dv)
    # A tensor, not a Python float: the exporter would store a float scalar as float32.
    scale_t = torch.tensor(scale, dtype=wd, device=q.device)
    scores = torch.matmul(qf, kw.transpose(-1, -2)) * scale_t  # (B, Hkv, G, N, 1, KK)
    if valid is not None:
        # Every window holds its own query, so no row is fully masked.
        scores = scores.masked_fill(~valid.reshape(n, 1, kk), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    probs = torch.exp(scores - lse)
    out = torch.matmul(probs, vw)  # (B, Hkv, G, N, 1, Dv)
    out = out.reshape(b, hq, *spatial, dv).to(q.dtype)
    if return_lse:
        return out, lse.reshape(b, hq, *spatial)
    return out
