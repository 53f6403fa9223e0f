"""numba and reference backends against dense float64 attention under the brute-force mask:
outputs, LSE and gradients (through the LSE too), GQA with a kv head shared by shifted and
unshifted query heads, and tiles that cross group borders."""

from __future__ import annotations

import itertools

import pytest
import torch
from _sinklora_oracle import dense_oracle, inputs

from attnkit.registry import CallInfo, choose
from attnkit_sinklora import SF_ATTN, cpu
from attnkit_sinklora.masks import brute_force_mask
from attnkit_sinklora.params import SFAttnParams

# (q shape (B, Hq, T, D), Hkv, params)
CASES = {
    "default": ((2, 4, 29, 16), 2, {}),
    "fixed-g-ragged": ((1, 3, 23, 8), 3, {"group_size": 5, "n_sink": 2}),
    "sinks-span-groups": ((1, 2, 21, 8), 1, {"group_size": 3, "n_sink": 7}),
    "no-sinks": ((1, 2, 17, 8), 2, {"group_size": 4, "n_sink": 0}),
    "shifted-gqa-split": ((1, 6, 26, 8), 3, {"group_size": 7, "n_sink": 4, "shifted": True}),
    "shifted-odd-g": ((2, 4, 19, 8), 2, {"group_size": 5, "n_sink": 1, "shifted": True}),
    "g-equals-t": ((1, 2, 13, 8), 1, {"group_size": 13}),
}


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3-query tiles: several tiles per group, so tile borders inside groups are exercised.
    monkeypatch.setattr(cpu, "TILE_Q", 3)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize(
    ("case", "causal", "dtype"), list(itertools.product(CASES, [False, True], ["float64", "float32"]))
)
def test_forward_matches_dense_oracle(small_tiles: None, backend: str, case: str, causal: bool, dtype: str) -> None:
    shape, hkv, kw = CASES[case]
    dt = getattr(torch, dtype)
    q, k, v = inputs(shape, hkv, dv=12, dtype=dt)
    out, lse = SF_ATTN(q, k, v, backend=backend, is_causal=causal, return_lse=True, **kw)
    want, want_lse = dense_oracle(q, k, v, SFAttnParams(**kw), causal, shape[-1] ** -0.5)
    tol = 1e-10 if dt == torch.float64 else 2e-5
    assert out.dtype == dt and out.shape == (*shape[:3], 12)
    torch.testing.assert_close(out.double(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(lse.double(), want_lse, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", ["default", "shifted-gqa-split", "sinks-span-groups"])
@pytest.mark.parametrize("causal", [False, True])
def test_numba_gradients_match_dense_oracle(small_tiles: None, case: str, causal: bool) -> None:
    shape, hkv, kw = CASES[case]
    q, k, v = (x.requires_grad_() for x in inputs(shape, hkv))
    out, lse = SF_ATTN(q, k, v, backend="numba", is_causal=causal, return_lse=True, **kw)
    gen = torch.Generator().manual_seed(1)
    w, wl = (
        torch.randn(out.shape, generator=gen, dtype=torch.float64),
        torch.randn(lse.shape, generator=gen, dtype=torch.float64),
    )
    got = torch.autograd.grad((out * w).sum() + (lse * wl).sum(), (q, k, v))
    ref = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    want_out, want_lse = dense_oracle(*ref, SFAttnParams(**kw), causal, shape[-1] ** -0.5)
    want = torch.autograd.grad((want_out * w).sum() + (want_lse * wl).sum(), ref)
    for name, g, r in zip("qkv", got, want):
        torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-9, msg=f"d/d{name}")


def test_numba_is_chosen_on_cpu_for_mqa() -> None:
    call = CallInfo(device=torch.device("cpu"), dtype=torch.float32, params=SFAttnParams(), q_shape=(1, 4, 40, 8))
    assert choose(SF_ATTN, call).name == "numba"
    q, k, v = inputs((1, 4, 40, 8), 1, dtype=torch.float32)
    out = SF_ATTN(q, k, v, is_causal=True)
    want, _ = dense_oracle(q, k, v, SFAttnParams(), True, 8**-0.5)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)


def test_longer_sequence_crosses_default_tiles() -> None:
    # T=600, G=150: the default 64-query tiles split every group; 2 shift classes.
    q, k, v = inputs((1, 2, 600, 16), 1, dtype=torch.float32)
    p = SFAttnParams(shifted=True)
    out = SF_ATTN(q, k, v, backend="numba", is_causal=True, params=p)
    want, _ = dense_oracle(q, k, v, p, True, 0.25)
    torch.testing.assert_close(out.double(), want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize(("t", "g", "shift"), [(10, 4, 0), (10, 4, 2), (10, 5, 3), (7, 1, 1), (12, 12, 6)])
def test_group_bounds_partition_the_sequence(t: int, g: int, shift: int) -> None:
    bounds = cpu.group_bounds(t, g, shift)
    assert bounds[0][0] == 0 and bounds[-1][1] == t
    assert all(a < b for a, b in bounds) and all(b == c for (_, b), (c, _) in itertools.pairwise(bounds))
    for s, e in bounds:
        assert len({(p + shift) // g for p in range(s, e)}) == 1


# Non-finite input (attnkit's rule, docs/user-guide.md): NaN rows (and LSE) exactly where the q
# row or an allowed k/v row is not finite; the other rows never read them.
NON_FINITE = [
    ("q-nan", "q", (0, 1, 6, 3), float("nan")),
    ("q-row-minus-inf", "q", (1, 0, 2, slice(None)), float("-inf")),
    ("k-plus-inf-sink", "k", (0, 0, 1, 2), float("inf")),
    ("k-minus-inf", "k", (1, 0, 9, 0), float("-inf")),
    ("v-nan", "v", (0, 0, 13, 1), float("nan")),
    ("v-minus-inf-last-token", "v", (1, 0, 16, 0), float("-inf")),
]


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", ["default", "shifted-gqa-split"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("label", "name", "idx", "value"), NON_FINITE, ids=[c[0] for c in NON_FINITE])
def test_non_finite_input_gives_nan_exactly_in_the_rows_that_see_it(
    small_tiles: None, label: str, name: str, idx: tuple, value: float, causal: bool, case: str, dtype, backend: str
) -> None:
    shape, hkv, kw = CASES[case]
    shape = (2, shape[1], 17, shape[3])
    q, k, v = inputs(shape, hkv, dtype=dtype)
    {"q": q, "k": k, "v": v}[name][idx] = value
    out, lse = SF_ATTN(q, k, v, backend=backend, is_causal=causal, return_lse=True, **kw)
    params = SFAttnParams(**kw)
    mask = brute_force_mask(params, tuple(q.shape), tuple(k.shape), causal)
    g = shape[1] // hkv
    bad_q = ~torch.isfinite(q).all(-1)
    bad_kv = (~torch.isfinite(k).all(-1) | ~torch.isfinite(v).all(-1)).repeat_interleave(g, 1)
    want_nan = bad_q | (mask & bad_kv[:, :, None, :]).any(-1)
    assert want_nan.any() and not want_nan.all()
    assert torch.isnan(out[want_nan]).all() and torch.isnan(lse[want_nan]).all()
    assert torch.isfinite(out[~want_nan]).all() and torch.isfinite(lse[~want_nan]).all()
    clean = [torch.where(torch.isfinite(x).all(-1, keepdim=True), x, 0.0) for x in (q, k, v)]
    want, want_lse = dense_oracle(*clean, params, causal, shape[-1] ** -0.5)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(out[~want_nan].double(), want[~want_nan], atol=tol, rtol=tol)
    torch.testing.assert_close(lse[~want_nan].double(), want_lse[~want_nan], atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["numba", "reference"])
@pytest.mark.parametrize("kind", ["random", "plus-inf", "minus-inf"])
def test_logits_overflowing_float32_give_nan_not_a_finite_answer(backend: str, kind: str) -> None:
    # Finite float32 inputs near 1e20: the logits overflow float32 (the supported range is
    # "logits finite in the working dtype"), and every row must say so with NaN.
    q, k, v = inputs((1, 2, 40, 8), 2, dtype=torch.float32)
    if kind == "random":
        q, k = q * 1e20, k * 1e20
    else:
        q, k = torch.full_like(q, 1e20), torch.full_like(k, 1e20 if kind == "plus-inf" else -1e20)
    out, lse = SF_ATTN(q, k, v, backend=backend, is_causal=True, return_lse=True)
    assert torch.isnan(out).all() and torch.isnan(lse).all()
