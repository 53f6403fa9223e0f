"""The dense reference against a float64 softmax written with Python loops, plus its
properties: GQA, bottom-right causal alignment, empty rows, LSE merge, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.reference import attention, causal_mask, merge_attention


def loop_attention(q, k, v, allowed, scale):  # type: ignore[no-untyped-def]
    """Softmax attention one (batch, head, query) at a time in float64 Python arithmetic.

    ``allowed(b, h, i, j) -> bool``; GQA by mapping query head ``h`` to kv head ``h // G``.
    Returns ``(out, lse)`` as float64 tensors; empty rows give zeros and ``-inf``.
    """
    b_, hq, tq, _ = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = hq // hkv
    out = torch.zeros(b_, hq, tq, dv, dtype=torch.float64)
    lse = torch.full((b_, hq, tq), -math.inf, dtype=torch.float64)
    for b in range(b_):
        for h in range(hq):
            for i in range(tq):
                logits = {}
                for j in range(tk):
                    if allowed(b, h, i, j):
                        logits[j] = scale * sum(
                            float(q[b, h, i, c]) * float(k[b, h // g, j, c]) for c in range(q.shape[-1])
                        )
                if not logits:
                    continue
                m = max(logits.values())
                w = {j: math.exp(s - m) for j, s in logits.items()}
                z = sum(w.values())
                lse[b, h, i] = m + math.log(z)
                for c in range(dv):
                    out[b, h, i, c] = sum(w[j] * float(v[b, h // g, j, c]) for j in w) / z
    return out, lse


def rand(*shape, seed=0, dtype=torch.float64):  # type: ignore[no-untyped-def]
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("is_causal", [False, True])
def test_matches_loop_softmax_with_gqa_mask_and_causal(is_causal):
    q, k, v = rand(2, 4, 3, 5, seed=1), rand(2, 2, 6, 5, seed=2), rand(2, 2, 6, 3, seed=3)
    mask = rand(2, 1, 3, 6, seed=4) > -0.3  # per batch, shared by heads
    mask[:, :, :, -1] = True  # keep at least the last key: empty rows are tested separately
    out, lse = attention(q, k, v, mask=mask, is_causal=is_causal, scale=0.7, return_lse=True)

    def allowed(b, h, i, j):  # type: ignore[no-untyped-def]
        ok = bool(mask[b, 0, i, j])
        return ok and (not is_causal or j <= i + 6 - 3)

    want_out, want_lse = loop_attention(q, k, v, allowed, 0.7)
    torch.testing.assert_close(out, want_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, want_lse, atol=1e-12, rtol=1e-12)


def test_float32_input_computes_in_float32_and_returns_float32():
    q, k, v = (rand(1, 2, 4, 8, seed=s, dtype=torch.float32) for s in (1, 2, 3))
    out, lse = attention(q, k, v, return_lse=True)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    want, _ = loop_attention(q, k, v, lambda *a: True, 8**-0.5)
    torch.testing.assert_close(out.double(), want, atol=1e-6, rtol=1e-5)


def test_gqa_equals_repeat_interleaved_kv():
    q, k, v = rand(1, 6, 5, 4, seed=1), rand(1, 2, 5, 4, seed=2), rand(1, 2, 5, 4, seed=3)
    got = attention(q, k, v, is_causal=True)
    want = attention(q, k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1), is_causal=True)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_causal_is_bottom_right_aligned_when_fewer_queries():
    # 2 queries after 5 cached keys: they are positions 3 and 4 and see keys 0..3 and 0..4.
    assert causal_mask(2, 5).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    q, k, v = rand(1, 1, 2, 4, seed=1), rand(1, 1, 5, 4, seed=2), rand(1, 1, 5, 4, seed=3)
    got = attention(q, k, v, is_causal=True)
    want, _ = loop_attention(q, k, v, lambda b, h, i, j: j <= i + 3, 0.5)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # The last query of a causal prefill equals full attention of that query over every key.
    full = attention(q[:, :, -1:], k, v)
    torch.testing.assert_close(got[:, :, -1:], full, atol=1e-12, rtol=1e-12)


def test_fully_masked_rows_are_zero_with_minus_inf_lse_and_finite_gradients():
    q, k, v = (rand(1, 2, 3, 4, seed=s).requires_grad_() for s in (1, 2, 3))
    mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    out, lse = attention(q, k, v, mask=mask, return_lse=True)
    assert torch.equal(out[:, :, 1], torch.zeros(1, 2, 4, dtype=torch.float64))
    assert torch.isneginf(lse[:, :, 1]).all() and torch.isfinite(lse[:, :, [0, 2]]).all()
    assert not torch.isnan(out).any()
    (out.sum() + lse[:, :, [0, 2]].sum()).backward()
    for x in (q, k, v):
        assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(q.grad[:, :, 1], torch.zeros(1, 2, 4, dtype=torch.float64))


def test_lse_merge_of_disjoint_key_halves_equals_the_whole():
    q, k, v = rand(2, 4, 5, 8, seed=1), rand(2, 2, 9, 8, seed=2), rand(2, 2, 9, 6, seed=3)
    whole, whole_lse = attention(q, k, v, return_lse=True)
    a, a_lse = attention(q, k[:, :, :4], v[:, :, :4], return_lse=True)
    b, b_lse = attention(q, k[:, :, 4:], v[:, :, 4:], return_lse=True)
    out, lse = merge_attention([a, b], [a_lse, b_lse])
    torch.testing.assert_close(out, whole, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, whole_lse, atol=1e-12, rtol=1e-12)


def test_lse_merge_with_an_empty_part_and_all_empty_rows():
    q, k, v = rand(1, 1, 3, 4, seed=1), rand(1, 1, 4, 4, seed=2), rand(1, 1, 4, 4, seed=3)
    mask_a = torch.tensor([[True, True], [False, False], [False, False]])
    mask_b = torch.tensor([[True, False], [True, True], [False, False]])
    a, a_lse = attention(q, k[:, :, :2], v[:, :, :2], mask=mask_a, return_lse=True)
    b, b_lse = attention(q, k[:, :, 2:], v[:, :, 2:], mask=mask_b, return_lse=True)
    out, lse = merge_attention([a, b], [a_lse, b_lse])
    want, want_lse = attention(q, k, v, mask=torch.cat([mask_a, mask_b], dim=1), return_lse=True)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, want_lse, atol=1e-12, rtol=1e-12)
    assert torch.isneginf(lse[0, 0, 2]) and torch.equal(out[0, 0, 2], torch.zeros(4, dtype=torch.float64))


def test_merge_attention_validates():
    with pytest.raises(ValueError, match="as many outputs as LSEs"):
        merge_attention([torch.zeros(1, 1, 2, 3)], [])
    with pytest.raises(ValueError, match=r"outs\[0\] \(1, 1, 2, 3\) does not match lses\[0\] \(1, 1, 3\)"):
        merge_attention([torch.zeros(1, 1, 2, 3)], [torch.zeros(1, 1, 3)])


def test_gradcheck():
    # GQA (2 query heads on 1 kv head), a mask and causal together; the LSE is checked too.
    q = rand(1, 2, 3, 4, seed=1).requires_grad_()
    k, v = (rand(1, 1, 3, 4, seed=s).requires_grad_() for s in (2, 3))
    mask = torch.tensor([[True, False, True], [True, True, False], [False, True, True]])

    def fn(q, k, v):  # type: ignore[no-untyped-def]
        return attention(q, k, v, mask=mask, is_causal=True, return_lse=True)

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Non-finite input: NaN exactly in the rows that may attend to it (docs/user-guide.md)
# ---------------------------------------------------------------------------------------------

NON_FINITE = [
    ("q-nan", "q", (0, 1, 2, 1), math.nan),
    ("q-row-minus-inf", "q", (1, 3, 4, slice(None)), -math.inf),
    ("k-plus-inf", "k", (0, 1, 3, 0), math.inf),
    ("k-minus-inf", "k", (1, 0, 1, 2), -math.inf),
    ("v-nan", "v", (0, 0, 4, 3), math.nan),
    ("v-plus-inf-last-key", "v", (1, 1, 5, 0), math.inf),
]
# (B, 1, Tq, Tk): causal-like with one empty query row (batch 0, query 3)
MASK = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0] * 6, [1, 1, 1, 1, 1, 0]]).bool()


def _expected_nan_rows(q, k, v, allowed):  # type: ignore[no-untyped-def]
    """(B, Hq, Tq) bool by loops: a row with a key is NaN iff its q row or an allowed k/v row
    holds a NaN or an infinity."""
    b_, hq, tq, _ = q.shape
    g = hq // k.shape[1]
    want = torch.zeros(b_, hq, tq, dtype=torch.bool)
    for b in range(b_):
        for h in range(hq):
            for i in range(tq):
                keys = [j for j in range(k.shape[2]) if allowed(b, h, i, j)]
                bad = [
                    j
                    for j in keys
                    if not (torch.isfinite(k[b, h // g, j]).all() and torch.isfinite(v[b, h // g, j]).all())
                ]
                want[b, h, i] = bool(keys) and (not torch.isfinite(q[b, h, i]).all() or bool(bad))
    return want


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize(("label", "name", "idx", "value"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_input_gives_nan_exactly_in_the_rows_that_may_attend_to_it(label, name, idx, value, backend, dtype):
    import attnkit

    q, k, v = rand(2, 4, 5, 4, seed=1), rand(2, 2, 6, 4, seed=2), rand(2, 2, 6, 4, seed=3)
    {"q": q, "k": k, "v": v}[name][idx] = value
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    mask = MASK[None, None].expand(2, 1, 5, 6).clone()
    mask[1, 0, 3] = True  # batch 1 has no empty row
    out = attnkit.get_spec("dense")(q, k, v, mask=mask, backend=backend)
    allowed = lambda b, h, i, j: bool(mask[b, 0, i, j])  # noqa: E731
    want_nan = _expected_nan_rows(q, k, v, allowed)
    assert torch.isnan(out[want_nan]).all(), label
    assert torch.isfinite(out[~want_nan]).all(), label
    assert torch.equal(out[0, :, 3], torch.zeros_like(out[0, :, 3]))  # nothing to attend to: zeros
    # Every other row is the loop softmax over its allowed keys, which are all finite.
    clean = [torch.where(torch.isfinite(x).all(-1, keepdim=True), x, 0.0).double() for x in (q, k, v)]
    want, _ = loop_attention(*clean, allowed, 0.5)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out[~want_nan].double(), want[~want_nan], atol=tol, rtol=tol)
    if backend == "reference":
        _, lse = attention(q, k, v, mask=mask, return_lse=True)
        assert torch.isnan(lse[want_nan]).all() and torch.isneginf(lse[0, :, 3]).all()


def test_nan_value_of_a_masked_key_does_not_reach_rows_that_cannot_see_it():
    # Dense attention multiplies every value by its probability, 0 where masked: 0 * NaN = NaN
    # would reach every row. Causal: only the last query sees the last key.
    q, k, v = rand(1, 2, 6, 4, seed=1), rand(1, 2, 6, 4, seed=2), rand(1, 2, 6, 4, seed=3)
    v[0, 1, 5, 2] = math.nan
    out, lse = attention(q, k, v, is_causal=True, return_lse=True)
    assert torch.isnan(out[0, 1, 5]).all() and torch.isnan(lse[0, 1, 5])
    assert torch.isfinite(out[0, 1, :5]).all() and torch.isfinite(out[0, 0]).all()


def test_empty_row_is_zeros_even_when_its_query_is_nan():
    q, k, v = rand(1, 1, 3, 4, seed=1), rand(1, 1, 3, 4, seed=2), rand(1, 1, 3, 4, seed=3)
    q[0, 0, 1] = math.nan
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    out, lse = attention(q, k, v, mask=mask, return_lse=True)
    assert torch.equal(out[0, 0, 1], torch.zeros(4, dtype=torch.float64)) and torch.isneginf(lse[0, 0, 1])


def test_non_finite_rows_keep_the_other_rows_gradients_finite():
    q, k, v = (rand(1, 2, 5, 4, seed=s) for s in (1, 2, 3))
    v[0, 0, 4, 1] = math.nan
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = attention(q, k, v, is_causal=True)
    out[:, :, :4].sum().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["plus-inf", "minus-inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_logits_overflowing_the_working_dtype_give_nan_rows(sign, dtype):
    # Outside the supported range ("logits finite in the working dtype") every row that has
    # keys is NaN, never a finite answer: all logits +inf, or all -inf (not "nothing to see").
    big = 1e20 if dtype == torch.float32 else 1e160
    q = torch.full((1, 2, 4, 8), big, dtype=dtype)
    out, lse = attention(q, sign * q, rand(1, 2, 4, 8, seed=1).to(dtype), is_causal=True, return_lse=True)
    assert torch.isnan(out).all() and torch.isnan(lse).all()


def test_a_logit_overflowing_to_minus_inf_next_to_finite_ones_is_probability_zero():
    q, k, v = (rand(1, 1, 3, 4, seed=s).float() for s in (1, 2, 3))
    q = q.abs() + 1.0
    k[0, 0, 1] = -3e38  # finite input; its logits overflow float32 to -inf
    out = attention(q, k, v)
    want = attention(q.double(), k.double()[:, :, [0, 2]], v.double()[:, :, [0, 2]])
    torch.testing.assert_close(out.double(), want, atol=1e-6, rtol=1e-6)


def test_scale_is_applied_before_the_logit_product():
    # q . k = 4e38 overflows float32, (q * scale) . k = 4e28 does not.
    q = torch.full((1, 1, 2, 1), 2e19)
    k = torch.full((1, 1, 3, 1), 2e19)
    v = rand(1, 1, 3, 2, seed=1).float()
    out, lse = attention(q, k, v, scale=1e-10, return_lse=True)
    want, want_lse = attention(q.double(), k.double(), v.double(), scale=1e-10, return_lse=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(lse.double(), want_lse, atol=0, rtol=1e-6)


def test_softmax_rows_nan_logit_gives_nan_lse():
    from attnkit.reference import softmax_rows

    scores = torch.tensor([[0.0, math.nan, 1.0], [-math.inf, -math.inf, -math.inf], [0.0, math.inf, 1.0]])
    probs, lse = softmax_rows(scores)
    assert torch.isnan(probs[0]).all() and torch.isnan(lse[0])
    assert torch.equal(probs[1], torch.zeros(3)) and torch.isneginf(lse[1])
    assert torch.isnan(probs[2]).all() and torch.isnan(lse[2])
