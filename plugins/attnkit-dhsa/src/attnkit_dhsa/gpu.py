"""Triton backend of ``dhsa``: a fused forward over each query block's kept keys.

The selection is :func:`attnkit_dhsa.selection.select` (torch); the kernel
(:mod:`attnkit_dhsa._triton_kernels`) reads its index tensor. Runs on CUDA; on CPU only
under the Triton interpreter (``TRITON_INTERPRET=1`` set before the kernels are decorated, as
``tests/conftest.py`` and ``attnkit check`` do). Loading, interpreter detection, the
``can_run`` reasons, launch sizes and autograd (gradients recompute the reference) come from
:mod:`attnkit.kernels.gpu`.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.gpu import TritonKernels, cdiv, empty_outputs, strides, triton_backend
from attnkit_dhsa.reference import dhsa_call
from attnkit_dhsa.selection import select

__all__ = ["TRITON", "dhsa_attention"]

TRITON = TritonKernels(
    "attnkit_dhsa._triton_kernels",
    "gathered_fwd_kernel",
    install="pip install 'attnkit-dhsa[gpu]'",
    interpreter_blocks=(16, 16),
)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = call.q, call.k, call.v
    sel = select(q, k, call.params, call.is_causal)
    index, valid = sel.index.contiguous(), sel.valid.to(torch.int8).contiguous()
    out, lse = empty_outputs(call, filled=True)
    meta = TRITON.meta(q, v)
    tiles = cdiv(sel.block_size, meta["BLOCK_M"])
    TRITON.launch(
        "gathered_fwd_kernel", (index.shape[2] * tiles, call.batch * call.q_heads),
        q, k, v, index, valid, out, lse,
        *strides(q, k, v, index, out, lse),
        call.q_heads, call.group, call.q_len, call.head_dim, call.value_dim, index.shape[3],
        int(sel.offset), int(sel.first_block), sel.block_size, tiles, int(index.shape[1] == 1), call.scale,
        CAUSAL=call.is_causal, **meta,
    )  # fmt: skip
    return out, lse


#: The Triton backend; the kernel takes every stride, so inputs are not copied.
dhsa_attention = triton_backend(_forward, recompute=dhsa_call, contiguous=False)
