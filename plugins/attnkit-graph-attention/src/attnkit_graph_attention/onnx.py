"""ONNX-exportable ``graph_khop``: the k-hop mask from index arithmetic on the symbolic length.

``torch.onnx.export(..., dynamo=True)`` traces this with symbolic batch and token sizes: a
position's node is found by comparing ``arange(Tk)`` with the spans (constants of the
parameters), the reach table ``(I + A + A^T)^k > 0`` is a constant, and the attention is dense
under the resulting mask (:func:`attnkit.kernels.onnx.masked_attention`, ``O(T^2)``: the graph
is for portability). Spans past the sequence are clipped, so one graph runs at any length.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import masked_attention
from attnkit_graph_attention.graph import khop_mask

__all__ = ["graph_khop_attention"]


@kernel
def graph_khop_attention(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``graph_khop`` as dense attention under a traceable mask.

    :returns: ``out (B, Hq, Tq, Dv)`` in ``q.dtype`` (and ``lse (B, Hq, Tq)``).
    """
    return masked_attention(call, khop_mask(call.params, call.q_len, call.kv_len, call.causal[0], call.device))
