"""Triton backend of ``blockrank``: a fused forward over each query block's key ranges.

Runs on CUDA; on CPU only under the Triton interpreter (``TRITON_INTERPRET=1`` set before
the kernels are decorated, as ``tests/conftest.py`` and ``attnkit check`` do). The kernel is in
:mod:`attnkit_blockrank._triton_kernels`; loading, interpreter detection, the ``can_run``
reasons, launch sizes and autograd (gradients recompute the reference) come from
:mod:`attnkit.kernels.gpu`.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.gpu import TritonKernels, cdiv, empty_outputs, strides, triton_backend
from attnkit_blockrank.params import segment_bounds
from attnkit_blockrank.reference import blockrank_call
from attnkit_blockrank.tiles import query_tiles

__all__ = ["TRITON", "blockrank_attention"]

TRITON = TritonKernels(
    "attnkit_blockrank._triton_kernels",
    "blockrank_fwd_kernel",
    install="pip install 'attnkit-blockrank[gpu]'",
    interpreter_blocks=(16, 16),
)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = call.q, call.k, call.v
    out, lse = empty_outputs(call)
    if call.q_len == 0:
        return out, lse
    meta = TRITON.meta(q, v)
    bounds = segment_bounds(call.params)
    plan = query_tiles(bounds, call.q_len, call.kv_len, meta["BLOCK_M"], call.is_causal, per_segment=False)
    plan_t = torch.from_numpy(plan).to(q.device)
    j = torch.arange(call.kv_len, device=q.device)
    seg = (j[:, None] >= torch.tensor(bounds, device=q.device)[None, :]).sum(-1).to(torch.int32)
    TRITON.launch(
        "blockrank_fwd_kernel", (cdiv(call.q_len, meta["BLOCK_M"]), call.batch * call.q_heads),
        q, k, v, out, lse, plan_t, seg,
        *strides(q, k, v, out, lse),
        call.q_heads, call.group, call.q_len, call.kv_len, call.head_dim, call.value_dim,
        len(bounds), call.scale, CAUSAL=call.is_causal, **meta,
    )  # fmt: skip
    return out, lse


#: The Triton backend; the kernel takes every stride, so inputs are not copied.
blockrank_attention = triton_backend(_forward, recompute=blockrank_call, contiguous=False)
