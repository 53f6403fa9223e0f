"""Reference neighborhood attention in plain torch: gather each query's window, softmax.

Differentiable, float64-capable (computes in float32, or float64 for float64 inputs), GQA
without copying k/v. Memory is ``O(N * prod(kernel_size) * D)``: meant for tests and small
inputs; the numba and Triton backends are the fast paths.

Non-finite input follows attnkit's rule (:mod:`attnkit.reference.dense`): a query whose row,
or a key/value row in its window, is not finite, or whose logits overflow, is NaN (``lse``
too); no other query is touched.

Shape legend: ``q (B, Hq, *S, D)``, ``k/v (B, Hkv, *S, D)``, ``N = prod(S)``,
``KK = prod(kernel_size)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference.dense import poison_rows, work_dtype
from attnkit.tensors import non_finite_rows
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
    kf, vf = call.k.to(wd), call.v.to(wd)
    bad_q = non_finite_rows(qf)  # (B, Hkv, G, N)
    bad_kv = non_finite_rows(kf) | non_finite_rows(vf)  # (B, Hkv, N)
    qf = qf.masked_fill(bad_q[..., None], 0.0)
    kw = kf.masked_fill(bad_kv[..., None], 0.0)[:, :, idx]  # (B, Hkv, N, KK, D)
    vw = vf.masked_fill(bad_kv[..., None], 0.0)[:, :, idx]
    scores = torch.einsum("bhgnd,bhnkd->bhgnk", qf, kw) * call.scale
    scores = scores.masked_fill(~valid, float("-inf"))
    # every window holds its own query, so a maximum that is not finite means overflow
    poisoned = bad_q | (bad_kv[:, :, idx] & valid).any(-1)[:, :, None] | ~torch.isfinite(scores.amax(-1))
    scores = scores.masked_fill(poisoned[..., None], 0.0)
    lse = torch.logsumexp(scores, dim=-1)  # every window holds its own query: never empty
    probs = torch.exp(scores - lse[..., None])
    out, lse = poison_rows(torch.einsum("bhgnk,bhnkd->bhgnd", probs, vw), lse, poisoned)
    return out.reshape(call.batch, call.q_heads, call.q_len, -1), lse.reshape(call.batch, call.q_heads, call.q_len)
