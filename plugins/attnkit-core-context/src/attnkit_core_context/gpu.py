"""Triton backend of ``core-context``: the core tokens pooled in torch, then one fused forward
over each query block's visible core tokens and raw local window.

Runs on CUDA; on CPU only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
the kernels are decorated, as ``tests/conftest.py`` and ``attnkit check`` do). The kernel is in
:mod:`attnkit_core_context._triton_kernels`; loading, interpreter detection, the ``can_run``
reasons, launch sizes and autograd (gradients recompute the reference) come from
:mod:`attnkit.kernels.gpu`.

Shape legend: ``q (B, Hq, L, D)``, ``k (B, Hkv, L, D)``, ``v (B, Hkv, L, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.gpu import TritonKernels, cdiv, empty_outputs, strides, triton_backend
from attnkit_core_context.pooling import core_tokens
from attnkit_core_context.reference import core_context_call

__all__ = ["TRITON", "core_context_attention"]

TRITON = TritonKernels(
    "attnkit_core_context._triton_kernels",
    "cca_fwd_kernel",
    install="pip install 'attnkit-core-context[gpu]'",
    interpreter_blocks=(16, 16),
)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = call.q, call.k, call.v
    kc, vc = (x.to(call.dtype) for x in core_tokens(call))
    out, lse = empty_outputs(call)
    meta = TRITON.meta(q, v)
    p = call.params
    TRITON.launch(
        "cca_fwd_kernel", (cdiv(call.q_len, meta["BLOCK_M"]), call.batch * call.q_heads),
        q, k, v, kc, vc, out, lse,
        *strides(q, k, v, kc, vc, out, lse),
        call.q_heads, call.group, call.q_len, kc.shape[2], call.head_dim, call.value_dim,
        p.group_size, p.window, call.scale, **meta,
    )  # fmt: skip
    return out, lse


#: The Triton backend; the kernel takes every stride, so inputs are not copied.
core_context_attention = triton_backend(_forward, recompute=core_context_call, contiguous=False)
