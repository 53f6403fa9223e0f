"""Triton backend of ``longheads``: a fused forward over each query's chosen chunks.

The selection is :func:`attnkit_longheads.selection.select` (torch, on the inputs' device);
the kernel (:mod:`attnkit_longheads._triton_kernels`) takes one query row per program and
walks its chosen chunks' contiguous keys, rotating the query once per chunk for
``rope_theta``. Runs on CUDA; on CPU only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before the kernels are decorated, as ``tests/conftest.py`` and
``attnkit check`` do). Loading, interpreter detection, the ``can_run`` reasons, launch sizes
and autograd (gradients recompute the reference; the method is training-free) come from
:mod:`attnkit.kernels.gpu`; attnkit's non-finite rule is folded into the inputs after the
selection (:func:`_guard_non_finite`, the torch form of
:func:`attnkit.kernels.cpu.guard_non_finite`, which reads numpy views), as the numba backend does.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.gpu import TritonKernels, empty_outputs, pow2_at_least, strides, triton_backend
from attnkit_longheads.reference import longheads_call
from attnkit_longheads.rope import inv_freq
from attnkit_longheads.selection import select

__all__ = ["TRITON", "longheads_attention"]

TRITON = TritonKernels(
    "attnkit_longheads._triton_kernels",
    "chunk_rows_fwd_kernel",
    install="pip install 'attnkit-longheads[gpu]'",
)

#: Keys per inner step (a chunk is walked in steps of at most this many keys).
BLOCK_N = 64


def _guard_non_finite(call: KernelCall) -> KernelCall:
    """Keys whose k or v row is not finite get a NaN k row and a zero v row, non-finite query
    rows become NaN (then a NaN logit of an attended key gives exactly the rule's NaN rows);
    the call itself when every input is finite."""
    from attnkit.tensors import non_finite_rows

    bad_q = non_finite_rows(call.q)
    bad_kv = non_finite_rows(call.k) | non_finite_rows(call.v)
    if not bool(bad_q.any() | bad_kv.any()):
        return call
    return call.replace(
        q=call.q.masked_fill(bad_q.unsqueeze(-1), float("nan")),
        k=call.k.masked_fill(bad_kv.unsqueeze(-1), float("nan")),
        v=call.v.masked_fill(bad_kv.unsqueeze(-1), 0.0),
    )


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    p = call.params
    sel = select(call.q, call.k, call.v, p, call.is_causal, call.scale)
    call = _guard_non_finite(call)
    q, k, v = call.q, call.k, call.v
    rope = p.rope_theta is not None
    half = (call.head_dim + 1) // 2
    freq = (
        inv_freq(call.head_dim, p.rope_theta, q.device)
        if rope
        else torch.zeros(1, dtype=torch.float64, device=q.device)
    )
    ids = sel.ids.contiguous()
    n_valid = sel.n_valid().contiguous()
    shift = sel.shift.contiguous()
    out, lse = empty_outputs(call)
    TRITON.launch(
        "chunk_rows_fwd_kernel", (call.q_len, call.batch * call.q_heads),
        q, k, v, ids, n_valid, shift, freq, out, lse,
        *strides(q, k, v, ids, n_valid, out, lse),
        call.q_heads, call.group, call.kv_len, call.head_dim, call.value_dim, half, p.chunk_size, int(sel.offset),
        call.scale,
        CAUSAL=call.is_causal, ROPE=rope, BLOCK_N=min(BLOCK_N, pow2_at_least(p.chunk_size, floor=1)),
        BLOCK_H=pow2_at_least(half, floor=1), BLOCK_DV=pow2_at_least(call.value_dim, floor=1),
        num_warps=TRITON.blocks(q.device)[2],
    )  # fmt: skip
    return out, lse


#: The Triton backend; the kernel takes every stride, so inputs are not copied.
longheads_attention = triton_backend(_forward, recompute=longheads_call, contiguous=False)
