"""ONNX-exportable ``blockrank``: the mask from index arithmetic on the symbolic length.

``torch.onnx.export(..., dynamo=True)`` traces this with symbolic batch and token sizes, so
nothing here branches on a size: a key's segment is the number of segment starts at or
before it (``(arange(Tk)[:, None] >= bounds).sum(-1)``, the bounds are constants of the
layout) and the attention is dense under the resulting mask
(:func:`attnkit.kernels.onnx.masked_attention`, ``O(T^2)``: the graph is for portability,
the numba / Triton kernels are the fast paths). With ``query=None`` the query segment is
"every key after the last document", so the graph runs at any length at or above
``instruction + sum(documents)``; a layout with a fixed ``query`` length fits one length
only, and :func:`can_run` refuses to export it (see the README).

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import masked_attention
from attnkit_blockrank.params import BlockrankParams, segment_bounds

__all__ = ["blockrank_attention", "blockrank_mask", "can_run"]


def can_run(call: Any) -> str | None:
    """Refuse to export a layout whose fixed ``query`` length pins the sequence length."""
    params = call.params
    if call.exporting and params is not None and params.query is not None:
        return (
            f"query={params.query} fixes the sequence length at {params.fixed_length} tokens, so the exported graph "
            "could not take a dynamic length; export with query=None (the query takes every key after the documents)"
        )
    return None


def blockrank_mask(params: BlockrankParams, q_len: Any, kv_len: Any, causal: bool, device: Any) -> torch.Tensor:
    """``(Tq, Tk)`` bool, True where the query may attend; traceable ops only."""
    bounds = torch.tensor(segment_bounds(params), dtype=torch.int64, device=device)
    j = torch.arange(kv_len, device=device)
    seg_k = (j[:, None] >= bounds[None, :]).sum(-1)  # (Tk,)
    seg_q = seg_k[kv_len - q_len :]  # queries are the last Tq keys
    query_id = bounds.shape[0]
    ok = (seg_k[None, :] == seg_q[:, None]) | (seg_k == 0)[None, :] | (seg_q == query_id)[:, None]
    if causal:
        pos = j[kv_len - q_len :]
        ok = ok & (j[None, :] <= pos[:, None])
    return ok


@kernel
def blockrank_attention(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockRank as dense attention under an index-arithmetic mask (export-friendly).

    :returns: ``out (B, Hq, Tq, Dv)`` in ``q.dtype`` (and ``lse (B, Hq, Tq)``).
    """
    mask = blockrank_mask(call.params, call.q_len, call.kv_len, call.is_causal, call.device)
    return masked_attention(call, mask)
