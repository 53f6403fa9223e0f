"""MoH routers: per-token head gates from the hidden states (learned) or the queries (query-norm).

Both return ``Routing``: ``gates (N, H)`` (zero for routed heads a token did not pick),
``selected (N, E)`` bool over the routed pool and ``probs (N, E)``, the router's softmax,
which the load-balance loss needs. ``N`` is ``B * T`` tokens, ``E = H - h_s``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = ["Routing", "learned_routing", "load_balance_loss", "query_norm_routing"]


class Routing(NamedTuple):
    gates: torch.Tensor
    selected: torch.Tensor
    probs: torch.Tensor | None


def _top_k_mask(probs: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, E)`` float mask with ones at each row's ``k`` largest entries."""
    idx = probs.topk(k, dim=-1).indices
    # scatter (not one_hot().sum()): exports to ONNX ScatterElements with symbolic N.
    return torch.zeros_like(probs).scatter(-1, idx, 1.0)


def learned_routing(
    x: torch.Tensor,
    routed_weight: torch.Tensor | None,
    shared_weight: torch.Tensor | None,
    stage_weight: torch.Tensor | None,
    shared: int,
    top_k: int,
) -> Routing:
    """Two-stage routing of MoH-DiT/MoH-ViT for tokens ``x (N, C)``.

    Routed: ``p = softmax(W_r x)``, top-k, renormalised over the picked heads and scaled by
    ``k``; shared: ``softmax(W_s x) · h_s`` (all ones when ``h_s == 1``: no ``W_s``); the two
    groups weighted by ``softmax(W_h x) · 2``. The scalings keep the mean gate near 1, which
    is what lets a module converted from MHA start where MHA was.
    """
    n = x.shape[0]
    if shared > 1:
        assert shared_weight is not None
        g_s = F.softmax(F.linear(x, shared_weight), dim=-1) * shared
    else:
        g_s = x.new_ones(n, shared)
    if top_k == 0:
        return Routing(g_s, x.new_zeros(n, 0, dtype=torch.bool), None)
    assert routed_weight is not None
    probs = F.softmax(F.linear(x, routed_weight), dim=-1)  # (N, E)
    mask = _top_k_mask(probs, top_k)
    picked = probs * mask
    denom = picked.sum(-1, keepdim=True).clamp_min(torch.finfo(picked.dtype).eps)
    g_r = picked / denom * top_k
    if shared > 0:
        assert stage_weight is not None
        alpha = F.softmax(F.linear(x, stage_weight), dim=-1) * 2  # (N, 2)
        gates = torch.cat([alpha[:, :1] * g_s, alpha[:, 1:] * g_r], dim=-1)
    else:
        gates = g_r
    return Routing(gates, mask > 0, probs)


def query_norm_routing(q_routed: torch.Tensor, shared: int, top_k: int) -> Routing:
    """The parameter-free router of MoH-LLaMA3 for routed queries ``q_routed (N, E, D)``.

    Logits are the L2 norms of each routed head's query, divided by their (unbiased) std over
    the routed heads; softmax; top-k; gates are binary (shared heads 1).
    """
    n = q_routed.shape[0]
    ones = q_routed.new_ones(n, shared)
    if top_k == 0:
        return Routing(ones, q_routed.new_zeros(n, 0, dtype=torch.bool), None)
    norms = torch.linalg.vector_norm(q_routed, dim=-1)  # (N, E)
    std = norms.std(dim=-1, keepdim=True).clamp_min(torch.finfo(norms.dtype).tiny)
    probs = F.softmax(norms / std, dim=-1)
    mask = _top_k_mask(probs, top_k)
    return Routing(torch.cat([ones, mask], dim=-1), mask > 0, probs)


def load_balance_loss(probs: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """``l_aux = E · Σ_i me_i ce_i`` with ``me`` the mean router probability of routed head
    ``i`` and ``ce`` the share of tokens that picked it; ``K`` at perfect balance.

    :param probs: ``(N, E)`` router softmax.
    :param selected: ``(N, E)`` bool, ``K`` true per row.
    """
    e = probs.shape[-1]
    me = probs.mean(dim=0)
    ce = selected.to(probs.dtype).mean(dim=0)
    return (me * ce).sum() * e
