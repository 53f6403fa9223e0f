"""Triton backend of SF-Attn: fused blockwise forward (no backward).

Runs on CUDA. On CPU it runs only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before the kernels are decorated), which the tests use with tiny float32 shapes. Declared
``differentiable=False``: gradients go through the numba or reference backends. Loading,
interpreter detection, ``can_run`` reasons and launch sizes are :mod:`attnkit.kernels.gpu`'s.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.gpu import TritonKernels, empty_outputs, strides, triton_backend
from attnkit_sinklora.cpu import _tiles
from attnkit_sinklora.params import group_size, shift_of_head

__all__ = ["TRITON", "sf_attention"]

TRITON = TritonKernels(
    "attnkit_sinklora._triton_kernels",
    "sf_fwd_kernel",
    install="pip install 'attnkit-sinklora[gpu]'",
    interpreter_blocks=(32, 32),
)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, T, Dv)`` in ``q.dtype`` and ``lse (B, Hq, T)`` float32."""
    q, k, v = call.q, call.k, call.v
    b, hq, t, d = q.shape
    g = group_size(call.params, t)
    meta = TRITON.meta(q, v)
    shifts = tuple(shift_of_head(call.params, h, hq, g) for h in range(hq))
    # Query tiles of BLOCK_M rows inside each group, per shift class of heads.
    tiles = [torch.from_numpy(a).to(q.device) for a in _tiles(t, g, shifts, meta["BLOCK_M"])]
    class_off = tiles[1]
    max_tiles = int((class_off[1:] - class_off[:-1]).max())
    out, lse = empty_outputs(call)
    TRITON.launch(
        "sf_fwd_kernel", (max_tiles, b * hq),
        q, k, v, out, lse, *tiles,
        *strides(q, k, v, out, lse),
        hq, call.group, t, d, call.value_dim, int(call.params.n_sink), call.scale,
        CAUSAL=call.is_causal, **meta,
    )  # fmt: skip
    return out, lse


#: The Triton backend (forward only): ``q (B, Hq, T, D)``, ``k/v (B, Hkv, T, D|Dv)`` ->
#: ``out (B, Hq, T, Dv)`` (and ``lse (B, Hq, T)`` float32). The kernel takes every stride.
sf_attention = triton_backend(_forward, contiguous=False)
