"""Reference backend of ``blockrank``: the paper's eager form, one segment at a time.

Each segment's queries attend, with attnkit's float32/float64 reference
(:func:`attnkit.reference.attention`), to the concatenation of the key ranges the segment may
see (the instruction and itself for a document, everything before it for the query), under
the causal mask inside those ranges. Differentiable, float64-capable, and ``O(I^2 + sum_d
L_d (I + L_d) + Q T)`` like the paper's per-block batched matmuls: linear in the number of
documents. The numba and Triton backends recompute it for their gradients.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``Hq % Hkv == 0``; queries sit at
key positions ``Tk - Tq .. Tk - 1``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference import attention
from attnkit_blockrank.params import segment_bounds
from attnkit_blockrank.tiles import query_tiles

__all__ = ["blockrank_attention", "blockrank_call"]


def blockrank_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype (float32, or
    float64 for float64 inputs)."""
    n, m = call.q_len, call.kv_len
    off = m - n
    plan = query_tiles(segment_bounds(call.params), n, m, max(m, 1), call.is_causal)
    outs, lses = [], []
    for p0, p1, a0, a1, b0, b1 in plan.tolist():
        keys = torch.cat([torch.arange(a0, a1), torch.arange(b0, b1)]).to(call.device)
        ks = call.k[:, :, a0:a1] if b1 <= b0 else torch.cat([call.k[:, :, a0:a1], call.k[:, :, b0:b1]], dim=2)
        vs = call.v[:, :, a0:a1] if b1 <= b0 else torch.cat([call.v[:, :, a0:a1], call.v[:, :, b0:b1]], dim=2)
        mask = None
        if call.is_causal:
            pos = torch.arange(p0, p1, device=call.device)
            mask = keys[None, :] <= pos[:, None]
        out, lse = attention(call.q[:, :, p0 - off : p1 - off], ks, vs, mask=mask, scale=call.scale, return_lse=True)
        outs.append(out)
        lses.append(lse)
    if not outs:  # no queries
        wd = torch.float64 if call.dtype == torch.float64 else torch.float32
        shape = (call.batch, call.q_heads, 0)
        return call.q.new_zeros(*shape, call.value_dim), torch.zeros(shape, dtype=wd, device=call.device)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


#: The reference backend (see :func:`attnkit.kernels.kernel` for the calling convention).
blockrank_attention = kernel(blockrank_call)
