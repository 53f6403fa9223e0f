"""The ``graph_khop`` mask from tensors: which node each position holds, the ``k``-hop reach
table, and the ``(Tq, Tk)`` "may attend" mask every fast backend builds on.

Everything here is index arithmetic on ``torch.arange`` of the (possibly symbolic) lengths and
on constants of the parameters, so it traces for ONNX with dynamic token axes. The brute-force
oracle in :mod:`attnkit_graph_attention.masks` shares none of it.

Mask semantics are one thing throughout: ``True`` means "may attend" (the paper's code flips
between 1 = allowed edge masks and 0 = allowed additive HF masks, and fills with -6000, which
fp16 / bf16 logits can exceed; here disallowed logits are ``-inf`` inside the attention).
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit_graph_attention.params import GraphKhopParams, num_nodes

__all__ = ["khop_mask", "node_of_positions", "reach_table"]


def reach_table(params: GraphKhopParams, device: Any = None) -> torch.Tensor:
    """``(N + 1, N + 1)`` bool: entry ``[n, m]`` is True when node ``m`` is within ``k`` hops of
    node ``n`` (``(I + A + A^T)^k > 0``); the extra index ``N`` stands for text tokens and
    reaches, and is reached by, everything."""
    n = num_nodes(params)
    adj = torch.eye(n, dtype=torch.float64)
    for u, v in params.edges:
        adj[u, v] = adj[v, u] = 1.0
    reach = torch.eye(n, dtype=torch.float64)
    for _ in range(params.hops):
        reach = ((reach @ adj) > 0).to(torch.float64)  # threshold each step: counts never overflow
    table = torch.ones(n + 1, n + 1, dtype=torch.bool)
    table[:n, :n] = reach > 0
    return table.to(device) if device is not None else table


def node_of_positions(params: GraphKhopParams, length: Any, device: Any = None) -> torch.Tensor:
    """``(length,)`` int64: the node each position holds, ``N`` (``num_nodes``) for text tokens."""
    n = num_nodes(params)
    j = torch.arange(length, device=device)
    if not params.spans:
        return torch.full_like(j, n)
    spans = torch.tensor(params.spans, dtype=torch.int64, device=device)  # (S, 3)
    inside = (j[:, None] >= spans[:, 0]) & (j[:, None] < spans[:, 1])  # (T, S), at most one True per row
    # Spans are disjoint, so the sum picks the one node (shifted by one: 0 = no span).
    picked = (inside.to(torch.int64) * (spans[:, 2] + 1)).sum(-1)
    return torch.where(picked > 0, picked - 1, torch.full_like(picked, n))


def khop_mask(params: GraphKhopParams, q_len: Any, kv_len: Any, is_causal: bool, device: Any = None) -> torch.Tensor:
    """``(Tq, Tk)`` bool "may attend" mask of ``graph_khop``; query ``i`` sits at key position
    ``i + Tk - Tq`` (bottom-right aligned, as attnkit's causal masks)."""
    n = num_nodes(params)
    table = reach_table(params, device)
    node_k = node_of_positions(params, kv_len, device)  # (Tk,)
    node_q = node_k[kv_len - q_len :]  # (Tq,)
    allowed = table[node_q[:, None], node_k[None, :]]
    if is_causal:
        j = torch.arange(kv_len, device=device)
        pos = j[kv_len - q_len :]
        causal = j[None, :] <= pos[:, None]
        if params.bidirectional:
            both_nodes = (node_q < n)[:, None] & (node_k < n)[None, :]
            causal = causal | both_nodes  # allowed node-node pairs look forward too
        allowed = allowed & causal
    return allowed
