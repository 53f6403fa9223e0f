"""Circuits as head sets, and how much two of them overlap against chance.

The paper reports the share of one task's circuit found in the other's ("25/32 = 78%")
without a formula; both that share (``|A & B| / |A|``) and the Jaccard index
``|A & B| / |A | B|`` are given here, each beside its value for two random head sets of the
same sizes drawn from the same ``n`` heads: ``|A & B|`` is then hypergeometric
(``P(k) = C(a, k) C(n - a, b - k) / C(n, b)``), so both expectations and the tail
probability ``P(|A & B| >= observed)`` have closed forms.

Pure Python and math: nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = [
    "expected_jaccard",
    "expected_overlap",
    "hypergeom_pmf",
    "jaccard",
    "overlap_p_value",
    "share",
    "top_heads",
]

Head = tuple[int, int]


def top_heads(scores: Sequence[Sequence[float]], k: int, eligible: Iterable[Head] | None = None) -> list[Head]:
    """The ``k`` heads with the largest ``|score|`` of an ``(L, H)`` table (NaN never ranks),
    largest first; ties go to the lower layer, then head. ``eligible`` limits the choice."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}")
    allowed = None if eligible is None else set(eligible)
    ranked = [
        (-abs(float(v)), layer, h)
        for layer, row in enumerate(scores)
        for h, v in enumerate(row)
        if not math.isnan(float(v)) and (allowed is None or (layer, h) in allowed)
    ]
    return [(layer, h) for _, layer, h in sorted(ranked)[:k]]


def jaccard(a: Iterable[Head], b: Iterable[Head]) -> float:
    """``|A & B| / |A | B|`` (0 for two empty sets)."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def share(a: Iterable[Head], b: Iterable[Head]) -> float:
    """``|A & B| / |A|``: the share of ``a`` also in ``b`` (the paper's "78%"); 0 for empty ``a``."""
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa) if sa else 0.0


def _check_sizes(n: int, a: int, b: int) -> None:
    for name, v in (("n", n), ("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    if a > n or b > n:
        raise ValueError(f"set sizes a={a}, b={b} cannot exceed the n={n} heads they are drawn from")


def hypergeom_pmf(k: int, n: int, a: int, b: int) -> float:
    """``P(|A & B| = k)`` for ``A`` fixed of size ``a`` and ``B`` uniform of size ``b`` among ``n``."""
    _check_sizes(n, a, b)
    if k < max(0, a + b - n) or k > min(a, b):
        return 0.0
    return math.comb(a, k) * math.comb(n - a, b - k) / math.comb(n, b)


def expected_overlap(n: int, a: int, b: int) -> float:
    """``E|A & B| = a b / n`` for random sets of sizes ``a`` and ``b`` among ``n``."""
    _check_sizes(n, a, b)
    return a * b / n if n else 0.0


def expected_jaccard(n: int, a: int, b: int) -> float:
    """``E[|A & B| / (a + b - |A & B|)]`` under the hypergeometric law."""
    _check_sizes(n, a, b)
    total = 0.0
    for k in range(max(0, a + b - n), min(a, b) + 1):
        union = a + b - k
        if union:
            total += hypergeom_pmf(k, n, a, b) * k / union
    return total


def overlap_p_value(observed: int, n: int, a: int, b: int) -> float:
    """``P(|A & B| >= observed)`` for random sets: how often chance overlaps this much."""
    _check_sizes(n, a, b)
    return sum(hypergeom_pmf(k, n, a, b) for k in range(max(0, observed), min(a, b) + 1))
