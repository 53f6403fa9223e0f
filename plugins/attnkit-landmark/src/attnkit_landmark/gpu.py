"""Triton backend of ``landmark``: a fused forward of the grouped softmax.

The kernel (:mod:`attnkit_landmark._triton_kernels`) takes the queries of one key block per
program and walks the key blocks, folding the own block's regular keys and each gated block's
rewritten logits (``s_u - lse_j + s_{L_j}``) into one online softmax: ``O(T * block_size)``
memory, no ``T x T`` score matrix. Runs on CUDA; on CPU only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before the kernels are decorated, as ``tests/conftest.py`` and
``attnkit check`` do). Loading, interpreter detection, the ``can_run`` reasons, launch sizes and
autograd (gradients recompute the reference) come from :mod:`attnkit.kernels.gpu`.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.gpu import TritonKernels, cdiv, empty_outputs, pow2_at_least, strides, triton_backend
from attnkit_landmark.reference import landmark_call

__all__ = ["TRITON", "landmark_attention"]

TRITON = TritonKernels(
    "attnkit_landmark._triton_kernels",
    "landmark_fwd_kernel",
    install="pip install 'attnkit-landmark[gpu]'",
    interpreter_blocks=(16, 16),
)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = call.q, call.k, call.v
    bs = call.params.block_size
    tk = k.shape[2]
    offset = tk - call.q_len
    out, lse = empty_outputs(call, filled=True)  # queries before the first key keep zeros / -inf
    meta = TRITON.meta(q, v)
    meta["BLOCK_N"] = pow2_at_least(bs)  # one key block per step
    meta["BLOCK_M"] = min(meta["BLOCK_M"], pow2_at_least(bs))
    first = max(0, offset) // bs
    n_blocks = cdiv(tk, bs) - first
    tiles = cdiv(bs, meta["BLOCK_M"])
    if n_blocks <= 0 or call.q_len == 0:
        return out, lse
    TRITON.launch(
        "landmark_fwd_kernel", (n_blocks * tiles, call.batch * call.q_heads),
        q, k, v, out, lse,
        *strides(q, k, v, out, lse),
        call.q_heads, call.group, call.q_len, tk, call.head_dim, call.value_dim, offset, first, bs, tiles,
        call.scale,
        CAUSAL=call.is_causal, **meta,
    )  # fmt: skip
    return out, lse


#: The Triton backend; the kernel takes every stride, so inputs are not copied.
landmark_attention = triton_backend(_forward, recompute=landmark_call, contiguous=False)
