"""Sentence-level attention and receiver heads (the paper's white-box attention analysis).

Shape legend: ``L`` layers, ``H`` query heads (GQA expanded), ``T`` tokens, ``n`` sentences.

1. :func:`sentence_matrix`: ``M[i, j] = mean(A[start_i:end_i, start_j:end_j])``, the plain
   mean over the token block, as the paper does (so a diagonal block also averages the
   causally-zero entries above its diagonal: self-attention is biased low; the vertical score
   never reads the diagonal band). Spans are half-open and used as given: the last token of
   the last sentence is not clipped away, and an empty span is refused rather than turned
   into a 0 entry.
2. :func:`vertical_scores`: ``v_j = mean_{i >= j + P} M[i, j]``, the attention sentence ``j``
   receives from sentences at least ``P`` later; NaN where no such ``i`` exists.
3. :func:`kurtosis`: Fisher (excess) kurtosis of each head's vertical scores, population
   moments, NaN entries left out; NaN for zero variance or fewer than two values.
4. :func:`receiver_heads` / :func:`receiver_scores`: top-k heads by (mean) kurtosis, and the
   mean vertical score of each sentence over those heads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_spans",
    "kurtosis",
    "receiver_heads",
    "receiver_scores",
    "sentence_matrix",
    "span_averager",
    "vertical_scores",
]


def check_spans(spans: Sequence[tuple[int, int]], length: int, name: str = "spans") -> list[tuple[int, int]]:
    """Validated ``[(start, end), ...]`` within ``[0, length]``.

    :raises TypeError / ValueError: naming ``name``, the bad span and ``length``.
    """
    out = []
    if len(spans) == 0:
        raise ValueError(f"{name} must hold at least one (start, end) span, got none")
    for span in spans:
        if not isinstance(span, (tuple, list)) or len(span) != 2:
            raise TypeError(f"{name} entries must be (start, end) pairs, got {span!r}")
        s, e = int(span[0]), int(span[1])
        if not 0 <= s < e <= length:
            raise ValueError(f"{name}: span ({s}, {e}) must satisfy 0 <= start < end <= {length} (sequence length)")
        out.append((s, e))
    return out


def span_averager(spans: Sequence[tuple[int, int]], length: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``R (n, T)`` with ``R[i, t] = 1 / len_i`` for ``t`` in span ``i``: ``R @ A @ R.T`` is the
    block mean of ``A``."""
    spans = check_spans(spans, length)
    r = torch.zeros(len(spans), length, dtype=dtype)
    for i, (s, e) in enumerate(spans):
        r[i, s:e] = 1.0 / (e - s)
    return r


def sentence_matrix(pattern: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Sentence x sentence attention of ``pattern (..., Tq, Tk)`` (square, ``Tq == Tk``).

    :param pattern: attention probabilities, e.g. ``(L, H, T, T)``.
    :param spans: token spans ``[(start, end), ...]`` of the sentences (end exclusive).
    :returns: ``(..., n, n)`` float64 block means (row = attending sentence).
    :raises ValueError: for a non-square pattern or a span outside it.
    """
    if pattern.dim() < 2 or pattern.shape[-1] != pattern.shape[-2]:
        raise ValueError(f"pattern must be (..., T, T) with square last two axes, got {tuple(pattern.shape)}")
    r = span_averager(spans, pattern.shape[-1]).to(pattern.device)
    return r @ pattern.to(torch.float64) @ r.T


def _row_ranks(m: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each row's valid entries replaced by rank / #valid (the row's largest entry becomes 1,
    its smallest 1 / #valid), invalid entries NaN. Ties get ordinal ranks."""
    filled = torch.where(valid, m, torch.full_like(m, float("-inf")))
    order = filled.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(m)
    n = m.shape[-1]
    base = torch.arange(n, dtype=m.dtype, device=m.device).expand_as(m)
    ranks.scatter_(-1, order, base)
    n_valid = valid.sum(-1, keepdim=True).to(m.dtype)
    # invalid entries took the lowest ranks: shift so valid ranks run 1..n_valid
    ranks = ranks - (n - n_valid) + 1
    return torch.where(valid, ranks / n_valid.clamp_min(1), torch.full_like(m, float("nan")))


def vertical_scores(m: torch.Tensor, proximity_ignore: int = 4, control_depth: bool = False) -> torch.Tensor:
    """Vertical attention score of every sentence.

    :param m: sentence matrices ``(..., n, n)`` (row = attending sentence ``i``).
    :param proximity_ignore: ``P >= 1``; only entries with ``j <= i - P`` count.
    :param control_depth: rank-normalise each row's counted entries first (a late sentence
        attends over more sentences, so its raw attention per sentence is smaller).
    :returns: ``(..., n)`` float64: ``v_j = mean_{i >= j + P} M[i, j]``; NaN for
        ``j > n - 1 - P``.
    """
    if m.dim() < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"m must be (..., n, n), got {tuple(m.shape)}")
    if isinstance(proximity_ignore, bool) or not isinstance(proximity_ignore, int) or proximity_ignore < 1:
        raise ValueError(f"proximity_ignore must be an int >= 1, got {proximity_ignore!r}")
    n = m.shape[-1]
    m = m.to(torch.float64)
    i = torch.arange(n, device=m.device)[:, None]
    j = torch.arange(n, device=m.device)[None, :]
    valid = (j <= i - proximity_ignore).expand_as(m)
    if control_depth:
        m = _row_ranks(m, valid)
    vals = torch.where(valid, m, torch.zeros_like(m)).sum(-2)
    count = valid.sum(-2).to(torch.float64)
    return torch.where(count > 0, vals / count.clamp_min(1), torch.full_like(vals, float("nan")))


def kurtosis(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Fisher kurtosis ``m4 / m2**2 - 3`` (population moments, i.e. ``scipy.stats.kurtosis(...,
    fisher=True, bias=True, nan_policy="omit")``) along ``dim``, NaN entries left out.

    :returns: float64 with ``dim`` removed; NaN where fewer than two values remain or their
        variance is zero (a constant score vector has no tail to measure).
    """
    x = x.to(torch.float64)
    ok = torch.isfinite(x)
    cnt = ok.sum(dim, keepdim=True).to(torch.float64)
    z = torch.where(ok, x, torch.zeros_like(x))
    mean = z.sum(dim, keepdim=True) / cnt.clamp_min(1)
    d = torch.where(ok, x - mean, torch.zeros_like(x))
    m2 = (d**2).sum(dim, keepdim=True) / cnt.clamp_min(1)
    m4 = (d**4).sum(dim, keepdim=True) / cnt.clamp_min(1)
    scale = torch.where(ok, x.abs(), torch.zeros_like(x)).amax(dim, keepdim=True)
    # rounding leaves a constant vector a variance of order (eps * |x|)^2, not exactly 0
    flat = m2 <= (64 * torch.finfo(torch.float64).eps * scale) ** 2
    k = m4 / torch.where(flat, torch.ones_like(m2), m2) ** 2 - 3.0
    k = torch.where(flat | (cnt < 2), torch.full_like(k, float("nan")), k)
    return k.squeeze(dim)


def receiver_heads(kurt: torch.Tensor, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads of highest kurtosis as ``(layer, head)``, highest first (ties: lower
    layer, then lower head); NaN heads never count.

    :param kurt: ``(L, H)`` (mean) kurtosis.
    """
    if kurt.dim() != 2:
        raise ValueError(f"kurt must be (L, H), got {tuple(kurt.shape)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    items = [
        (-float(kurt[layer, h]), layer, h)
        for layer in range(kurt.shape[0])
        for h in range(kurt.shape[1])
        if torch.isfinite(kurt[layer, h])
    ]
    return [(layer, h) for _, layer, h in sorted(items)[:k]]


def receiver_scores(v: torch.Tensor, heads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``rec_j``: mean vertical score of sentence ``j`` over ``heads``.

    :param v: ``(L, H, n)`` vertical scores.
    :returns: ``(n,)`` float64 (NaN where the scores are NaN).
    """
    if v.dim() != 3:
        raise ValueError(f"v must be (L, H, n), got {tuple(v.shape)}")
    if not heads:
        raise ValueError("heads must name at least one (layer, head)")
    idx_l = torch.tensor([layer for layer, _ in heads])
    idx_h = torch.tensor([h for _, h in heads])
    return v[idx_l, idx_h].to(torch.float64).mean(0)
