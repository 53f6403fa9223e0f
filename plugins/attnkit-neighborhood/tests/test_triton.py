"""Triton backend against the brute-force neighbourhood mask (dense attention under it).

Without CUDA these run under the Triton interpreter (see conftest.py): tiny float32 shapes.
Gradients include a term through the LSE, so the backward's ``dLSE`` path is checked too.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("triton")

import attnkit
from attnkit import CallInfo
from attnkit.reference import attention
from attnkit_neighborhood import NeighborhoodParams, gpu
from attnkit_neighborhood.masks import brute_force_mask

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ATOL = 1e-4

# (q shape (B, Hq, *S, D), Hkv, Dv, kernel_size, dilation, is_causal)
CASES = {
    "1d-odd": ((2, 2, 20, 16), 2, 16, 5, 1, False),
    "1d-even": ((1, 2, 19, 16), 2, 16, 4, 1, False),
    "1d-dilation-ragged": ((1, 1, 22, 12), 1, 20, 3, 3, False),
    "1d-causal-dilated": ((1, 2, 21, 16), 2, 16, 5, 2, True),
    "1d-gqa": ((1, 4, 18, 16), 2, 16, 6, 2, False),
    "2d": ((1, 2, 6, 7, 16), 1, 16, (3, 4), (2, 1), (True, False)),
    "3d": ((1, 2, 3, 4, 5, 8), 2, 8, (3, 2, 3), (1, 2, 1), (False, True, False)),
}


def _inputs(shape, hkv, dv, seed=0):
    gen = torch.Generator().manual_seed(seed)
    b, _, *spatial, d = shape
    q = torch.randn(shape, generator=gen)
    k = torch.randn(b, hkv, *spatial, d, generator=gen)
    v = torch.randn(b, hkv, *spatial, dv, generator=gen)
    return q, k, v


def _oracle(q, k, v, params, is_causal, scale):
    """Dense float64 attention under the brute-force mask, reshaped back to the token axes."""
    b, hq, *spatial, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    mask = brute_force_mask(params, tuple(q.shape), tuple(k.shape), is_causal)
    n = mask.shape[0]
    out, lse = attention(
        q.double().reshape(b, hq, n, d),
        k.double().reshape(b, hkv, n, d),
        v.double().reshape(b, hkv, n, dv),
        mask=mask,
        scale=scale,
        return_lse=True,
    )
    return out.reshape(b, hq, *spatial, dv), lse.reshape(b, hq, *spatial)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    # 16-wide tiles make the tiny inputs span several query and key tiles.
    monkeypatch.setattr(gpu.TRITON, "interpreter_blocks", (16, 16))


# The interpreter pays per op: the default tier runs the GQA and 2D cases, the slow tier all.
@pytest.mark.parametrize(
    "name", [n if n in ("1d-gqa", "2d") else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_forward_lse_and_gradients_match_brute_force(name):
    _check_against_brute_force(*CASES[name])


def test_default_tiles(monkeypatch):
    # The tile sizes launches use outside these tests, with tokens crossing a tile border.
    monkeypatch.setattr(gpu.TRITON, "interpreter_blocks", (64, 64))
    _check_against_brute_force((1, 2, 70, 16), 1, 16, 7, 2, False)


def _check_against_brute_force(shape, hkv, dv, ks, dl, causal):
    params = NeighborhoodParams(kernel_size=ks, dilation=dl)
    scale = shape[-1] ** -0.5
    q, k, v = _inputs(shape, hkv, dv)
    gen = torch.Generator().manual_seed(1)
    w_out = torch.randn(*shape[:-1], dv, generator=gen, dtype=torch.float64)
    w_lse = torch.randn(shape[:-1], generator=gen, dtype=torch.float64)

    leaves = [t.detach().to(DEVICE).requires_grad_() for t in (q, k, v)]
    spec = attnkit.get_spec("neighborhood")
    out, lse = spec(*leaves, backend="triton", params=params, is_causal=causal, return_lse=True)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    assert out.shape == (*shape[:-1], dv) and lse.shape == shape[:-1]
    ((out.double().cpu() * w_out).sum() + (lse.double().cpu() * w_lse).sum()).backward()

    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = _oracle(*ref_leaves, params, causal, scale)
    ((ref_out * w_out).sum() + (ref_lse * w_lse).sum()).backward()

    torch.testing.assert_close(out.detach().cpu().double(), ref_out.detach(), atol=ATOL, rtol=0)
    torch.testing.assert_close(lse.detach().cpu().double(), ref_lse.detach(), atol=ATOL, rtol=0)
    for label, got, want in zip("qkv", leaves, ref_leaves):
        assert got.grad is not None, f"no gradient for {label}"
        torch.testing.assert_close(got.grad.cpu().double(), want.grad, atol=ATOL, rtol=0, msg=f"d{label}")


def test_non_contiguous_heads_last_layout():
    # bthd inputs reach the backend as permuted views; the result must not depend on strides.
    shape, hkv, dv, ks, dl, causal = CASES["1d-gqa"]
    q, k, v = (t.transpose(1, 2).contiguous().to(DEVICE) for t in _inputs(shape, hkv, dv))
    spec = attnkit.get_spec("neighborhood")
    got = spec(q, k, v, backend="triton", kernel_size=ks, dilation=dl, layout="bthd")
    want, _ = _oracle(
        *(t.transpose(1, 2).cpu() for t in (q, k, v)), NeighborhoodParams(ks, dl), causal, shape[-1] ** -0.5
    )
    torch.testing.assert_close(got.transpose(1, 2).cpu().double(), want, atol=ATOL, rtol=0)


def _call(device="cpu", dtype=torch.float32, head_dim=16):
    return CallInfo(device=torch.device(device), dtype=dtype, q_shape=(1, 1, 8, head_dim))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU/interpreter rules")
def test_can_run_on_cpu_only_under_the_interpreter(monkeypatch):
    assert gpu.TRITON.can_run(_call()) is None
    assert "bfloat16" in gpu.TRITON.can_run(_call(dtype=torch.bfloat16))
    assert "head dim 512" in gpu.TRITON.can_run(_call(head_dim=512))
    # As if the kernels were not imported yet and the interpreter was off.
    monkeypatch.delitem(sys.modules, "attnkit_neighborhood._triton_kernels", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in gpu.TRITON.can_run(_call())


def test_can_run_reports_missing_triton(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert "triton is not installed" in gpu.TRITON.can_run(_call())


@pytest.mark.parametrize(
    ("name", "idx", "value"),
    [("q", (0, 1, 6, 3), float("nan")), ("k", (0, 0, 9, 2), float("inf")), ("v", (0, 0, 19, 1), float("-inf"))],
    ids=["q-nan", "k-inf", "v-minus-inf-last-token"],
)
def test_non_finite_input_gives_nan_exactly_in_the_rows_that_see_it(name, idx, value):
    # attnkit's rule: NaN (out and LSE) in the rows whose q row or an allowed k/v row is not
    # finite; the other rows are dense attention over the finite rows, untouched.
    q, k, v = _inputs((1, 2, 20, 16), 1, 16)
    {"q": q, "k": k, "v": v}[name][idx] = value
    params = NeighborhoodParams(5, 1)
    out, lse = attnkit.get_spec("neighborhood")(
        q.to(DEVICE), k.to(DEVICE), v.to(DEVICE), kernel_size=5, is_causal=True, return_lse=True, backend="triton"
    )
    mask = brute_force_mask(params, tuple(q.shape), tuple(k.shape), True)
    bad_q = ~torch.isfinite(q).all(-1)
    bad_kv = (~torch.isfinite(k).all(-1) | ~torch.isfinite(v).all(-1)).expand(-1, 2, -1)
    want_nan = bad_q | (mask & bad_kv[:, :, None, :]).any(-1)
    out, lse = out.cpu(), lse.cpu()
    assert want_nan.any() and not want_nan.all()
    assert torch.isnan(out[want_nan]).all() and torch.isnan(lse[want_nan]).all()
    clean = [torch.where(torch.isfinite(x).all(-1, keepdim=True), x, 0.0) for x in (q, k, v)]
    want, want_lse = _oracle(*clean, params, True, 16**-0.5)
    torch.testing.assert_close(out[~want_nan].double(), want[~want_nan], atol=ATOL, rtol=0)
    torch.testing.assert_close(lse[~want_nan].double(), want_lse[~want_nan], atol=ATOL, rtol=ATOL)


def test_logits_overflowing_float32_give_nan_rows():
    q = torch.full((1, 2, 20, 16), 1e20)
    out, lse = attnkit.get_spec("neighborhood")(
        q.to(DEVICE), -q.to(DEVICE), q.to(DEVICE), kernel_size=5, return_lse=True, backend="triton"
    )
    assert torch.isnan(out).all() and torch.isnan(lse).all()
