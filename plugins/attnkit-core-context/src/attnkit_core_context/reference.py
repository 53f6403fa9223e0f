"""Reference backend of ``core-context``: one softmax over ``[core tokens ; raw tokens]``
under the fused visibility mask (:mod:`attnkit_core_context.pooling`), in plain torch.

This is the official code's reference path (``pooling_attention_wo_cache``: concatenate
``K' = [K^G ; K]``, ``V' = [V^G ; V]``, one softmax with the mask of ``generate_mask``): the
joint softmax is the paper's fusion of globality-pooling and locality-preserved attention.
Differentiable (gradients flow through the pooling weights into q, k and v), float64-capable
and traceable by ``torch.export`` (index arithmetic on the symbolic length), so it is also the
ONNX export path. The numba and Triton backends recompute it for their gradients.

Shape legend: ``q (B, Hq, L, D)``, ``k/v (B, Hkv, L, D)``, ``Hq % Hkv == 0``, ``m = L // g``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference.dense import attention, work_dtype
from attnkit_core_context.pooling import core_tokens, fused_mask, per_query_head

__all__ = ["core_context_attention", "core_context_call"]


def core_context_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, L, Dv)`` and ``lse (B, Hq, L)`` in the working dtype (float32, or float64
    for float64 inputs)."""
    kc, vc = core_tokens(call)
    n = call.q_len
    wd = work_dtype(call.dtype)
    # The raw keys per query head (the reference may copy; the kernels do not).
    k = per_query_head(call.k.to(wd), call.group)
    v = per_query_head(call.v.to(wd), call.group)
    keys = torch.cat([kc, k], dim=2)
    values = torch.cat([vc, v], dim=2)
    mask = fused_mask(n, call.params.group_size, call.params.window, device=call.device)
    return attention(call.q.to(wd), keys, values, mask=mask[None, None], scale=call.scale, return_lse=True)


#: The reference backend (see :func:`attnkit.kernels.kernel` for the calling convention).
core_context_attention = kernel(core_context_call)
