"""Reference neighborhood attention in plain torch: gather each query's window, softmax.

Differentiable, float64-capable (computes in float32, or float64 for float64 inputs), GQA
without copying k/v. Memory is ``O(N * prod(kernel_size) * D)``: meant for tests and small
inputs; the numba and Triton backends are the fast paths.

Shape legend: ``q (B, Hq, *S, D)``, ``k/v (B, Hkv, *S, D)``, ``N = prod(S)``,
``KK = prod(kernel_size)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference.dense import work_dtype
from attnkit_neighborhood.params import normalize
from attnkit_neighborhood.windows import flat_windows

__all__ = ["neighborhood_attention"]


@kernel
def neighborhood_attention(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, *S, Dv)`` and ``lse (B, Hq, *S)`` in the working dtype."""
    ks, dl, causal = normalize(call.params, call.spatial, call.causal)
    wd = work_dtype(call.dtype)
    idx, valid = flat_windows(call.spatial, ks, dl, causal, device=call.device)  # (N, KK)
    qf = call.grouped_q().to(wd)  # (B, Hkv, G, N, D)
    kw = call.k.to(wd)[:, :, idx]  # (B, Hkv, N, KK, D)
    vw = call.v.to(wd)[:, :, idx]
    scores = torch.einsum("bhgnd,bhnkd->bhgnk", qf, kw) * call.scale
    scores = scores.masked_fill(~valid, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)  # every window holds its own query: never empty
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhgnk,bhnkd->bhgnd", probs, vw)
    return out.reshape(call.batch, call.q_heads, call.q_len, -1), lse.reshape(call.batch, call.q_heads, call.q_len)
