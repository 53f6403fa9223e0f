"""How many query heads each KV head gets, and which KV head each query head reads.

Everything here is tensor code with a fixed number of steps (the fix-up loop runs ``G``
times whatever the data), so it traces under ``torch.export`` and runs the same in eager
mode and in onnxruntime. The rules follow the official code (arXiv:2408.08454):

* ``round`` is round-half-to-even (``torch.round``, ONNX ``Round``, Python ``round``).
* Fix-up: while the counts sum to more than ``H``, take one from the largest count; while
  less, give one to the smallest. Ties go to the lowest KV-head index (``argmax`` /
  ``argmin`` return the first extremum). KDGQA's official fix-up already does this; DGQA's
  official fix-up picks a *random* index, which is replaced by this deterministic rule.
* Query heads stay contiguous: KV head ``j`` serves query heads
  ``[sum(a[:j]), sum(a[:j+1]))``; a KV head with a count of 0 serves none.
"""

from __future__ import annotations

import torch

__all__ = [
    "fix_up",
    "head_index",
    "kdgqa_allocation",
    "key_norms",
    "ratio_allocation",
    "round_allocation",
]


def key_norms(k: torch.Tensor) -> torch.Tensor:
    """Frobenius norm over ``(T, D)`` of each KV head: ``k (B, G, T, D) -> (B, G)`` float64.

    float64 so that the rounding of ``weights * H`` does not depend on the input precision
    at the last bit more than it must.
    """
    k = k.detach().to(torch.float64)
    return (k * k).sum(dim=(2, 3)).sqrt()


def fix_up(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Make every row of ``counts (..., G)`` (int64, >= 0) sum to ``total``.

    Rounding ``G`` weights that sum to 1, times ``total``, is off by at most ``G / 2``, so
    ``G`` unconditional, masked steps of each loop are enough; no data-dependent loop.
    """
    g = counts.shape[-1]
    lanes = torch.arange(g, device=counts.device)
    for _ in range(g):
        over = (counts.sum(-1, keepdim=True) > total).to(counts.dtype)
        top = (lanes == counts.argmax(-1, keepdim=True)).to(counts.dtype)
        counts = counts - over * top
    for _ in range(g):
        under = (counts.sum(-1, keepdim=True) < total).to(counts.dtype)
        low = (lanes == counts.argmin(-1, keepdim=True)).to(counts.dtype)
        counts = counts + under * low
    return counts


def round_allocation(weights: torch.Tensor, heads: int, min_queries: int = 0) -> torch.Tensor:
    """``min_queries + fix_up(round(w / sum(w) * R))`` with ``R = heads - G * min_queries``.

    :param weights: ``(..., G)`` non-negative; a row summing to 0 counts as uniform.
    :returns: ``(..., G)`` int64 counts summing to ``heads``.
    """
    g = weights.shape[-1]
    rest = heads - g * min_queries
    weights = weights.to(torch.float64)
    total = weights.sum(-1, keepdim=True)
    # A zero total (all weights 0: equal norms after min-max, or "diff" with no change) has
    # no preferred head; uniform is the only choice that treats them alike.
    uniform = torch.full_like(weights, 1.0 / g)
    share = torch.where(total > 0, weights / torch.where(total > 0, total, torch.ones_like(total)), uniform)
    counts = torch.round(share * rest).to(torch.int64)
    return fix_up(counts, rest) + min_queries


def kdgqa_allocation(norms: torch.Tensor, heads: int, min_queries: int = 0) -> torch.Tensor:
    """KDGQA: min-max normalise the key norms, then :func:`round_allocation`.

    :param norms: ``(..., G)`` key norms (one row per sample, or one summed over the batch).
    :returns: ``(..., G)`` int64 counts summing to ``heads``. Equal norms (max == min, a
        division by zero in the official code) give the uniform (static GQA) allocation.
    """
    lo = norms.amin(-1, keepdim=True)
    hi = norms.amax(-1, keepdim=True)
    span = hi - lo
    scaled = torch.where(span > 0, (norms - lo) / torch.where(span > 0, span, torch.ones_like(span)), 0.0)
    return round_allocation(scaled, heads, min_queries)


def ratio_allocation(weights: torch.Tensor, heads: int, min_queries: int = 0) -> torch.Tensor:
    """DGQA: weights used as they are (no min-max), then :func:`round_allocation`."""
    return round_allocation(weights, heads, min_queries)


def head_index(counts: torch.Tensor, heads: int) -> torch.Tensor:
    """KV head read by each query head: ``counts (..., G) -> (..., heads)`` int64.

    Query head ``h`` belongs to the group whose contiguous range holds it, i.e. the number
    of group ends ``cumsum(counts)`` that are ``<= h``. Zero-count groups own no range.
    """
    ends = counts.cumsum(-1)
    h = torch.arange(heads, device=counts.device)
    return (ends.unsqueeze(-2) <= h.unsqueeze(-1)).sum(-1).to(torch.int64)
