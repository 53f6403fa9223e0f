"""A brute-force DHSA selection, in Python loops from the paper's definition (sharing no code
with :mod:`attnkit_dhsa.selection`): the spec's ``input_mask``, so the contract suite holds every
backend to dense attention under it, and the oracle of the plugin's tests. Tiny sizes only.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def brute_force_mask(p: Any, q: torch.Tensor, k: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """bool ``(B, Hq, Tq, Tk)``: the keys each query attends to, straight from the definition.

    ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``; a non-finite q or k row counts as zeros in
    the scores (the selection's rule; attnkit's non-finite rule then applies to the keys kept).
    """
    q = q.masked_fill(~torch.isfinite(q).all(dim=-1, keepdim=True), 0.0)
    k = k.masked_fill(~torch.isfinite(k).all(dim=-1, keepdim=True), 0.0)
    b_n, hq, tq, _ = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    q, k = q.double(), k.double()
    if p.share_heads:
        groups = [(list(range(hq)), list(range(hkv)))]
    else:
        groups = [(list(range(h * g, (h + 1) * g)), [h]) for h in range(hkv)]
    off = tk - tq
    bs, cs = p.block_size, p.chunk_size
    mask = torch.zeros(b_n, hq, tq, tk, dtype=torch.bool)
    for b in range(b_n):
        for q_heads, kv_heads in groups:
            chunk_rep = {}
            for c0 in range(0, tk, cs):
                members = range(c0, min(c0 + cs, tk))
                total = sum(k[b, h, j] for h in kv_heads for j in members)
                chunk_rep[c0 // cs] = total / (len(kv_heads) * len(members)) * math.sqrt(len(members))
            for i in range(tq):
                pos = i + off
                blk = pos // bs
                start, end = blk * bs, min(blk * bs + bs, tk) - 1
                block_queries = [qi for qi in range(tq) if (qi + off) // bs == blk]
                total = sum(q[b, h, qi] for h in q_heads for qi in block_queries)
                q_bar = total / (len(q_heads) * len(block_queries)) * math.sqrt(len(block_queries))
                allowed = [j for j in range(tk) if not is_causal or j <= end]
                hi = end if is_causal else end + p.local_tokens
                kept = {j for j in allowed if j < p.sink_tokens or start - p.local_tokens <= j <= hi}
                others = [j for j in allowed if j not in kept]
                score = {j: float(q_bar @ chunk_rep[j // cs]) for j in others}
                others.sort(key=lambda j: (-score[j], j))
                for j in kept | set(others[: p.top_k]):
                    if not is_causal or j <= pos:
                        for h in q_heads:
                            mask[b, h, i, j] = True
    return mask
