"""Reference neighborhood attention in plain torch: gather each query's window, softmax.

Differentiable, float64-capable (computes in float32, or float64 for float64 inputs), GQA
without copying k/v. Memory is ``O(N * prod(kernel_size) * D)``: meant for tests and small
inputs; the numba and Triton backends are the fast paths.

Shape legend: ``q (B, Hq, *S, D)``, ``k/v (B, Hkv, *S, D)``, ``N = prod(S)``,
``KK = prod(kernel_size)``.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.reference.dense import work_dtype
from attnkit_neighborhood.params import NeighborhoodParams, normalize
from attnkit_neighborhood.windows import flat_windows


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
    spatial = tuple(q.shape[2:-1])
    ks, dl, causal = normalize(params, spatial, is_causal)
    b, hq, d = q.shape[0], q.shape[1], q.shape[-1]
    hkv, dv = k.shape[1], v.shape[-1]
    g = hq // hkv
    wd = work_dtype(q.dtype)
    idx, valid = flat_windows(spatial, ks, dl, causal, device=q.device)  # (N, KK)
    n = idx.shape[0]
    qf = q.to(wd).reshape(b, hkv, g, n, d)
    kf = k.to(wd).reshape(b, hkv, n, d)
    vf = v.to(wd).reshape(b, hkv, n, dv)
    kw = kf[:, :, idx]  # (B, Hkv, N, KK, D)
    vw = vf[:, :, idx]
    scores = torch.einsum("bhgnd,bhnkd->bhgnk", qf, kw) * scale
    scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # every window holds its own query: never empty
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhgnk,bhnkd->bhgnd", probs, vw)
    out = out.reshape(b, hq, *spatial, dv).to(q.dtype)
    if return_lse:
        return out, lse.reshape(b, hq, *spatial)
    return out
