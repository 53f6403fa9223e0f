"""ONNX-exportable DHSA: the selection in traceable torch, then each query over its own keys.

``torch.onnx.export(..., dynamo=True)`` traces :func:`attnkit_dhsa.selection.select` with
symbolic sizes (padding, reshapes, a stable sort, cumulative sums, scatters and gathers: no
branch on a value), then :func:`attnkit.kernels.onnx.gathered_attention` attends each query
over its ``K`` kept keys (one ``Gather`` per k / v), so the graph is ``O(T K)`` in the
attention and ``O(T^2 / b)`` in the selection.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import gathered_attention
from attnkit_dhsa.selection import select

__all__ = ["dhsa_attention", "dhsa_gathered"]


def dhsa_gathered(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype."""
    index, valid = select(call.q, call.k, call.params, call.is_causal).per_query(call.q_len)
    shape = (call.batch, call.kv_heads, call.q_len, index.shape[-1])
    return gathered_attention(call, index.expand(shape), valid.expand(shape))


#: The ONNX backend (also a correct, ``O(T K)``-memory torch backend when named).
dhsa_attention = kernel(dhsa_gathered)
