"""The numba CPU backend against independent references.

Forward and LSE are checked against dense attention under the brute-force mask
(:func:`attnkit_neighborhood.masks.brute_force_mask`, Python loops over the NATTEN rule);
gradients against autograd through the plain-torch reference backend, and once by
``torch.autograd.gradcheck``. Shapes are small and reused so numba compiles few variants.
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import CallInfo
from attnkit.reference.dense import attention as dense_attention
from attnkit_neighborhood import cpu
from attnkit_neighborhood.masks import brute_force_mask
from attnkit_neighborhood.params import NeighborhoodParams

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

SPEC = attnkit.get_spec("neighborhood")

_reason = SPEC.backend("numba").reason_not_to_run(CallInfo(device=torch.device("cpu"), dtype=torch.float64))
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"numba backend unavailable: {_reason}")

# (token axes, kernel_size, dilation, is_causal, Hq, Hkv): odd/even kernels, dilation groups of
# unequal length (n % d != 0), per-axis causal, GQA, several query tiles per axis.
CASES = [
    ((13,), 5, 2, False, 2, 2),
    ((40,), 4, 3, True, 2, 1),
    ((70,), 33, 1, False, 1, 1),
    ((19, 11), (5, 4), (1, 2), (True, False), 4, 2),
    ((7, 9), (3, 2), (2, 3), (False, True), 2, 1),
    ((5, 6, 7), (2, 3, 3), (2, 1, 2), (True, False, False), 4, 2),
    ((4, 10, 5), 3, (1, 3, 1), False, 1, 1),
]
IDS = [f"S{c[0]}-k{c[1]}-d{c[2]}-c{c[3]}-h{c[4]}/{c[5]}" for c in CASES]


def _inputs(spatial, hq, hkv, dtype, *, d=8, dv=5, batch=2, seed=0, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, *spatial, d, dtype=dtype, generator=gen)
    k = torch.randn(batch, hkv, *spatial, d, dtype=dtype, generator=gen)
    v = torch.randn(batch, hkv, *spatial, dv, dtype=dtype, generator=gen)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def _masked_dense(q, k, v, kernel_size, dilation, is_causal, scale):
    """Dense attention (float64) under the brute-force neighbourhood mask, in ``q``'s shape."""
    b, hq, *spatial, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    n = math.prod(spatial)
    mask = brute_force_mask(NeighborhoodParams(kernel_size, dilation), tuple(q.shape), tuple(k.shape), is_causal)
    out, lse = dense_attention(
        q.double().reshape(b, hq, n, d), k.double().reshape(b, hkv, n, d), v.double().reshape(b, hkv, n, dv),
        mask=mask, scale=scale, return_lse=True,
    )  # fmt: skip
    return out.reshape(b, hq, *spatial, dv), lse.reshape(b, hq, *spatial)


@pytest.mark.parametrize(("spatial", "ks", "dl", "causal", "hq", "hkv"), CASES, ids=IDS)
def test_forward_and_lse_match_brute_force_float64(spatial, ks, dl, causal, hq, hkv):
    q, k, v = _inputs(spatial, hq, hkv, torch.float64)
    out, lse = SPEC(q, k, v, kernel_size=ks, dilation=dl, is_causal=causal, return_lse=True, backend="numba")
    ref_out, ref_lse = _masked_dense(q, k, v, ks, dl, causal, q.shape[-1] ** -0.5)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("spatial", "ks", "dl", "causal", "hq", "hkv"), CASES[::2], ids=IDS[::2])
def test_forward_and_lse_match_brute_force_float32(spatial, ks, dl, causal, hq, hkv):
    q, k, v = _inputs(spatial, hq, hkv, torch.float32, seed=1)
    out, lse = SPEC(q, k, v, kernel_size=ks, dilation=dl, is_causal=causal, return_lse=True, backend="numba", scale=0.3)
    ref_out, ref_lse = _masked_dense(q, k, v, ks, dl, causal, 0.3)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("spatial", "ks", "dl", "causal", "hq", "hkv"), CASES, ids=IDS)
def test_gradients_match_reference_backend_float64(spatial, ks, dl, causal, hq, hkv):
    grads = []
    for backend in ("numba", "reference"):
        q, k, v = _inputs(spatial, hq, hkv, torch.float64, seed=2, requires_grad=True)
        out, lse = SPEC(q, k, v, kernel_size=ks, dilation=dl, is_causal=causal, return_lse=True, backend=backend)
        gen = torch.Generator().manual_seed(3)
        # weights on both outputs, so the LSE's own gradient path is checked too
        loss = (out * torch.randn(out.shape, dtype=out.dtype, generator=gen)).sum()
        loss = loss + (lse * torch.randn(lse.shape, dtype=lse.dtype, generator=gen)).sum()
        grads.append(torch.autograd.grad(loss, (q, k, v)))
    for name, got, want in zip("qkv", *grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0, msg=lambda m, n=name: f"d{n}: {m}")


def test_gradcheck_tiny():
    q, k, v = _inputs((6, 4), 2, 1, torch.float64, d=3, dv=2, batch=1, requires_grad=True)

    def fn(q, k, v):
        return SPEC(
            q, k, v, kernel_size=(3, 2), dilation=(2, 1), is_causal=(False, True), return_lse=True, backend="numba"
        )

    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-8)


def test_single_token_and_kernel_one():
    q, k, v = _inputs((1,), 2, 2, torch.float64)
    out, lse = SPEC(q, k, v, kernel_size=1, return_lse=True, backend="numba")
    # one key: softmax weight 1, LSE = the logit itself
    torch.testing.assert_close(out, v, atol=1e-15, rtol=0)
    torch.testing.assert_close(lse, (q * k).sum(-1) * q.shape[-1] ** -0.5, atol=1e-14, rtol=0)
    q, k, v = _inputs((6, 3), 2, 1, torch.float64)
    out = SPEC(q, k, v, kernel_size=1, backend="numba")
    torch.testing.assert_close(out, v.expand(-1, 2, -1, -1, -1), atol=1e-15, rtol=0)


def test_non_contiguous_inputs():
    # heads-last storage viewed as (B, H, X, Y, D): strided, not contiguous
    gen = torch.Generator().manual_seed(4)
    base = [torch.randn(2, 9, 8, h, 8, dtype=torch.float64, generator=gen) for h in (4, 2, 2)]
    q, k, v = (x.permute(0, 3, 1, 2, 4) for x in base)
    assert not q.is_contiguous()
    out, lse = SPEC(
        q, k, v, kernel_size=(3, 5), dilation=(2, 1), is_causal=(False, True), return_lse=True, backend="numba"
    )
    ref_out, ref_lse = _masked_dense(q, k, v, (3, 5), (2, 1), (False, True), 8**-0.5)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=0)
    out_bthd = SPEC(*base, kernel_size=(3, 5), dilation=(2, 1), is_causal=(False, True), layout="bthd", backend="numba")
    torch.testing.assert_close(out_bthd, ref_out.permute(0, 2, 3, 1, 4), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_logits_stay_finite(dtype):
    q, k, v = _inputs((24,), 2, 2, dtype, requires_grad=True)
    with torch.no_grad():
        q.mul_(1e3)
        k.mul_(1e3)
    out, lse = SPEC(q, k, v, kernel_size=5, dilation=2, is_causal=True, return_lse=True, backend="numba")
    (out.sum() + lse.sum()).backward()
    for t in (out, lse, q.grad, k.grad, v.grad):
        assert torch.isfinite(t).all()
    ref_out, ref_lse = _masked_dense(q.detach(), k.detach(), v.detach(), 5, 2, True, 8**-0.5)
    atol = 1e-10 if dtype == torch.float64 else 1e-3
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=0)
    torch.testing.assert_close(lse.double(), ref_lse, atol=0, rtol=1e-12 if dtype == torch.float64 else 1e-5)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    n=st.integers(1, 30),
    kernel=st.integers(1, 9),
    dilation=st.integers(1, 4),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_1d_property_matches_brute_force(n, kernel, dilation, causal, seed):
    hypothesis.assume(kernel * dilation <= n)
    q, k, v = _inputs((n,), 2, 1, torch.float64, seed=seed, batch=1)
    out, lse = SPEC(q, k, v, kernel_size=kernel, dilation=dilation, is_causal=causal, return_lse=True, backend="numba")
    ref_out, ref_lse = _masked_dense(q, k, v, kernel, dilation, causal, 8**-0.5)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-12, rtol=0)


def test_concurrent_calls_from_python_threads():
    # numba's workqueue layer aborts on concurrent parallel launches; the backend serialises them
    from concurrent.futures import ThreadPoolExecutor

    q, k, v = _inputs((6, 10), 2, 1, torch.float64)
    want = SPEC(q, k, v, kernel_size=3, backend="numba")
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda _: SPEC(q, k, v, kernel_size=3, backend="numba"), range(8)))
    for out in outs:
        torch.testing.assert_close(out, want, atol=0, rtol=0)


def test_can_run():
    numba = SPEC.backend("numba")
    assert numba.reason_not_to_run(CallInfo(device=torch.device("cpu"), dtype=torch.float32)) is None
    assert (
        numba.reason_not_to_run(CallInfo(device=torch.device("cpu"), dtype=torch.float64, requires_grad=True)) is None
    )
    assert "float16" in numba.reason_not_to_run(CallInfo(device=torch.device("cpu"), dtype=torch.float16))
    assert "cuda" in numba.reason_not_to_run(CallInfo(device=torch.device("cuda"), dtype=torch.float32))


def test_bad_inputs_raise():
    q, k, v = _inputs((8,), 2, 1, torch.float32)
    call = {"params": NeighborhoodParams(3), "is_causal": False, "scale": 0.5, "return_lse": False}
    with pytest.raises(TypeError, match="float32 or all float64"):
        cpu.neighborhood_attention(q.half(), k.half(), v.half(), **call)
    with pytest.raises(TypeError, match="float32 or all float64"):
        cpu.neighborhood_attention(q, k.double(), v, **call)
    with pytest.raises(ValueError, match="axis 0 has size 8 but kernel_size=5, dilation=2"):
        cpu.neighborhood_attention(q, k, v, **{**call, "params": NeighborhoodParams(5, 2)})
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        cpu.neighborhood_attention(q[:, :1], k.expand(-1, 2, -1, -1), v.expand(-1, 2, -1, -1), **call)
    with pytest.raises(ValueError, match="token axes"):
        cpu.neighborhood_attention(q, k[:, :, :6], v[:, :, :6], **call)


# Non-finite input (attnkit's rule, docs/user-guide.md): a query row is NaN, and so is its LSE,
# exactly when its q row or the k/v row of a key in its window is not finite; other rows are
# computed from finite values only. (label, tensor, index into the flattened (B, H, N, D) view)
NON_FINITE = [
    ("q-nan", "q", (0, 1, 6, 3), math.nan),
    ("q-row-minus-inf", "q", (1, 0, 2, slice(None)), -math.inf),
    ("k-plus-inf", "k", (0, 0, 9, 2), math.inf),
    ("k-minus-inf", "k", (1, 0, 4, 0), -math.inf),
    ("v-nan", "v", (0, 0, 7, 1), math.nan),
    ("v-minus-inf-last-token", "v", (1, 0, -1, 0), -math.inf),
]


def _expected_nan_rows(q, k, v, mask):
    """(B, Hq, N) bool: rows whose q row, or a k/v row the brute-force mask lets them see, is
    not finite (every neighbourhood holds its own query, so no row is empty)."""
    b, hq = q.shape[:2]
    n = mask.shape[-1]
    qf, kf, vf = (x.reshape(x.shape[0], x.shape[1], n, -1) for x in (q, k, v))
    bad_q = ~torch.isfinite(qf).all(-1)
    bad_kv = (~torch.isfinite(kf).all(-1) | ~torch.isfinite(vf).all(-1)).repeat_interleave(hq // k.shape[1], 1)
    return bad_q | (mask.expand(b, hq, n, n) & bad_kv[:, :, None, :]).any(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    ("spatial", "ks", "dl", "causal"), [((16,), 5, 1, False), ((16,), 5, 2, True), ((4, 5), 3, 1, (False, True))]
)
@pytest.mark.parametrize(("label", "name", "idx", "value"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_input_gives_nan_exactly_in_the_rows_that_see_it(
    label, name, idx, value, spatial, ks, dl, causal, dtype
):
    q, k, v = _inputs(spatial, 2, 1, dtype)
    inputs = {"q": q, "k": k, "v": v}
    flat = inputs[name].view(*inputs[name].shape[:2], -1, inputs[name].shape[-1])
    flat[idx] = value
    out, lse = SPEC(q, k, v, kernel_size=ks, dilation=dl, is_causal=causal, return_lse=True, backend="numba")
    mask = brute_force_mask(NeighborhoodParams(ks, dl), tuple(q.shape), tuple(k.shape), causal)
    want_nan = _expected_nan_rows(q, k, v, mask)
    b, hq, n = want_nan.shape
    got, got_lse = out.reshape(b, hq, n, -1), lse.reshape(b, hq, n)
    assert want_nan.any() and not want_nan.all()
    assert torch.isnan(got[want_nan]).all() and torch.isnan(got_lse[want_nan]).all()
    assert torch.isfinite(got[~want_nan]).all() and torch.isfinite(got_lse[~want_nan]).all()
    # The other rows equal dense attention over zeroed non-finite rows: they never read them.
    clean = [torch.where(torch.isfinite(x).all(-1, keepdim=True), x, 0.0) for x in (q, k, v)]
    want, want_lse = _masked_dense(*clean, ks, dl, causal, q.shape[-1] ** -0.5)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(got[~want_nan].double(), want.reshape(b, hq, n, -1)[~want_nan], atol=tol, rtol=0)
    torch.testing.assert_close(got_lse[~want_nan].double(), want_lse.reshape(b, hq, n)[~want_nan], atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["random", "plus-inf", "minus-inf"])
@pytest.mark.parametrize("causal", [False, True])
def test_logits_overflowing_float32_give_nan_not_a_finite_answer(kind, causal):
    # Finite float32 inputs near 1e20: (q * scale) . k overflows float32 (the supported range is
    # "logits finite in the working dtype"), and every row must say so with NaN.
    q, k, v = _inputs((24,), 2, 2, torch.float32)
    if kind == "random":
        q, k = q * 1e20, k * 1e20
    else:
        q, k = torch.full_like(q, 1e20), torch.full_like(k, 1e20 if kind == "plus-inf" else -1e20)
    out, lse = SPEC(q, k, v, kernel_size=5, is_causal=causal, return_lse=True, backend="numba")
    assert torch.isnan(out).all() and torch.isnan(lse).all()
