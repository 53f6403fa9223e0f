"""The allowed keys of every query, by brute force: the oracle the contract suite checks
every backend against. Python loops straight from the paper's rule (the official
``flex_blockrank_attention_mask``), sharing no code with the backends: the segments are
re-derived here by walking the layout token by token.

Query ``i`` of ``Tq`` sits at key position ``p = i + Tk - Tq`` (bottom-right alignment). With
``qs`` / ``ks`` the segments of ``p`` and ``j`` (0 instruction, ``1..n`` documents, ``n + 1``
query), query ``p`` may attend key ``j`` when

    ks == qs or ks == 0 or qs == n + 1

(the instruction sees itself, a document sees the instruction and itself, never another
document, the query sees everything), and with ``is_causal`` also ``j <= p``: the paper's mask.
"""

from __future__ import annotations

from typing import Any

import torch


def _segments(params: Any, tk: int) -> tuple[list[int], int]:
    """Segment id of every key position and the query segment's id."""
    if params.documents is not None:
        docs = list(params.documents)
    else:
        docs = [params.document_len] * (params.num_documents or 0)
    seg: list[int] = []
    seg += [0] * params.instruction
    for d, n in enumerate(docs, start=1):
        seg += [d] * n
    query_id = len(docs) + 1
    while len(seg) < tk:
        seg.append(query_id)
    return seg[:tk], query_id


def brute_force_mask(params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: Any) -> torch.Tensor:
    """``(Tq, Tk)`` bool mask, True where the query may attend, for ``q (B, H, Tq, D)``."""
    causal = bool(is_causal[0]) if isinstance(is_causal, tuple) else bool(is_causal)
    tq, tk = q_shape[2], kv_shape[2]
    seg, query_id = _segments(params, tk)
    mask = torch.zeros(tq, tk, dtype=torch.bool)
    for i in range(tq):
        p = i + tk - tq
        for j in range(tk):
            ok = seg[j] == seg[p] or seg[j] == 0 or seg[p] == query_id
            mask[i, j] = ok and (not causal or j <= p)
    return mask
