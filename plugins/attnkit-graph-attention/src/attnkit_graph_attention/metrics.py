"""Attention-to-topology metrics on head-averaged attention patterns (plain torch, float64).

* :func:`column_average` - the paper's ``calculate_column_averages``: per key, the mean attention
  it receives over the rows that may attend to it, found as the non-zero entries (causally
  masked entries are exact zeros). Early keys are seen by more queries, so column averages
  carry a position bias; the hop profiles below therefore compare classes at matched distance
  and over shuffled serialisations.
* :func:`hop_profile` - node-token queries to earlier node-token keys, by hop distance between
  their nodes: mean attention per key token of each class (same node, 1 hop, 2 hops, 3+ or not
  connected), the same for a random earlier token (its exact expectation), and the
  distance-matched 1-hop / non-neighbour ratio.
* :func:`text_to_node_profile` - question-token queries to node tokens, by hop distance from
  the node the question asks about, as column averages over the question rows.

Shape legend: ``L`` layers, ``T`` tokens; ``pattern (L, T, T)`` rows are queries; ``node (T,)``
holds the node id of each position (``-1`` for text), ``span (T,)`` the id of the mention it
belongs to (``-1`` for text), ``hops (N, N)`` int hop distances (``-1``: not connected).
"""

from __future__ import annotations

import torch

__all__ = ["CLASSES", "DISTANCE_BINS", "column_average", "hop_classes", "hop_profile", "text_to_node_profile"]

#: Hop classes of a node pair, in plot order.
CLASSES = ("same node", "1-hop", "2-hop", "3+ / none")
#: Query-key distance bins ``[lo, hi)`` of the distance-matched ratio.
DISTANCE_BINS = ((1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 128), (128, 1 << 30))


def column_average(pattern: torch.Tensor) -> torch.Tensor:
    """``(..., Tq, Tk) -> (..., Tk)``: each column's mean over its non-zero entries (0 for a
    column without any)."""
    p = pattern.to(torch.float64)
    counts = (p != 0).sum(-2)
    return p.sum(-2) / counts.clamp(min=1)


def hop_classes(hops: torch.Tensor) -> torch.Tensor:
    """``(N, N)`` class index (into :data:`CLASSES`) of every node pair from its hop distance."""
    cls = torch.full_like(hops, 3)
    cls[hops == 0] = 0
    cls[hops == 1] = 1
    cls[hops == 2] = 2
    return cls


def _validate(pattern: torch.Tensor, node: torch.Tensor) -> None:
    if pattern.dim() != 3 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must be (L, T, T), got {tuple(pattern.shape)}")
    if node.shape != (pattern.shape[-1],):
        raise ValueError(f"node must be (T,) with T={pattern.shape[-1]}, got {tuple(node.shape)}")


def hop_profile(
    pattern: torch.Tensor, node: torch.Tensor, span: torch.Tensor, hops: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Node -> earlier node attention by hop class, per layer.

    Pairs are (query ``p``, key ``j < p``) of node tokens in different mentions (the sub-word
    tokens of one mention are left out). Returns ``(L,)`` float64 tensors: one per
    :data:`CLASSES` name (mean attention per key token, NaN when the class has no pair),
    ``"random"`` (the expected attention of a uniformly random earlier token, ``(1 -
    A[p, p]) / p``, weighted like the 1-hop pairs), ``"non-neighbour"`` (2+ hops or not
    connected) and ``"distance-matched ratio"`` (1-hop over non-neighbour, each distance bin
    weighted by its 1-hop pairs; NaN without a bin holding both), plus ``"pairs"`` (counts per
    class, ``(4,)``).
    """
    _validate(pattern, node)
    a = pattern.to(torch.float64)
    t = a.shape[-1]
    pos = torch.arange(t)
    is_node = node >= 0
    pair = is_node[:, None] & is_node[None, :] & (pos[None, :] < pos[:, None]) & (span[:, None] != span[None, :])
    cls_nodes = hop_classes(hops)
    safe = node.clamp(min=0)
    cls = torch.where(pair, cls_nodes[safe[:, None], safe[None, :]], torch.full((t, t), -1))
    out: dict[str, torch.Tensor] = {}
    counts = []
    for c, name in enumerate(CLASSES):
        m = cls == c
        counts.append(int(m.sum()))
        out[name] = (a * m).sum((-1, -2)) / m.sum() if m.any() else torch.full((a.shape[0],), float("nan"))
    non = (cls >= 2).to(torch.float64)
    out["non-neighbour"] = (a * non).sum((-1, -2)) / non.sum() if non.any() else torch.full((a.shape[0],), float("nan"))
    nb = (cls == 1).to(torch.float64)
    per_row = nb.sum(-1)  # (T,) 1-hop pairs of each query row
    diag = torch.diagonal(a, dim1=-2, dim2=-1)  # (L, T)
    expect = (1.0 - diag) / pos.clamp(min=1)  # a random key among the p earlier tokens
    out["random"] = (
        (expect * per_row).sum(-1) / per_row.sum() if per_row.sum() > 0 else torch.full((a.shape[0],), float("nan"))
    )
    dist = pos[:, None] - pos[None, :]
    num = torch.zeros(a.shape[0], dtype=torch.float64)
    den = torch.zeros(a.shape[0], dtype=torch.float64)
    for lo, hi in DISTANCE_BINS:
        in_bin = ((dist >= lo) & (dist < hi)).to(torch.float64)
        nb_b, non_b = nb * in_bin, non * in_bin
        if nb_b.sum() == 0 or non_b.sum() == 0:
            continue
        w = nb_b.sum()
        num += w * (a * nb_b).sum((-1, -2)) / nb_b.sum()
        den += w * (a * non_b).sum((-1, -2)) / non_b.sum()
    out["distance-matched ratio"] = num / den if bool((den > 0).all()) else torch.full_like(num, float("nan"))
    out["pairs"] = torch.tensor(counts)
    return out


def text_to_node_profile(
    pattern: torch.Tensor, node: torch.Tensor, rows: slice, hops_from_target: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Question -> node attention by hop distance from the question's node, per layer.

    For every node-token key, its column average over the query ``rows`` (the question's
    tokens, all after the graph, so every row may attend to it); then the mean over the node
    tokens of each :data:`CLASSES` class (class 0 is the asked node itself). ``(L,)`` float64
    per class, NaN for a class without tokens.
    """
    _validate(pattern, node)
    col = column_average(pattern[:, rows, :])  # (L, T)
    is_node = node >= 0
    cls = torch.where(is_node, hop_classes(hops_from_target)[node.clamp(min=0)], torch.full_like(node, -1))
    out = {}
    for c, name in enumerate(CLASSES):
        m = cls == c
        out[name] = col[:, m].mean(-1) if m.any() else torch.full((pattern.shape[0],), float("nan"))
    return out
