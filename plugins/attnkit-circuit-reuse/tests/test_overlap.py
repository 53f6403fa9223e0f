"""Overlap metrics against closed forms and brute-force enumeration of random head sets."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest

from attnkit_circuit_reuse.overlap import (
    expected_jaccard,
    expected_overlap,
    hypergeom_pmf,
    jaccard,
    overlap_p_value,
    share,
    top_heads,
)


def test_jaccard_and_share_closed_form():
    a = [(0, 0), (1, 2), (3, 4), (5, 5)]
    b = [(1, 2), (3, 4), (7, 7)]
    assert jaccard(a, b) == pytest.approx(2 / 5)
    assert share(a, b) == pytest.approx(2 / 4)
    assert share(b, a) == pytest.approx(2 / 3)
    assert jaccard([], []) == 0.0 and share([], b) == 0.0
    assert jaccard(a, a) == 1.0


@pytest.mark.parametrize(("n", "a", "b"), [(6, 2, 3), (7, 3, 3), (5, 5, 2), (8, 1, 4)])
def test_chance_overlap_matches_enumeration(n, a, b):
    """Every ``b``-subset of ``n`` heads against a fixed ``a``-subset, exactly (fractions)."""
    fixed = set(range(a))
    subsets = list(itertools.combinations(range(n), b))
    inter = [len(fixed & set(s)) for s in subsets]
    mean_inter = Fraction(sum(inter), len(subsets))
    mean_jac = sum(Fraction(k, a + b - k) for k in inter) / len(subsets)
    assert expected_overlap(n, a, b) == pytest.approx(float(mean_inter), abs=1e-12)
    assert expected_jaccard(n, a, b) == pytest.approx(float(mean_jac), abs=1e-12)
    for k in range(min(a, b) + 1):
        assert hypergeom_pmf(k, n, a, b) == pytest.approx(inter.count(k) / len(subsets), abs=1e-12)
        tail = sum(1 for x in inter if x >= k) / len(subsets)
        assert overlap_p_value(k, n, a, b) == pytest.approx(tail, abs=1e-12)
    assert sum(hypergeom_pmf(k, n, a, b) for k in range(b + 1)) == pytest.approx(1.0)


def test_top_heads_ranks_by_magnitude_and_skips_nan():
    scores = [[0.1, -0.9, float("nan")], [0.5, 0.0, -0.5]]
    assert top_heads(scores, 3) == [(0, 1), (1, 0), (1, 2)]  # tie 0.5 / -0.5: lower layer first
    assert top_heads(scores, 10) == [(0, 1), (1, 0), (1, 2), (0, 0), (1, 1)]
    assert top_heads(scores, 2, eligible=[(0, 0), (1, 1), (0, 2)]) == [(0, 0), (1, 1)]


def test_bad_sizes_name_the_argument():
    with pytest.raises(ValueError, match="k must"):
        top_heads([[1.0]], -1)
    with pytest.raises(ValueError, match="cannot exceed"):
        expected_jaccard(3, 4, 1)
    with pytest.raises(ValueError, match="n must"):
        expected_overlap(-1, 0, 0)
    assert math.isclose(expected_overlap(270, 6, 6), 36 / 270)
