"""Reference backend of ``longheads``: the selection (:mod:`attnkit_longheads.selection`) as a
dense bool mask, then dense attention under it, in plain torch.

Without ``rope_theta`` that is :func:`attnkit.kernels.onnx.masked_attention` (attnkit's
dense reference, its non-finite rule included). With ``rope_theta`` the logit of query ``i``
and key ``j`` is ``(R(-e_ij) q_i) · k_j``, ``e_ij`` the shift of ``j``'s slot
(:mod:`attnkit_longheads.positions`): exactly the logit of the keys and the query re-rotated
at their compact positions, computed densely (``O(Tq Tk D)`` memory).

Differentiable (gradients flow through the attention; the selection is discrete) and
float64-capable; the numba backend recomputes it for its gradients, and the contract suite
holds every backend to it (the tests hold it to a brute-force selection and an explicit
re-rotation written out in Python).

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``Hq % Hkv == 0``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import masked_attention
from attnkit_longheads.rope import rotate
from attnkit_longheads.selection import select

__all__ = ["longheads_attention", "longheads_call"]


def _rerotated(call: KernelCall, sel, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    wd = torch.float64 if call.dtype == torch.float64 else torch.float32
    g = call.group
    q = call.q.to(wd)
    k = call.k.to(wd).repeat_interleave(g, dim=1)
    v = call.v.to(wd).repeat_interleave(g, dim=1)
    index, valid = sel.key_index(call.kv_len, call.is_causal)
    slot_shift = sel.shift[..., None].expand(*sel.shift.shape, call.params.chunk_size).flatten(-2)
    shift = torch.zeros((*mask.shape[:3], call.kv_len + 1), dtype=torch.int64, device=call.device)
    shift = shift.scatter(-1, torch.where(valid, index, call.kv_len), slot_shift)[..., : call.kv_len]
    q_rot = rotate(q[:, :, :, None, :].expand(-1, -1, -1, call.kv_len, -1), -shift, call.params.rope_theta)
    logits = (q_rot * k[:, :, None]).sum(-1) * call.scale
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - torch.where(torch.isfinite(lse), lse, 0.0)[..., None])
    return torch.matmul(probs, v), lse


def longheads_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype (float32, or
    float64 for float64 inputs)."""
    sel = select(call.q, call.k, call.v, call.params, call.is_causal, call.scale)
    mask = sel.dense(call.kv_len, call.is_causal)
    if call.params.rope_theta is None:
        return masked_attention(call, mask)
    return _rerotated(call, sel, mask)


#: The reference backend (see :func:`attnkit.kernels.kernel` for the calling convention).
longheads_attention = kernel(longheads_call)
