"""Reference backend of ``dhsa``: the selection (:mod:`attnkit_dhsa.selection`) as a dense
bool mask, then dense attention under it, in plain torch.

Differentiable (gradients flow through the attention; the selection is discrete) and
float64-capable; the numba and Triton backends recompute it for their gradients, and the
contract suite holds every backend to it in float64 (the tests hold it to a brute-force
selection written out in Python). ``O(Tq Tk)`` memory: the fast paths gather instead.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``Hq % Hkv == 0``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import masked_attention
from attnkit_dhsa.selection import select

__all__ = ["dhsa_attention", "dhsa_call", "selected_mask"]


def selected_mask(call: KernelCall) -> torch.Tensor:
    """bool ``(B, Hq|1, Tq, Tk)``: True where a query attends a key."""
    mask = select(call.q, call.k, call.params, call.is_causal).dense(call.q_len, call.kv_len)
    if mask.shape[1] != 1:
        mask = mask.repeat_interleave(call.group, dim=1)
    return mask


def dhsa_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype (float32, or
    float64 for float64 inputs)."""
    return masked_attention(call, selected_mask(call))


#: The reference backend (see :func:`attnkit.kernels.kernel` for the calling convention).
dhsa_attention = kernel(dhsa_call)
