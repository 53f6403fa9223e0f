"""Triton forward of ``landmark`` against the float64 reference (itself held to the paper's
two softmaxes in test_landmark.py), and the backend's ``can_run`` reasons.

Without CUDA these run under the Triton interpreter (see conftest.py): tiny float32 shapes.
Gradients recompute the reference; a term through the LSE checks that path too. The
interpreter is slow per program, so most cases are slow-marked.
"""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("triton")

from attnkit import CallInfo
from attnkit_landmark import LANDMARK, gpu

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ATOL = 1e-5

# (tq, tk, block_size, hq, hkv, d, dv, is_causal)
CASES = {
    "causal": (13, 13, 4, 2, 2, 8, 8, True),
    "non-causal": (13, 13, 4, 2, 2, 8, 8, False),
    "gqa-tq<tk": (5, 13, 4, 4, 2, 8, 8, True),
    "noncausal-tq<tk": (6, 14, 3, 2, 1, 8, 12, False),
    "block-over-tile": (40, 40, 20, 2, 1, 12, 8, True),
    "partial-block": (23, 23, 6, 2, 2, 16, 16, False),
    "one-query": (1, 11, 5, 2, 2, 8, 8, True),
    "block-2": (9, 9, 2, 1, 1, 8, 8, True),
}


def _inputs(tq, tk, hq, hkv, d, dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, hq, tq, d, generator=g)
    k = torch.randn(1, hkv, tk, d, generator=g)
    v = torch.randn(1, hkv, tk, dv, generator=g)
    return q, k, v


# The interpreter pays per program: two cases in the default tier, the rest slow.
@pytest.mark.parametrize(
    "name", [n if n in ("causal", "noncausal-tq<tk") else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_forward_lse_and_gradients_match_the_reference(name):
    tq, tk, bs, hq, hkv, d, dv, causal = CASES[name]
    q, k, v = _inputs(tq, tk, hq, hkv, d, dv)
    leaves = [x.to(DEVICE).requires_grad_() for x in (q, k, v)]
    out, lse = LANDMARK(*leaves, block_size=bs, is_causal=causal, backend="triton", return_lse=True)
    ref = [x.double().requires_grad_() for x in (q, k, v)]
    want, want_lse = LANDMARK(*ref, block_size=bs, is_causal=causal, backend="reference", return_lse=True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double().cpu(), want.detach(), rtol=0, atol=ATOL)
    torch.testing.assert_close(lse.double().cpu(), want_lse.detach(), rtol=0, atol=ATOL)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * w.to(DEVICE)).sum() + lse.sum(), leaves)
    want_g = torch.autograd.grad((want * w.double()).sum() + want_lse.sum(), ref)
    for a, b in zip(grads, want_g):
        torch.testing.assert_close(a.double().cpu(), b, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_default_tiles(monkeypatch):
    # The tile sizes outside these tests: BLOCK_M is capped at the block's power of two.
    monkeypatch.setattr(gpu.TRITON, "interpreter_blocks", (64, 64))
    q, k, v = _inputs(70, 70, 2, 1, 16, 16)
    got = LANDMARK(q, k, v, block_size=24, is_causal=True, backend="triton")
    want = LANDMARK(q.double(), k.double(), v.double(), block_size=24, is_causal=True, backend="reference")
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    ("name", "idx"),
    [
        ("q", (0, 1, 6, 3)),
        pytest.param("k", (0, 0, 3, 2), marks=pytest.mark.slow),
        pytest.param("k", (0, 0, 7, 0), marks=pytest.mark.slow),
        pytest.param("v", (0, 0, 12, 1), marks=pytest.mark.slow),
        pytest.param("v", (0, 0, 18, 0), marks=pytest.mark.slow),
    ],
    ids=["q", "k-landmark", "k-regular", "v-regular", "v-last-block"],
)
def test_non_finite_input_gives_nan_exactly_where_the_reference_does(name, idx):
    q, k, v = _inputs(20, 20, 2, 1, 8, 8)
    {"q": q, "k": k, "v": v}[name][idx] = float("nan")
    got, lse = LANDMARK(q, k, v, block_size=4, is_causal=True, backend="triton", return_lse=True)
    want, want_lse = LANDMARK(
        q.double(), k.double(), v.double(), block_size=4, is_causal=True, backend="reference", return_lse=True
    )
    bad = want.isnan().any(-1)
    assert bad.any() and not bad.all()
    assert torch.equal(got.isnan().any(-1), bad)
    assert torch.equal(lse.isnan(), want_lse.isnan())
    torch.testing.assert_close(got.double()[~bad], want[~bad], rtol=0, atol=ATOL)


def _call(device="cpu", dtype=torch.float32, head_dim=16):
    return CallInfo(device=torch.device(device), dtype=dtype, q_shape=(1, 1, 8, head_dim))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU/interpreter rules")
def test_can_run_on_cpu_only_under_the_interpreter(monkeypatch):
    assert gpu.TRITON.can_run(_call()) is None
    assert "bfloat16" in gpu.TRITON.can_run(_call(dtype=torch.bfloat16))
    assert "float64" in gpu.TRITON.can_run(_call(dtype=torch.float64))
    monkeypatch.delitem(sys.modules, "attnkit_landmark._triton_kernels", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "TRITON_INTERPRET=1" in gpu.TRITON.can_run(_call())


def test_can_run_reports_missing_triton(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert "triton is not installed" in gpu.TRITON.can_run(_call())
