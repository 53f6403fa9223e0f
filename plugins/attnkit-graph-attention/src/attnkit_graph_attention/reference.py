"""Reference backend of ``graph_khop``: dense attention under the k-hop mask, in plain torch.

Differentiable and float64-capable (attnkit's :func:`attnkit.reference.attention`: float32
math, float64 for float64 inputs; rows with nothing to attend to give zeros and ``lse = -inf``).
It also takes a caller's boolean mask (padding from transformers), ANDed with the k-hop mask.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``Hq % Hkv == 0``; queries sit at
key positions ``Tk - Tq .. Tk - 1``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference import attention
from attnkit_graph_attention.graph import khop_mask

__all__ = ["graph_khop_attention", "graph_khop_call"]


def graph_khop_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype."""
    allowed = khop_mask(call.params, call.q_len, call.kv_len, call.causal[0], device=call.device)[None, None]
    if call.mask is not None:
        allowed = allowed & call.mask
    return attention(call.q, call.k, call.v, mask=allowed, scale=call.scale, return_lse=True)


#: The reference backend (see :func:`attnkit.kernels.kernel` for the calling convention).
graph_khop_attention = kernel(graph_khop_call)
