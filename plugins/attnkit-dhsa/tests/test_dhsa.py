"""Behaviour of ``dhsa`` against independent oracles: a brute-force selection written out
here in Python loops (from the paper's definition, sharing no code with the plugin) with
attnkit's dense float64 reference, closed forms of the chunk scores, and the extremes of the
budget; every backend."""

import math
import subprocess
import sys

import pytest
import torch

import attnkit
from attnkit.reference import attention as dense
from attnkit_dhsa import DHSA, DhsaParams
from attnkit_dhsa.masks import brute_force_mask
from attnkit_dhsa.selection import chunk_scores, select


def _qkv(tq=13, tk=13, hq=4, hkv=2, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, hq, tq, d, generator=g, dtype=dtype)
    k = torch.randn(2, hkv, tk, d, generator=g, dtype=dtype)
    v = torch.randn(2, hkv, tk, d, generator=g, dtype=dtype)
    return q, k, v


PARAMS = [
    {"block_size": 4, "chunk_size": 2, "top_k": 2, "sink_tokens": 1, "local_tokens": 1},
    {"block_size": 3, "chunk_size": 3, "top_k": 3, "sink_tokens": 0, "local_tokens": 0, "share_heads": False},
    {"block_size": 5, "chunk_size": 2, "top_k": 4, "sink_tokens": 2, "local_tokens": 2, "share_heads": False},
]


def _want(q, k, v, params, is_causal):
    mask = brute_force_mask(DhsaParams(**params), q, k, is_causal)
    return dense(q.double(), k.double(), v.double(), mask=mask, return_lse=True)


@pytest.mark.parametrize("params", PARAMS)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("tq", "tk"), [(13, 13), (5, 13)])
def test_selection_matches_brute_force(params, is_causal, tq, tk):
    q, k, _ = _qkv(tq=tq, tk=tk)
    p = DhsaParams(**params)
    got = select(q, k, p, is_causal).dense(tq, tk)
    if got.shape[1] != 1:
        got = got.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    want = brute_force_mask(p, q, k, is_causal)
    assert torch.equal(got.expand_as(want), want)


@pytest.mark.parametrize("backend", ["reference", "numba", "onnx"])
@pytest.mark.parametrize("params", PARAMS[:2])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("tq", [13, 5])
def test_backends_match_dense_under_brute_force_mask(backend, params, is_causal, tq):
    q, k, v = _qkv(tq=tq)
    want, want_lse = _want(q, k, v, params, is_causal)
    got, lse = DHSA(q, k, v, is_causal=is_causal, backend=backend, return_lse=True, **params)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


def test_float32_selects_what_float64_selects():
    q, k, v = _qkv(tq=29, tk=29, dtype=torch.float32)
    params = {"block_size": 4, "chunk_size": 3, "top_k": 5, "sink_tokens": 1, "local_tokens": 2}
    want, _ = _want(q, k, v, params, True)
    got = DHSA(q, k, v, is_causal=True, backend="numba", **params)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(("tq", "tk", "share"), [(37, 37, True), (5, 37, False)])
def test_triton_matches_dense_under_brute_force_mask(is_causal, tq, tk, share):
    spec = attnkit.get_spec("dhsa")
    q, k, v = _qkv(tq=tq, tk=tk, dtype=torch.float32)
    params = {"block_size": 8, "chunk_size": 3, "top_k": 5, "sink_tokens": 2, "local_tokens": 3, "share_heads": share}
    call = attnkit.CallInfo(device=q.device, dtype=q.dtype, q_shape=tuple(q.shape))
    reason = spec.backend("triton").reason_not_to_run(call)
    if reason is not None:
        pytest.skip(reason)
    want, want_lse = _want(q, k, v, params, is_causal)
    got, lse = spec(q, k, v, is_causal=is_causal, backend="triton", return_lse=True, **params)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=1e-5)


def test_numba_gradients_recompute_the_reference():
    leaves = [x.requires_grad_() for x in _qkv(tq=11, tk=11)]
    params = PARAMS[0]
    out = DHSA(*leaves, is_causal=True, backend="numba", **params)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), leaves)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    want_out, _ = _want(*ref, params, True)
    want = torch.autograd.grad((want_out * w).sum(), ref)
    for got_g, want_g in zip(grads, want):
        torch.testing.assert_close(got_g, want_g, rtol=0, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("is_causal", [False, True])
def test_flex_matches_dense_under_brute_force_mask(is_causal):
    q, k, v = _qkv(tq=40, tk=40, dtype=torch.float32)
    params = {"block_size": 8, "chunk_size": 4, "top_k": 6, "sink_tokens": 2, "local_tokens": 2}
    want, _ = _want(q, k, v, params, is_causal)
    got = DHSA(q, k, v, is_causal=is_causal, backend="flex", **params)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_at_other_lengths(tmp_path):
    pytest.importorskip("onnxruntime")
    from attnkit.export import check_attention_export

    params = {"block_size": 4, "chunk_size": 2, "top_k": 3, "sink_tokens": 1, "local_tokens": 1}
    errors = check_attention_export(
        DHSA, tmp_path / "dhsa.onnx", trace_shape=(1, 2, 16, 8), test_shapes=[(2, 2, 9, 8), (1, 2, 23, 8)],
        kv_heads=1, is_causal=True, **params,
    )  # fmt: skip
    assert set(errors) and all(err < 1e-4 for err in errors.values()), errors


def test_full_budget_is_causal_dense_attention():
    q, k, v = _qkv(tq=13, tk=13)
    got = DHSA(q, k, v, is_causal=True, block_size=4, chunk_size=2, top_k=13, sink_tokens=0, local_tokens=0)
    torch.testing.assert_close(got, dense(q, k, v, is_causal=True), rtol=0, atol=1e-12)


def test_chunk_equal_to_block_selects_whole_chunks_by_mean_pooled_score():
    # Uniform chunks of the block size, no sinks or local keys, top_k two chunks' worth: each
    # block keeps itself and the two earlier chunks whose mean-pooled keys score highest
    # against its mean-pooled queries (sqrt(b) is then a constant factor).
    q, k, _ = _qkv(tq=24, tk=24, hq=2, hkv=2)
    p = DhsaParams(block_size=4, chunk_size=4, top_k=8, sink_tokens=0, local_tokens=0)
    got = select(q, k, p, True).dense(24, 24)[:, 0]  # (B, Tq, Tk), shared heads
    qm = q.mean(1).reshape(2, 6, 4, 8).mean(2)
    km = k.mean(1).reshape(2, 6, 4, 8).mean(2)
    for b in range(2):
        for blk in range(3, 6):
            scores = qm[b, blk] @ km[b, :blk].T
            best = set(torch.argsort(scores, descending=True)[:2].tolist())
            chunks = {j // 4 for j in range(blk * 4) if got[b, blk * 4 + 3, j]}
            assert chunks == best


def test_length_normalised_chunk_representation():
    # A chunk of n copies of key x scores q_bar . x * sqrt(n): between a mean and a sum.
    d, n = 8, 4
    g = torch.Generator().manual_seed(3)
    x = torch.randn(d, generator=g, dtype=torch.float64)
    k = x.expand(1, 1, 3 * n, d).clone()
    q = torch.randn(1, 1, 3 * n, d, generator=g, dtype=torch.float64)
    p = DhsaParams(block_size=3 * n, chunk_size=n)
    scores = chunk_scores(q, k, p)  # (1, 1, 1 block, 3 chunks)
    q_bar = q[0, 0].mean(0) * math.sqrt(3 * n)
    torch.testing.assert_close(scores[0, 0, 0], (q_bar @ x * math.sqrt(n)).expand(3), rtol=1e-12, atol=1e-12)


def test_sinks_own_block_and_local_keys_are_always_kept_once():
    q, k, _ = _qkv(tq=30, tk=30)
    p = DhsaParams(block_size=4, chunk_size=3, top_k=2, sink_tokens=3, local_tokens=2, share_heads=False)
    sel = select(q, k, p, True)
    index, valid = sel.per_query(30)
    for i in range(30):
        start = i // 4 * 4
        must = set(range(min(3, i + 1))) | set(range(max(start - 2, 0), i + 1))
        for b in range(2):
            for h in range(2):
                keys = index[b, h, i][valid[b, h, i]].tolist()
                assert len(keys) == len(set(keys))  # no key counted twice
                assert must <= set(keys)
                assert len(keys) <= len(must | set(range(start, start + 4))) + p.top_k


def test_selection_is_shared_by_the_heads_unless_asked():
    q, k, _ = _qkv(tq=20, tk=20)
    p = DhsaParams(block_size=4, chunk_size=2, top_k=3, sink_tokens=0, local_tokens=0)
    assert select(q, k, p, True).index.shape[1] == 1
    assert select(q, k, DhsaParams(**{**p.__dict__, "share_heads": False}), True).index.shape[1] == 2


def test_registered_through_attnkit():
    attnkit.load_plugins()
    assert attnkit.get_spec("dhsa").name == "dhsa"


def test_entry_point_imports_no_heavy_module():
    code = "import sys, attnkit_dhsa; print(sorted(m for m in ('torch', 'numba', 'triton') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("block_size", 0, ValueError),
        ("chunk_size", 0, ValueError),
        ("top_k", -1, ValueError),
        ("sink_tokens", -2, ValueError),
        ("local_tokens", -1, ValueError),
        ("block_size", 2.5, TypeError),
        ("top_k", True, TypeError),
        ("share_heads", 1, TypeError),
    ],
)
def test_bad_parameters_name_the_parameter_and_value(field, value, error):
    with pytest.raises(error, match=rf"{field}.*{value!r}" if error is TypeError else rf"{field}.*{value}"):
        DhsaParams(**{field: value})
