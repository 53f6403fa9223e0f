"""The allowed keys of every query of ``graph_khop``, by brute force: the oracle the contract
suite checks every backend against. Plain Python straight from the definition, sharing no code
with :mod:`attnkit_graph_attention.graph`: hop distances by breadth-first search, the node of a
position by walking the spans.

Query ``i`` of ``Tq`` sits at key position ``p = i + Tk - Tq``. With ``u`` / ``v`` the nodes at
``p`` / ``j`` (``None`` for a text token), query ``p`` may attend key ``j`` when

    (u is None or v is None or hops(u, v) <= k)  and  (not causal or j <= p or (bidi and u, v are nodes))
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

__all__ = ["brute_force_mask", "hop_distances"]


def hop_distances(edges: Any, n: int) -> list[list[int | None]]:
    """``n x n`` undirected hop distances by BFS (``None``: not connected)."""
    nbrs: list[set[int]] = [set() for _ in range(n)]
    for u, v in edges:
        nbrs[u].add(v)
        nbrs[v].add(u)
    out: list[list[int | None]] = []
    for s in range(n):
        dist: list[int | None] = [None] * n
        dist[s] = 0
        todo = deque([s])
        while todo:
            x = todo.popleft()
            for y in nbrs[x]:
                if dist[y] is None:
                    dist[y] = dist[x] + 1  # type: ignore[operator]
                    todo.append(y)
        out.append(dist)
    return out


def brute_force_mask(params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: Any) -> torch.Tensor:
    """``(Tq, Tk)`` bool mask, True where the query may attend, for ``q (B, H, Tq, D)``."""
    causal = bool(is_causal[0]) if isinstance(is_causal, tuple) else bool(is_causal)
    tq, tk = q_shape[2], kv_shape[2]
    node: list[int | None] = [None] * tk
    for start, end, n in params.spans:
        for pos in range(start, min(end, tk)):
            node[pos] = n
    ids = [n for _, _, n in params.spans] + [x for e in params.edges for x in e]
    dist = hop_distances(params.edges, max(ids) + 1 if ids else 0)
    rows = []
    for i in range(tq):
        p = i + tk - tq
        u = node[p]
        row = []
        for j in range(tk):
            v = node[j]
            both = u is not None and v is not None
            d = dist[u][v] if both else 0  # type: ignore[index]
            near = not both or (d is not None and d <= params.hops)
            order = not causal or j <= p or (both and params.bidirectional)
            row.append(near and order)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool).reshape(tq, tk)
