"""ONNX-exportable LongHeads: the selection in traceable torch, then each query over its own keys.

``torch.onnx.export(..., dynamo=True)`` traces :func:`attnkit_longheads.selection.select`
with symbolic sizes (padding, reshapes, a stable sort that becomes ``TopK``, scatters and
gathers: no branch on a value), then :func:`attnkit.kernels.onnx.gathered_attention` attends
each query over the ``chunks * chunk_size`` keys of its chunks. The kit's gathered attention
takes one index per KV head, and LongHeads selects per query head, so k / v are expanded to
the query heads here (a copy, ``G`` times k / v). ``rope_theta`` (per-slot query rotation) is
not expressed here: the backend refuses it.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import gathered_attention
from attnkit_longheads.selection import select

__all__ = ["longheads_attention", "longheads_gathered"]


def longheads_gathered(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype."""
    if call.params.rope_theta is not None:
        raise NotImplementedError("longheads onnx backend: rope_theta (compact re-rotation) is not exportable yet")
    sel = select(call.q, call.k, call.v, call.params, call.is_causal, call.scale)
    index, valid = sel.key_index(call.kv_len, call.is_causal)
    g = call.group
    if g != 1:
        call = call.replace(k=call.k.repeat_interleave(g, dim=1), v=call.v.repeat_interleave(g, dim=1))
    return gathered_attention(call, index, valid)


#: The ONNX backend (also a correct, ``O(T K)``-memory torch backend when named).
longheads_attention = kernel(longheads_gathered)
