"""Sentence matrices, vertical scores, kurtosis and receiver heads against brute force,
closed forms and planted patterns."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.runtime import Run
from attnkit_thought_anchors import ThoughtAnchorsParams
from attnkit_thought_anchors.receivers import (
    kurtosis,
    receiver_heads,
    receiver_scores,
    sentence_matrix,
    vertical_scores,
)
from attnkit_thought_anchors.runtime import SentenceAttention


def _causal_random(h: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(h, t, t, generator=g, dtype=torch.float64)
    s = s.masked_fill(~torch.tril(torch.ones(t, t, dtype=torch.bool)), float("-inf"))
    return s.softmax(-1)


def test_sentence_matrix_equals_brute_force_block_means():
    a = _causal_random(3, 11)
    spans = [(0, 2), (2, 5), (5, 6), (6, 11)]  # the last span ends at T: nothing clipped
    got = sentence_matrix(a, spans)
    for h in range(3):
        for i, (si, ei) in enumerate(spans):
            for j, (sj, ej) in enumerate(spans):
                vals = [float(a[h, q, k]) for q in range(si, ei) for k in range(sj, ej)]
                assert got[h, i, j].item() == pytest.approx(sum(vals) / len(vals), abs=1e-14)


def test_sentence_matrix_refuses_bad_spans():
    a = _causal_random(1, 5)
    with pytest.raises(ValueError, match=r"spans.*\(3, 3\).*5"):
        sentence_matrix(a, [(0, 3), (3, 3)])
    with pytest.raises(ValueError, match=r"\(4, 6\).*5"):
        sentence_matrix(a, [(0, 4), (4, 6)])
    with pytest.raises(ValueError, match="square"):
        sentence_matrix(torch.zeros(1, 3, 4), [(0, 1)])


def test_vertical_scores_equal_brute_force():
    g = torch.Generator().manual_seed(3)
    m = torch.rand(2, 7, 7, generator=g, dtype=torch.float64)
    for p in (1, 2, 4):
        v = vertical_scores(m, p)
        for h in range(2):
            for j in range(7):
                col = [float(m[h, i, j]) for i in range(7) if j <= i - p]
                if col:
                    assert v[h, j].item() == pytest.approx(sum(col) / len(col), abs=1e-14)
                else:
                    assert math.isnan(v[h, j].item())


def test_control_depth_uses_row_ranks():
    m = torch.tensor(
        [[0.0, 0, 0, 0], [0.9, 0, 0, 0], [0.2, 0.5, 0, 0], [0.1, 0.6, 0.3, 0]],
        dtype=torch.float64,
    )
    v = vertical_scores(m, 1, control_depth=True)
    # row 1: [1/1]; row 2: ranks of (0.2, 0.5) -> (1/2, 2/2); row 3: (0.1, 0.6, 0.3) -> (1/3, 3/3, 2/3)
    want = [(1 + 0.5 + 1 / 3) / 3, (1 + 1) / 2, 2 / 3, float("nan")]
    torch.testing.assert_close(v, torch.tensor(want, dtype=torch.float64), equal_nan=True)


def test_planted_sentence_has_the_top_vertical_score():
    # the check of the spec: 3 sentences x 4 tokens, every later query attends uniformly to sentence 0
    t = 12
    a = torch.zeros(1, t, t, dtype=torch.float64)
    for q in range(t):
        if q < 4:
            a[0, q, : q + 1] = 1 / (q + 1)
        else:
            a[0, q, :4] = 0.25
    spans = [(0, 4), (4, 8), (8, 12)]
    m = sentence_matrix(a, spans)
    assert m[0, 1, 0] == pytest.approx(0.25) and m[0, 2, 0] == pytest.approx(0.25)
    v = vertical_scores(m, 1)
    assert int(torch.nan_to_num(v[0], nan=-1).argmax()) == 0
    assert v[0, 0] == pytest.approx(0.25) and v[0, 1] == pytest.approx(0.0)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_kurtosis_of_a_single_spike_matches_the_bernoulli_closed_form(n):
    x = torch.zeros(n, dtype=torch.float64)
    x[1] = 4.0  # scale and shift do not change kurtosis
    p = 1 / n
    want = (1 - 6 * p * (1 - p)) / (p * (1 - p))
    assert kurtosis(x - 7).item() == pytest.approx(want, rel=1e-12)


def test_kurtosis_matches_a_float64_loop_and_omits_nan():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64)
    x[1, [2, 5]] = float("nan")
    got = kurtosis(x)
    for r in range(4):
        vals = [float(v) for v in x[r] if not math.isnan(float(v))]
        mu = sum(vals) / len(vals)
        m2 = sum((v - mu) ** 2 for v in vals) / len(vals)
        m4 = sum((v - mu) ** 4 for v in vals) / len(vals)
        assert got[r].item() == pytest.approx(m4 / m2**2 - 3, rel=1e-12)
    assert kurtosis(torch.tensor([-1.0, 1.0])).item() == pytest.approx(-2.0)


def test_kurtosis_is_nan_for_constant_or_too_few_values():
    k = kurtosis(torch.tensor([[0.1] * 6, [2.0, float("nan"), float("nan"), float("nan"), 2.0, 2.0]]))
    assert torch.isnan(k).all()
    assert torch.isnan(kurtosis(torch.tensor([1.0, float("nan")])))


def test_receiver_heads_rank_by_kurtosis_and_skip_nan():
    k = torch.tensor([[1.0, float("nan"), 3.0], [3.0, -1.0, 2.0]], dtype=torch.float64)
    assert receiver_heads(k, 3) == [(0, 2), (1, 0), (1, 2)]
    assert receiver_heads(k, 10) == [(0, 2), (1, 0), (1, 2), (0, 0), (1, 1)]
    with pytest.raises(ValueError, match="k"):
        receiver_heads(k, 0)
    v = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    torch.testing.assert_close(receiver_scores(v, [(0, 2), (1, 0)]), (v[0, 2] + v[1, 0]) / 2)


def _planted_pattern(h: int, spans: list[tuple[int, int]], planted_head: int, target: int) -> torch.Tensor:
    """Uniform causal attention in every head but ``planted_head``, whose queries after
    sentence ``target`` put 0.8 of their mass uniformly on it."""
    t = spans[-1][1]
    causal = torch.tril(torch.ones(t, t, dtype=torch.float64))
    a = (causal / causal.sum(-1, keepdim=True)).expand(h, t, t).clone()
    s, e = spans[target]
    for q in range(e, t):
        row = causal[q] / causal[q].sum() * 0.2
        row[s:e] += 0.8 / (e - s)
        a[planted_head, q] = row
    return a[None]


def test_planted_vertical_head_is_found_as_receiver_head():
    spans = [(k, k + 3) for k in range(1, 31, 3)]  # 10 sentences of 3 tokens after token 0
    sa = SentenceAttention(ThoughtAnchorsParams(top_k=1), spans)
    run = Run(n_layers=2, analyses=[sa])
    # head 2 of layer 1 attends to sentence 3 (index 4 of the list led by the lone token 0)
    run.visit("hook_pattern", 0, _planted_pattern(4, [(0, 1), *spans], planted_head=0, target=0))
    run.visit("hook_pattern", 1, _planted_pattern(4, [(0, 1), *spans], planted_head=2, target=4))
    res = sa.result()
    assert res is not None and res.matrices.shape == (2, 4, 10, 10)
    assert res.receiver_heads == [(1, 2)]
    assert int(torch.nan_to_num(res.receiver_scores, nan=-1).argmax()) == 3
    # every other head attends uniformly: far lower kurtosis than the planted one
    others = res.kurtosis.clone()
    others[1, 2] = float("nan")
    assert float(others.nan_to_num(nan=-9).max()) < float(res.kurtosis[1, 2]) - 1


def test_runtime_without_spans_uses_tokens_and_decode_patterns_are_refused():
    sa = SentenceAttention(ThoughtAnchorsParams())
    run = Run(n_layers=1, analyses=[sa])
    run.visit("hook_pattern", 0, _causal_random(2, 7)[None])
    res = sa.result()
    assert res is not None and res.vertical.shape == (1, 2, 7)
    with pytest.raises(ValueError, match="prefill pattern"):
        sa.attnkit_capture("blocks.0.attn.hook_pattern", 0, torch.zeros(1, 2, 1, 7))
    assert SentenceAttention().result() is None
