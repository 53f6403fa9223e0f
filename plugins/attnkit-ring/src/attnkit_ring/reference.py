"""Reference backend of ``ring``: single-process dense attention, in plain torch.

This is what ring attention over ``W`` processes must equal: attention of the whole sequence
in one process. It is attnkit's dense reference (:func:`attnkit.reference.attention`):
differentiable, float32/float64 math, GQA without copying k/v, and traceable by
``torch.export`` (the causal mask is index arithmetic on ``arange``), so it is also the
backend used while exporting to ONNX.

It is never chosen automatically (``auto=False``): under ``torch.distributed`` each rank
holds only its shard, and attention over a shard alone would be silently wrong. The
``distributed`` backend computes the same thing locally when no process group is running.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``Hq % Hkv == 0``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference import attention


def reference_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` of dense attention over ``call``."""
    return attention(call.q, call.k, call.v, is_causal=call.is_causal, scale=call.scale, return_lse=True)


#: The reference backend (see :func:`attnkit.kernels.kernel` for the calling convention).
ring_attention = kernel(reference_call)
