"""Behaviour of ``core_context`` against independent oracles: CCA written out with Python
loops (``_cca_oracle``), causal full attention at ``g = 1`` and ``s >= L``, key counts from
the paper's formula, and the perturbation of future tokens."""

import pytest
import torch
from _cca_oracle import cca, visible

import attnkit
from attnkit.reference import attention as dense
from attnkit_core_context import CORE_CONTEXT, CoreContextParams
from attnkit_core_context.pooling import fused_mask


def _qkv(n=23, hq=4, hkv=2, d=8, seed=0, dtype=torch.float64, b=2):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, n, d, generator=gen, dtype=dtype) for h in (hq, hkv, hkv))


BACKENDS = ["reference", "numba"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("g", "s", "pool"), [(3, 2, "cca"), (4, 0, "cca"), (5, 7, "cca"), (3, 4, "mean"), (30, 2, "cca")]
)
def test_matches_the_loop_oracle(backend, g, s, pool):
    q, k, v = _qkv()
    got = CORE_CONTEXT(q, k, v, group_size=g, window=s, pool=pool, is_causal=True, backend=backend)
    torch.testing.assert_close(got, cca(q, k, v, g, s, pool), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("s", [0, 1, 6])
def test_group_size_one_is_causal_full_attention(backend, s):
    q, k, v = _qkv(n=31)
    want, want_lse = dense(q, k, v, is_causal=True, return_lse=True)
    got, lse = CORE_CONTEXT(q, k, v, group_size=1, window=s, is_causal=True, backend=backend, return_lse=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_covering_the_sequence_is_causal_attention(backend):
    q, k, v = _qkv(n=17)
    got = CORE_CONTEXT(q, k, v, group_size=4, window=17, is_causal=True, backend=backend)
    torch.testing.assert_close(got, dense(q, k, v, is_causal=True), rtol=0, atol=1e-13)


def _keys_per_query(backend, n, g, s):
    """Count the keys each query attends to through a backend: with ``q = 0`` every visible
    logit is 0, so ``lse = log(number of visible keys)``."""
    q = torch.zeros(1, 1, n, 4, dtype=torch.float64)
    k = torch.randn(1, 1, n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, lse = CORE_CONTEXT(q, k, k, group_size=g, window=s, is_causal=True, backend=backend, return_lse=True)
    return torch.exp(lse[0, 0]).round().long().tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "g", "s"), [(64, 4, 8), (61, 3, 5), (40, 1, 0), (50, 7, 0)])
def test_keys_each_query_sees(backend, n, g, s):
    """Per row: ``floor((r - s) / g) + (r - n_pool(r))`` keys (the spec's count), from the kernel."""
    want = [sum(len(x) if isinstance(x, list) else x for x in visible(t + 1, g, s)) for t in range(n)]
    assert _keys_per_query(backend, n, g, s) == want
    assert fused_mask(n, g, s).sum(dim=1).tolist() == want
    p = CoreContextParams(group_size=g, window=s)
    assert [p.keys_seen(t) for t in range(n)] == want


@pytest.mark.parametrize(("n", "g", "s"), [(4096, 16, 256), (2048, 8, 128), (1000, 16, 100)])
def test_kv_fraction_is_about_l_over_g_plus_s(n, g, s):
    """The last query (the KV cache after a prefill of ``L``) holds ``(L - s)//g`` core tokens
    and ``s + (L - s) % g`` raw ones: ``((L - s)/g + s)/L`` to within one group, which is the
    paper's ``(L/g + s)/L`` less ``s/g`` (the window's tokens are not pooled as well)."""
    keys = _keys_per_query("numba", n, g, s)[-1]
    assert keys == (n - s) // g + s + (n - s) % g
    assert abs(keys - ((n - s) / g + s)) < g
    assert keys / n == pytest.approx((n / g + s) / n, abs=(s / g + g) / n)


def test_kv_fraction_at_128k_is_the_papers_93_percent_reduction():
    p = CoreContextParams(group_size=16, window=1024)
    n = 131072
    keys = p.keys_seen(n - 1)
    assert keys == 8128 + 1024
    assert 1 - keys / n >= 0.93  # "93% KV cache reduction" (paper: (8192 + 1024) / 131072 = 7%)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_future_token_changes_a_query(backend):
    q, k, v = _qkv(n=29)
    base = CORE_CONTEXT(q, k, v, group_size=3, window=4, is_causal=True, backend=backend)
    for t in (0, 7, 15, 28):
        q2, k2, v2 = (x.clone() for x in (q, k, v))
        for x in (q2, k2, v2):
            x[:, :, t + 1 :] += 10 * torch.randn_like(x[:, :, t + 1 :])
        out = CORE_CONTEXT(q2, k2, v2, group_size=3, window=4, is_causal=True, backend=backend)
        torch.testing.assert_close(out[:, :, : t + 1], base[:, :, : t + 1], rtol=0, atol=0)
        if t + 1 < q.shape[2]:
            assert not torch.equal(out[:, :, t + 1 :], base[:, :, t + 1 :])


def test_core_weights_sum_to_one():
    """Values of ones pool to ones: every core token's weights sum to 1 (and the output is 1)."""
    q, k, _ = _qkv(n=24)
    v = torch.ones(2, 2, 24, 8, dtype=torch.float64)
    for backend in BACKENDS:
        got = CORE_CONTEXT(q, k, v, group_size=4, window=2, is_causal=True, backend=backend)
        torch.testing.assert_close(got, torch.ones_like(got), rtol=0, atol=1e-14)


def test_reference_gradients_match_the_loop_oracle():
    leaves = [x.requires_grad_() for x in _qkv(n=11, hq=2, hkv=1, d=4, b=1)]
    out = CORE_CONTEXT(*leaves, group_size=3, window=2, is_causal=True, backend="reference")
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), leaves)
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    want = torch.autograd.grad((cca(*ref, 3, 2) * w).sum(), ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_numba_gradients_recompute_the_reference():
    leaves = [x.requires_grad_() for x in _qkv(n=13)]
    ref = [x.detach().clone().requires_grad_() for x in leaves]
    kw = {"group_size": 3, "window": 2, "is_causal": True}
    got = torch.autograd.grad(CORE_CONTEXT(*leaves, backend="numba", **kw).square().sum(), leaves)
    want = torch.autograd.grad(CORE_CONTEXT(*ref, backend="reference", **kw).square().sum(), ref)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _triton_or_skip(q):
    spec = attnkit.get_spec("core_context")
    call = attnkit.CallInfo(device=q.device, dtype=q.dtype, q_shape=tuple(q.shape))
    reason = spec.backend("triton").reason_not_to_run(call)
    if reason is not None:
        pytest.skip(reason)
    return spec


def test_triton_matches_the_loop_oracle():
    q, k, v = _qkv(n=37, dtype=torch.float32, b=1)
    spec = _triton_or_skip(q)
    got = spec(q, k, v, group_size=3, window=5, is_causal=True, backend="triton")
    torch.testing.assert_close(got.double(), cca(q, k, v, 3, 5), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("pool", "hkv"),
    # one compile in the quick tier; the other layouts each compile again
    [("cca", 2), pytest.param("mean", 2, marks=pytest.mark.slow), pytest.param("cca", 4, marks=pytest.mark.slow)],
)
def test_flex_matches_the_loop_oracle(pool, hkv):
    # GQA with per-head core tokens (cca), shared ones (mean) and MHA; L not a multiple of g
    q, k, v = _qkv(n=37, hkv=hkv, dtype=torch.float32, b=1)
    got = CORE_CONTEXT(q, k, v, group_size=3, window=5, pool=pool, is_causal=True, backend="flex")
    torch.testing.assert_close(got.double(), cca(q.double(), k.double(), v.double(), 3, 5, pool), rtol=0, atol=2e-6)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "g", "s"), [(200, 16, 32), (50, 16, 0), (33, 1, 3), (5, 16, 8), (130, 8, 100)])
def test_flex_sweep(n, g, s):
    # past the CPU template's 128-key block, fewer tokens than one group, g = 1, s > most of L
    q, k, v = _qkv(n=n, dtype=torch.float32, b=2)
    want = CORE_CONTEXT(q.double(), k.double(), v.double(), group_size=g, window=s, is_causal=True, backend="reference")
    got = CORE_CONTEXT(q, k, v, group_size=g, window=s, is_causal=True, backend="flex")
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)


@pytest.mark.slow
def test_flex_rule_builds_under_the_compiled_block_mask_builder():
    # long sequences build their BlockMask with torch.compile(create_block_mask), which once
    # failed on this mask_mod at T=16384; the block mask must equal the fused mask's blocks
    from torch.nn.attention.flex_attention import create_block_mask

    from attnkit_core_context.flex import mask_mod

    n, g, s = 512, 16, 128
    fn = mask_mod(n // g, g, s)
    compiled = torch.compile(create_block_mask)(fn, None, None, n, n + n // g, device="cpu")
    dense = fused_mask(n, g, s)
    blocks = compiled.to_dense()[0, 0].bool()  # (N / 128, M / 128) tiles holding a visible pair
    want = torch.nn.functional.pad(dense, (0, -(n + n // g) % 128)).reshape(n // 128, 128, -1, 128).any(3).any(1)
    assert torch.equal(blocks, want)


@pytest.mark.slow
@pytest.mark.parametrize(("n", "g", "s"), [(70, 4, 9), (50, 16, 0), (33, 1, 3), (64, 5, 40)])
def test_triton_sweep(n, g, s):
    q, k, v = _qkv(n=n, dtype=torch.float32)
    spec = _triton_or_skip(q)
    want, want_lse = CORE_CONTEXT(
        q.double(), k.double(), v.double(), group_size=g, window=s, is_causal=True, backend="reference", return_lse=True
    )
    got, lse = spec(q, k, v, group_size=g, window=s, is_causal=True, backend="triton", return_lse=True)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_runs_at_two_other_lengths():
    """The reference traced at L=24 runs in onnxruntime at L=37 and L=64 (lengths the group
    size does not divide) and matches the float64 reference."""
    pytest.importorskip("onnxruntime")
    from attnkit_contract.checks import check_onnx_export

    check_onnx_export(CORE_CONTEXT, "reference")


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_onnx_graph_runs_at_every_length_including_fewer_than_two_groups(causal, tmp_path):
    """Traced at L=24 (g=3): lengths with no or one complete group (m = 0, 1), lengths g does
    not divide, and GQA, all against the float64 reference."""
    pytest.importorskip("onnxruntime")
    from attnkit.export.onnx import check_attention_export

    lengths = (1, 2, 5, 7, 37, 64)
    errors = check_attention_export(
        CORE_CONTEXT, tmp_path / "cca.onnx", trace_shape=(1, 4, 24, 8), test_shapes=[(1, 4, n, 8) for n in lengths],
        kv_heads=2, is_causal=causal, group_size=3, window=2,
    )  # fmt: skip
    assert sorted(shape[2] for shape in errors) == sorted(lengths)
    assert max(errors.values()) < 1e-5, errors


def test_registered_through_attnkit():
    attnkit.load_plugins()
    assert attnkit.get_spec("core_context") is not None


def test_cross_attention_is_refused_with_the_sizes():
    q, k, v = _qkv(n=9)
    with pytest.raises(ValueError, match="q has 4 tokens and k has 9"):
        CORE_CONTEXT(q[:, :, :4], k, v, group_size=2, window=1, is_causal=True)


@pytest.mark.parametrize(
    ("kw", "error", "name"),
    [
        ({"group_size": 0}, ValueError, "group_size"),
        ({"group_size": 2.0}, TypeError, "group_size"),
        ({"window": -1}, ValueError, "window"),
        ({"window": True}, TypeError, "window"),
        ({"pool": "max"}, ValueError, "pool"),
        ({"pool": 1}, TypeError, "pool"),
    ],
)
def test_bad_parameters_name_themselves(kw, error, name):
    with pytest.raises(error, match=name):
        CoreContextParams(**kw)


def test_entry_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, attnkit_core_context; print(any(m in sys.modules for m in ('torch', 'numba', 'triton')))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


@pytest.mark.parametrize(("g", "s"), [(5, 7), (16, 64), (4, 0)])
def test_numba_matches_the_oracle_across_query_tiles(g, s):
    """Sequences longer than the numba kernel's tile of query rows: tiles whose rows see
    different numbers of core tokens, and a last partial tile."""
    from attnkit_core_context.cpu import TILE

    n = 2 * TILE + 22
    q, k, v = _qkv(n=n, b=1, hq=2, hkv=1, d=4)
    got, lse = CORE_CONTEXT(q, k, v, group_size=g, window=s, is_causal=True, backend="numba", return_lse=True)
    torch.testing.assert_close(got, cca(q, k, v, g, s), rtol=0, atol=1e-12)
    want_lse = CORE_CONTEXT(q, k, v, group_size=g, window=s, is_causal=True, backend="reference", return_lse=True)[1]
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


def test_numba_keeps_a_non_finite_key_from_rows_that_cannot_see_it():
    """A NaN key at token 70 (group 17 with g = 4) poisons its core token; in the tile of
    rows 64..127 the rows 64..69 see neither it nor its core token and stay finite."""
    from attnkit_core_context.cpu import TILE

    assert TILE == 64  # the scenario below is laid out for this tile
    q, k, v = _qkv(n=150, b=1, hq=2, hkv=1, d=4)
    k[0, 0, 70, 1] = float("nan")
    kw = {"group_size": 4, "window": 8, "is_causal": True}
    got = CORE_CONTEXT(q, k, v, backend="numba", **kw)
    want = CORE_CONTEXT(q, k, v, backend="reference", **kw)
    assert torch.isfinite(got[:, :, :70]).all() and torch.isnan(got[:, :, 70:]).all()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12, equal_nan=True)
