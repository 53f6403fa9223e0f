"""The allocation rules against a brute-force transcription of the official loops."""

from __future__ import annotations

import random

import pytest
import torch
from _kdgqa_bruteforce import brute_head_index, brute_kdgqa, brute_round

from attnkit_kdgqa.allocation import fix_up, head_index, kdgqa_allocation, ratio_allocation


@pytest.mark.parametrize(
    ("norms", "heads", "want"),
    [
        ([1.0, 2.0, 3.0], 6, [0, 2, 4]),  # min-max: the smallest norm gets no query head
        ([3.0, 1.0], 8, [8, 0]),  # two KV heads: min-max always gives all heads to the larger
        ([0.0, 1.0, 1.0], 5, [1, 2, 2]),  # 2.5 rounds to 2 (half-even), fix-up gives the argmin (index 0) one
        ([2.0, 2.0, 2.0, 2.0], 8, [2, 2, 2, 2]),  # equal norms: uniform, not NaN
        ([5.0], 4, [4]),  # a single KV head
    ],
)
def test_kdgqa_hand_cases(norms, heads, want):  # type: ignore[no-untyped-def]
    got = kdgqa_allocation(torch.tensor([norms], dtype=torch.float64), heads)
    assert got.tolist() == [want]
    assert brute_kdgqa(norms, heads) == want


def test_ratio_fix_up_takes_from_first_largest():
    # 1.5, 1.5, 1.0 round (half-even) to 2, 2, 1 = 5 > 4; the tie at 2 goes to index 0.
    got = ratio_allocation(torch.tensor([0.375, 0.375, 0.25], dtype=torch.float64), 4)
    assert got.tolist() == [1, 2, 1] == brute_round([0.375, 0.375, 0.25], 4)


def test_ratio_zero_weights_uniform():
    assert ratio_allocation(torch.zeros(3, dtype=torch.float64), 6).tolist() == [2, 2, 2]


def test_min_queries_floor():
    got = kdgqa_allocation(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64), 6, min_queries=1)
    assert got.tolist() == [brute_kdgqa([1.0, 2.0, 3.0], 6, 1)] == [[1, 2, 3]]
    # min_queries = heads / kv_heads leaves nothing to allocate: static GQA whatever the norms.
    got = kdgqa_allocation(torch.tensor([[9.0, 0.1]], dtype=torch.float64), 4, min_queries=2)
    assert got.tolist() == [[2, 2]]


def test_random_against_brute_force():
    rng = random.Random(0)
    rows, want_k, want_r, sizes = [], [], [], []
    for _ in range(600):
        g = rng.randint(1, 8)
        heads = g * rng.randint(1, 6)
        m = rng.randint(0, heads // g)
        # Small integers make exact ties and exact .5 shares common.
        norms = [float(rng.choice([rng.randint(0, 4), rng.random() * 5])) for _ in range(g)]
        t = torch.tensor([norms], dtype=torch.float64)
        got_k = kdgqa_allocation(t, heads, m)[0].tolist()
        assert got_k == brute_kdgqa(norms, heads, m), (norms, heads, m)
        got_r = ratio_allocation(t, heads, m)[0].tolist()
        assert got_r == brute_round(norms, heads, m), (norms, heads, m)
        assert sum(got_k) == heads and min(got_k) >= m
        rows.append(norms)
        want_k.append(got_k)
        want_r.append(got_r)
        sizes.append((g, heads))
    # Batched rows give the same answers as single rows.
    for g, heads in {(4, 8), (3, 9)}:
        batch = [(r, k) for r, k, s in zip(rows, want_k, sizes) if s == (g, heads)]
        if batch:
            t = torch.tensor([r for r, _ in batch], dtype=torch.float64)
            assert kdgqa_allocation(t, heads).tolist() == [brute_kdgqa(r, heads) for r, _ in batch]


def test_fix_up_worst_case_within_g_steps():
    # Every share exactly .5 above an even number rounds down: the largest deficit rounding allows.
    g = 8
    counts = torch.zeros(1, g, dtype=torch.int64)
    assert fix_up(counts, g // 2).tolist() == [[1, 1, 1, 1, 0, 0, 0, 0]]
    assert fix_up(torch.full((1, g), 2, dtype=torch.int64), 12).tolist() == [[1, 1, 1, 1, 2, 2, 2, 2]]


def test_head_index_brute_force():
    rng = random.Random(1)
    for _ in range(200):
        g = rng.randint(1, 6)
        heads = rng.randint(1, 12)
        cuts = sorted(rng.randint(0, heads) for _ in range(g - 1))
        counts = [b - a for a, b in zip([0, *cuts], [*cuts, heads])]
        got = head_index(torch.tensor([counts]), heads)[0].tolist()
        assert got == brute_head_index(counts), counts
