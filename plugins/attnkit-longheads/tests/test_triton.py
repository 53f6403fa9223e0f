"""The Triton backend against the float64 reference (itself held to a brute-force selection in
``test_longheads.py``), under the Triton interpreter on CPU (``conftest.py`` sets
``TRITON_INTERPRET=1``) at tiny float32 shapes; skipped, with the backend's own reason, where
Triton cannot run."""

import pytest
import torch

import attnkit
from attnkit_longheads import LONGHEADS

SLOW = pytest.mark.slow  # the interpreter pays per program and per op: seconds per case
CASES = [
    # (params, is_causal, tq, tk, hq, hkv, d); the default tier runs the first
    pytest.param(
        {"chunk_size": 2, "chunks": 4, "representation": "mean", "rope_theta": 100.0}, False, 9, 9, 2, 1, 8, id="rope"
    ),
    pytest.param(
        {"chunk_size": 3, "chunks": 3, "representation": "mean"}, True, 5, 14, 2, 2, 8, id="gqa-tq<tk", marks=SLOW
    ),
    pytest.param({"chunk_size": 2, "chunks": 3, "representation": "attention"}, True, 11, 11, 4, 2, 8, marks=SLOW),
    pytest.param({"chunk_size": 3, "chunks": 4, "representation": "mean"}, False, 13, 13, 2, 1, 6, marks=SLOW),
    pytest.param(
        {"chunk_size": 4, "chunks": 3, "representation": "attention", "rope_theta": 10.0},
        True,
        19,
        19,
        4,
        2,
        8,
        marks=SLOW,
    ),
    # a chunk longer than the kernel's BLOCK_N (64) keys
    pytest.param({"chunk_size": 70, "chunks": 3, "representation": "mean"}, True, 150, 150, 1, 1, 4, marks=SLOW),
]


def _skip_unless_triton_runs(q):
    call = attnkit.CallInfo(device=q.device, dtype=q.dtype, q_shape=tuple(q.shape))
    reason = LONGHEADS.backend("triton").reason_not_to_run(call)
    if reason is not None:
        pytest.skip(reason)


def _qkv(tq, tk, hq, hkv, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, hq, tq, d, generator=g),
        torch.randn(1, hkv, tk, d, generator=g),
        torch.randn(1, hkv, tk, d, generator=g),
    )


@pytest.mark.parametrize(("params", "is_causal", "tq", "tk", "hq", "hkv", "d"), CASES)
def test_triton_matches_the_reference(params, is_causal, tq, tk, hq, hkv, d):
    q, k, v = _qkv(tq, tk, hq, hkv, d)
    _skip_unless_triton_runs(q)
    want, want_lse = LONGHEADS(
        q.double(), k.double(), v.double(), is_causal=is_causal, backend="reference", return_lse=True, **params
    )
    got, lse = LONGHEADS(q, k, v, is_causal=is_causal, backend="triton", return_lse=True, **params)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_triton_rope_at_long_shifts_matches_the_reference():
    """Shifts near the sequence length: the kernel's angle reduction keeps float32 accuracy."""
    q, k, v = _qkv(300, 300, 1, 1, 8, seed=3)
    _skip_unless_triton_runs(q)
    params = {"chunk_size": 16, "chunks": 3, "representation": "mean", "rope_theta": 10000.0}
    want = LONGHEADS(q.double(), k.double(), v.double(), is_causal=True, backend="reference", **params)
    got = LONGHEADS(q, k, v, is_causal=True, backend="triton", **params)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5)


@pytest.mark.slow
def test_triton_non_finite_key_poisons_only_the_rows_that_attend_it():
    q, k, v = _qkv(12, 12, 2, 1, 8, seed=1)
    _skip_unless_triton_runs(q)
    v[0, 0, 5, 2] = float("inf")
    params = {"chunk_size": 2, "chunks": 3, "representation": "mean"}
    want = LONGHEADS(q.double(), k.double(), v.double(), is_causal=True, backend="reference", **params)
    got = LONGHEADS(q, k, v, is_causal=True, backend="triton", **params)
    assert torch.equal(torch.isnan(got).any(-1), torch.isnan(want).any(-1))
    assert torch.isnan(got).any() and not torch.isnan(got).all()
    ok = ~torch.isnan(want)
    torch.testing.assert_close(got.double()[ok], want[ok], rtol=0, atol=2e-5)


def test_triton_reason_names_the_missing_piece_on_cpu_without_interpreter():
    reason = LONGHEADS.backend("triton").reason_not_to_run(
        attnkit.CallInfo(device=torch.device("cpu"), dtype=torch.bfloat16, q_shape=(1, 1, 4, 8))
    )
    assert reason is not None and ("triton" in reason.lower() or "interpreter" in reason.lower())
