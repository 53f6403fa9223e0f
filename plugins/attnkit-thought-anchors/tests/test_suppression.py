"""Attention suppression on a tiny float64 Llama against a brute-force masked forward
(transformers' own eager attention with an additive 4D mask), its invariants, and the KL."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.runtime import Capture
from attnkit_thought_anchors.analysis import control_spans, spearman, window_effect
from attnkit_thought_anchors.suppression import sentence_kl, span_effect, span_logits, suppression_matrix, token_kl

T = 14


@pytest.fixture(scope="module")
def model():
    from attnkit.testing import tiny_causal_lm

    with torch.no_grad():
        return tiny_causal_lm(impl="eager", seed=3).double()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 90, (1, T), generator=torch.Generator().manual_seed(7))


def _brute_force(model, ids, span):
    """Eager transformers forward with causal attention and the keys of ``span`` hidden from
    every query (an additive float mask, the same for every head and layer)."""
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))
    allowed[:, span[0] : span[1]] = False
    mask = torch.zeros(T, T, dtype=torch.float64).masked_fill(~allowed, torch.finfo(torch.float64).min)
    with torch.no_grad():
        return model(ids, attention_mask=mask[None, None]).logits[0]


@pytest.mark.parametrize("span", [(1, 4), (5, 9), (12, 14)])
def test_suppression_equals_a_brute_force_masked_forward(model, ids, span):
    got = span_logits(model, ids, span).double()
    want = _brute_force(model, ids, span).float().double()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # and it does change the queries from the span on (they lose the span's keys, their own included)
    base = span_logits(model, ids, None)
    assert float((got[span[0] :] - base[span[0] :].double()).abs().max()) > 1e-3


def test_positions_before_the_span_are_bit_identical_and_kl_is_zero_there(model, ids):
    base = span_logits(model, ids, None)
    sup = span_logits(model, ids, (6, 9))
    assert torch.equal(base[:6], sup[:6])
    kl = token_kl(base, sup, temperature=0.6)
    assert torch.equal(kl[:6], torch.zeros(6, dtype=torch.float64))
    assert bool((kl[6:] > 0).all())


def test_suppressing_nothing_gives_zero_kl(model, ids):
    a, b = span_logits(model, ids, None), span_logits(model, ids, None)
    assert torch.equal(a, b)
    assert float(token_kl(a, b).abs().max()) == 0.0
    plain = model(ids).logits[0].float()
    torch.testing.assert_close(a, plain, rtol=0, atol=1e-5)  # the explicit path is the model


def test_attention_to_the_span_is_exactly_zero_after_suppression(model, ids):
    cap = Capture(["blocks.{l}.attn.hook_pattern@prefill"])
    span_logits(model, ids, (4, 8), extra=[cap])
    for layer in range(2):
        p = cap.first(f"blocks.{layer}.attn.hook_pattern")[0]  # (H, T, T)
        assert torch.equal(p[:, 4:, 4:8], torch.zeros_like(p[:, 4:, 4:8]))
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:2], dtype=p.dtype))  # rows stay normalised


def test_head_subset_suppression_matches_a_per_head_brute_force(model, ids):
    # suppress only head 1 of layer 0 and head 3 of layer 1: edit a copy of the scores by hand
    heads = {0: [1], 1: [3]}
    got = span_logits(model, ids, (3, 7), heads=heads)

    class HandMask:
        name = "hand"

        @attnkit.hookimpl
        def attnkit_sites(self):
            return ["blocks.{l}.attn.hook_scores"]

        @attnkit.hookimpl
        def attnkit_edit(self, site, layer, tensor):
            s = tensor.clone()
            for h in heads[layer]:
                for q in range(T):
                    for k in range(3, 7):
                        s[0, h, q, k] = float("-inf")
            return s

    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[HandMask()]):
        want = model(ids).logits[0].float()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_span_at_the_first_key_is_refused(model, ids):
    with pytest.raises(ValueError, match=r"span \(0, 3\).*first key"):
        span_logits(model, ids, (0, 3))
    with pytest.raises(ValueError, match="ids"):
        span_logits(model, ids[0], (1, 3))


def test_token_kl_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    got = token_kl(a, b, temperature=0.6, chunk=2)
    for t in range(3):
        p = [math.exp(x / 0.6) for x in a[t].tolist()]
        q = [math.exp(x / 0.6) for x in b[t].tolist()]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        assert got[t].item() == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)), rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        token_kl(a, b[:2])


def test_sentence_and_span_effects_read_the_right_rows():
    kl = torch.arange(10, dtype=torch.float64)  # row r predicts token r + 1
    mean, logm = sentence_kl(kl, [(1, 3), (3, 10)])
    torch.testing.assert_close(mean, torch.tensor([0.5, 5.0], dtype=torch.float64))
    assert logm[0].item() == pytest.approx((math.log(1e-9) + math.log(1 + 1e-9)) / 2)
    assert span_effect(kl, 4, 7) == pytest.approx(4.0)
    assert window_effect(kl, 4, 3)[0] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="token range"):
        span_effect(kl, 0, 3)
    with pytest.raises(ValueError, match="window"):
        window_effect(kl, 8, 5)


def test_suppression_matrix_columns_equal_single_suppressions(model, ids):
    spans = [(1, 4), (4, 8), (8, 11), (11, 14)]
    base = span_logits(model, ids, None)
    kl_m, log_m, per_tok = suppression_matrix(model, ids, spans, base, 0.6)
    assert kl_m.shape == (4, 4)
    assert torch.isnan(kl_m[torch.triu(torch.ones(4, 4, dtype=torch.bool))]).all()
    one = token_kl(base, span_logits(model, ids, spans[1]), 0.6)
    torch.testing.assert_close(per_tok[1], one)
    assert kl_m[3, 1].item() == pytest.approx(float(one[10:13].mean()))
    assert log_m[2, 1].item() == pytest.approx(float(torch.log(one[7:10] + 1e-9).mean()))


def test_control_spans_match_length_and_avoid_the_anchor():
    import random

    spans = control_spans(3, 10, 30, 40, (15, 18), 50, random.Random(0))
    assert len(spans) == 50
    for s, e in spans:
        assert e - s == 3 and 10 <= s <= 30 and e < 40 and (e <= 15 or s >= 18)
    assert control_spans(5, 10, 11, 16, (10, 15), 2, random.Random(0)) == []


def test_spearman_against_known_orders():
    x = torch.tensor([1.0, 2, 3, 4, float("nan")])
    assert spearman(x, torch.tensor([10.0, 20, 30, 40, 0])) == pytest.approx(1.0)
    assert spearman(x, torch.tensor([4.0, 3, 2, 1, 0])) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.tensor([1.0, 2]), torch.tensor([1.0, 2])))
