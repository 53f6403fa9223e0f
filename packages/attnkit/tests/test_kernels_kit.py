"""The backend kit (attnkit.kernels): canonical calls, autograd glue, numba launch, flex from a
mask_mod, Triton reasons, traceable formulations, registration and the declared benchmark.

The oracle throughout is attnkit's dense float64 reference under a brute-force band mask
written with Python loops (``_band_mask``), sharing no code with what is tested.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys

import numpy as np
import pytest
import torch

from attnkit import AttentionSpec, CallInfo
from attnkit.kernels import BACKEND_ORDER, KernelCall, kernel, standard_backends
from attnkit.kernels import autograd as kit_autograd
from attnkit.kernels import cpu as kit_cpu
from attnkit.kernels import flex as kit_flex
from attnkit.kernels import gpu as kit_gpu
from attnkit.kernels import onnx as kit_onnx
from attnkit.reference import attention as dense
from attnkit.testing import registered_specs

# ---------------------------------------------------------------------------------------------
# A banded test spec written with the kit: |i - j| <= window (optionally causal).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BandParams:
    window: int = 2


def _band_mask(n: int, window: int, causal: bool) -> torch.Tensor:
    m = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            m[i, j] = abs(i - j) <= window and (not causal or j <= i)
    return m


def band_mask_mod(window: int, causal: bool, device: torch.device | str = "cpu"):  # type: ignore[no-untyped-def]
    w = torch.tensor(window, device=device)

    def band(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        ok = (q_idx - kv_idx).abs() <= w
        return ok & (kv_idx <= q_idx) if causal else ok

    return band


def band_rule(call: KernelCall) -> kit_flex.MaskRule:
    return kit_flex.MaskRule(band_mask_mod, (call.params.window, call.is_causal))


@kernel
def band_reference(call: KernelCall):  # type: ignore[no-untyped-def]
    allowed = kit_flex.dense_mask(band_rule(call), call.q_len, call.kv_len)
    return kit_onnx.masked_attention(call, allowed)


band_flex = kit_flex.backend(band_rule)


def brute_force(params, q_shape, kv_shape, is_causal):  # type: ignore[no-untyped-def]
    return _band_mask(q_shape[2], params.window, bool(is_causal))


BAND = AttentionSpec(
    name="kitband",
    params=BandParams,
    backends=standard_backends(
        "test_kernels_kit",
        "unused",
        reference={"impl": band_reference, "traceable": True},
        flex={"impl": band_flex},
    ),
    mask=brute_force,
)


@pytest.fixture
def band_spec():  # type: ignore[no-untyped-def]
    with registered_specs(BAND, name="kit-band-test") as (spec,):
        yield spec


def _qkv(b=2, hq=4, hkv=2, spatial=(9,), d=8, dv=None, dtype=torch.float64, seed=0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, *spatial, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, *spatial, d, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, *spatial, dv or d, generator=g, dtype=dtype)
    return q, k, v


def _dense_band(q, k, v, window, causal, scale=None):  # type: ignore[no-untyped-def]
    b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    n = int(np.prod(q.shape[2:-1]))
    out, lse = dense(
        q.reshape(b, hq, n, -1),
        k.reshape(b, hkv, n, -1),
        v.reshape(b, hkv, n, -1),
        mask=_band_mask(n, window, causal),
        scale=scale,
        return_lse=True,
    )
    return out.reshape(*q.shape[:-1], v.shape[-1]), lse.reshape(q.shape[:-1])


# ---------------------------------------------------------------------------------------------
# KernelCall and kernel()
# ---------------------------------------------------------------------------------------------


def test_kernel_call_flattens_groups_and_restores() -> None:
    q, k, v = _qkv(spatial=(3, 4), hq=6, hkv=2, dv=5)
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=(True, False), scale=0.5, return_lse=True)
    assert call.q.shape == (2, 6, 12, 8) and call.v.shape == (2, 2, 12, 5)
    assert (call.q_len, call.kv_len, call.group, call.value_dim) == (12, 12, 3, 5)
    assert call.causal == (True, False) and call.is_causal
    grouped = call.grouped_q()
    # Query head h belongs to key/value head h // G.
    torch.testing.assert_close(grouped[:, 1, 2], q[:, 5].reshape(2, 12, 8), rtol=0, atol=0)
    out, lse = call.result(torch.zeros(2, 6, 12, 5, dtype=torch.float32), torch.zeros(2, 6, 12))
    assert out.shape == (2, 6, 3, 4, 5) and out.dtype == torch.float64 and lse.shape == (2, 6, 3, 4)
    one_flag = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=1.0)
    assert one_flag.causal == (False, False) and not one_flag.is_causal


def test_result_without_lse_names_the_fix() -> None:
    q, k, v = _qkv()
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=1.0, return_lse=True)
    with pytest.raises(ValueError, match="return_lse=False"):
        call.result(torch.zeros(2, 4, 9, 8))


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_wrapped_backend_matches_dense_reference(causal: bool) -> None:
    q, k, v = _qkv(spatial=(3, 3))
    got, lse = band_reference(q, k, v, params=BandParams(2), is_causal=causal, scale=0.3, return_lse=True)
    want, want_lse = _dense_band(q, k, v, 2, causal, scale=0.3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)
    only_out = band_reference(q, k, v, params=BandParams(2), is_causal=causal, scale=0.3, return_lse=False)
    torch.testing.assert_close(only_out, want, rtol=0, atol=1e-12)
    assert band_reference.kernel_fn.__name__ == "band_reference"


def test_kernel_check_runs_on_the_callers_tensors() -> None:
    seen = []

    def check(q, k, v):  # type: ignore[no-untyped-def]
        seen.append(tuple(q.shape))
        raise ValueError("refused by check")

    impl = kernel(lambda call: call.q, check=check)
    q, k, v = _qkv(spatial=(2, 5))
    with pytest.raises(ValueError, match="refused by check"):
        impl(q, k, v, params=None, is_causal=False, scale=1.0, return_lse=False)
    assert seen == [(2, 4, 2, 5, 8)]


# ---------------------------------------------------------------------------------------------
# autograd glue
# ---------------------------------------------------------------------------------------------


def _numpy_forward(call: KernelCall):  # type: ignore[no-untyped-def]
    """Band attention in numpy (outside autograd), like a kernel launch would be."""
    q, k, v = (x.detach().numpy() for x in (call.q, call.k, call.v))
    g = call.group
    n = call.q_len
    m = _band_mask(n, call.params.window, call.is_causal).numpy()
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("bhnd,bhmd->bhnm", q, kk) * call.scale
    s = np.where(m, s, -np.inf)
    mx = s.max(-1, keepdims=True)
    e = np.exp(s - mx)
    lse = (mx + np.log(e.sum(-1, keepdims=True)))[..., 0]
    out = np.einsum("bhnm,bhmd->bhnd", e / e.sum(-1, keepdims=True), vv)
    return torch.from_numpy(out), torch.from_numpy(lse)


def _recompute(call: KernelCall):  # type: ignore[no-untyped-def]
    return band_reference.kernel_fn(call)


@pytest.mark.parametrize("use", ["out", "lse", "both"])
def test_recompute_gives_the_reference_gradients(use: str) -> None:
    q, k, v = (x.requires_grad_() for x in _qkv(hq=4, hkv=1))
    impl = kit_cpu.numba_backend(_numpy_forward, recompute=_recompute)
    out, lse = impl(q, k, v, params=BandParams(2), is_causal=True, scale=0.4, return_lse=True)
    g = torch.Generator().manual_seed(3)
    w_out, w_lse = (
        torch.randn(out.shape, generator=g, dtype=out.dtype),
        torch.randn(lse.shape, generator=g, dtype=out.dtype),
    )
    loss = {"out": (out * w_out).sum(), "lse": (lse * w_lse).sum(), "both": (out * w_out).sum() + (lse * w_lse).sum()}
    grads = torch.autograd.grad(loss[use], (q, k, v))
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    r_out, r_lse = _dense_band(*leaves, 2, True, scale=0.4)
    r_loss = {"out": (r_out * w_out).sum(), "lse": (r_lse * w_lse).sum()}
    want = torch.autograd.grad(r_loss.get(use, r_loss["out"] + r_loss["lse"]), leaves, allow_unused=True)
    for got_g, want_g, x in zip(grads, want, leaves):
        # The LSE does not depend on v: its gradient there is zero.
        torch.testing.assert_close(got_g, torch.zeros_like(x) if want_g is None else want_g, rtol=0, atol=1e-10)


def test_backward_kernel_receives_saved_tensors_and_zero_d_out() -> None:
    seen = {}

    def backward(call, out, lse, d_out, d_lse):  # type: ignore[no-untyped-def]
        seen.update(q=call.q, d_out=d_out, d_lse=d_lse)
        return torch.ones_like(call.q), torch.ones_like(call.k), torch.ones_like(call.v)

    q, k, v = (x.requires_grad_() for x in _qkv())
    run = kit_autograd.differentiable(_numpy_forward, backward=backward)
    call = KernelCall.from_inputs(q, k, v, params=BandParams(1), is_causal=False, scale=1.0, return_lse=True)
    _, lse = run(call)
    lse.sum().backward()
    assert torch.equal(seen["q"], call.q.detach())
    assert torch.count_nonzero(seen["d_out"]) == 0 and seen["d_lse"] is not None
    assert torch.equal(q.grad, torch.ones_like(q))


def test_no_grad_calls_skip_autograd_and_once_differentiable_refuses_double_backward() -> None:
    q, k, v = _qkv()
    run = kit_autograd.differentiable(_numpy_forward, recompute=_recompute, once_differentiable=True)
    call = KernelCall.from_inputs(q, k, v, params=BandParams(1), is_causal=False, scale=1.0)
    out, _ = run(call)
    assert out.grad_fn is None
    q.requires_grad_()
    call = call.replace(q=call.q.detach().requires_grad_())
    out, _ = run(call)
    (g,) = torch.autograd.grad(out.sum(), call.q, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
    with pytest.raises(ValueError, match="not both"):
        kit_autograd.differentiable(_numpy_forward, recompute=_recompute, backward=lambda *a: a)


def test_softmax_delta_is_rowsum_minus_dlse() -> None:
    out, d_out = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    d_lse = torch.randn(2, 3, 4)
    want = (out * d_out).sum(-1) - d_lse
    torch.testing.assert_close(kit_autograd.softmax_delta(out, d_out, d_lse), want)
    torch.testing.assert_close(kit_autograd.softmax_delta(out, d_out, None), want + d_lse)


# ---------------------------------------------------------------------------------------------
# numba launch
# ---------------------------------------------------------------------------------------------


def test_cpu_check_names_the_problem() -> None:
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(TypeError, match="float32 or all float64"):
        kit_cpu.check(q.half(), k.half(), v.half())
    with pytest.raises(TypeError, match="float32 or all float64"):
        kit_cpu.check(q, k.double(), v)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        kit_cpu.check(q[:, :1], k, v)
    with pytest.raises(ValueError, match="same token axes"):
        kit_cpu.check(q, k[:, :, :6], v[:, :, :6])
    kit_cpu.check(q[:, :, :3], k, v, same_tokens=False)
    with pytest.raises(TypeError, match=r"q must be a torch\.Tensor"):
        kit_cpu.check(q.numpy(), k, v)


def test_numba_can_run_reasons() -> None:
    assert kit_cpu.can_run(CallInfo(device=torch.device("cpu"), dtype=torch.float32)) is None
    assert "float16" in kit_cpu.can_run(CallInfo(device=torch.device("cpu"), dtype=torch.float16))
    assert "cuda" in kit_cpu.can_run(CallInfo(device=torch.device("cuda"), dtype=torch.float32))


def test_launch_limits_blas_and_sets_numba_threads_for_its_duration() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    with kit_cpu.launch(threads=1):
        assert numba.get_num_threads() == 1
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    assert numba.get_num_threads() == before


def test_empty_outputs_and_as_numpy() -> None:
    q, k, v = _qkv(dv=3, dtype=torch.float32)
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=1.0)
    out, lse = kit_cpu.empty_outputs(call)
    assert out.shape == (2, 4, 9, 3) and lse.shape == (2, 4, 9) and out.dtype == torch.float32
    t = torch.arange(6.0).reshape(2, 3).t()
    a = kit_cpu.as_numpy(t)
    assert a.flags["C_CONTIGUOUS"] and a.tolist() == t.tolist()


# ---------------------------------------------------------------------------------------------
# non-finite input (docs/user-guide.md): NaN exactly in the rows that may attend to it
# ---------------------------------------------------------------------------------------------


def _band_nan_rows(q, k, v, window, causal):  # type: ignore[no-untyped-def]
    """(B, Hq, N): rows whose q row or a k/v row in their band holds a NaN or an infinity."""
    mask = _band_mask(q.shape[2], window, causal)
    g = q.shape[1] // k.shape[1]
    bad_q = ~torch.isfinite(q).all(-1)
    bad_kv = (~torch.isfinite(k).all(-1) | ~torch.isfinite(v).all(-1)).repeat_interleave(g, 1)
    return bad_q | (mask & bad_kv[:, :, None, :]).any(-1)


def _assert_rule(out, q, k, v, window, causal):  # type: ignore[no-untyped-def]
    want_nan = _band_nan_rows(q, k, v, window, causal)
    assert want_nan.any() and not want_nan.all()
    assert torch.isnan(out[want_nan]).all(), "a row that may attend to a non-finite input is not NaN"
    assert torch.isfinite(out[~want_nan]).all(), "NaN reached a row that may not attend to it"
    clean = [torch.where(torch.isfinite(x).all(-1, keepdim=True), x, 0.0).double() for x in (q, k, v)]
    want, _ = _dense_band(*clean, window, causal)
    torch.testing.assert_close(out[~want_nan].double(), want[~want_nan], rtol=1e-5, atol=1e-5)


def _spreading_forward(call: KernelCall):  # type: ignore[no-untyped-def]
    """A kernel that only propagates NaN: probabilities (0 where masked) times every value."""
    allowed = _band_mask(call.q_len, call.params.window, call.is_causal)
    g = call.group
    kk, vv = call.k.repeat_interleave(g, 1), call.v.repeat_interleave(g, 1)
    s = (call.q @ kk.transpose(-1, -2) * call.scale).masked_fill(~allowed, float("-inf"))
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    return (e / total) @ vv, (m + torch.log(total)).squeeze(-1)


@pytest.mark.parametrize("mode", ["guard", "keys"])
def test_numba_backend_guard_gives_a_nan_propagating_kernel_the_rule(mode: str) -> None:
    pytest.importorskip("numba")
    impl = kit_cpu.numba_backend(_spreading_forward, non_finite=mode)
    raw = kit_cpu.numba_backend(_spreading_forward, non_finite="kernel")
    for name, idx, value in (("v", (0, 1, 8, 2), float("nan")), ("k", (1, 0, 3, 1), -float("inf"))):
        q, k, v = _qkv(dtype=torch.float32)
        {"q": q, "k": k, "v": v}[name][idx] = value
        kw = {"params": BandParams(2), "is_causal": True, "scale": 8**-0.5, "return_lse": False}
        _assert_rule(impl(q, k, v, **kw), q, k, v, 2, True)
        with pytest.raises(AssertionError):  # the kernel alone spreads NaN / loses it
            _assert_rule(raw(q, k, v, **kw), q, k, v, 2, True)
    with pytest.raises(ValueError, match="non_finite must be one of guard, keys, kernel"):
        kit_cpu.numba_backend(_spreading_forward, non_finite="off")


def test_guard_non_finite_copies_only_when_needed() -> None:
    pytest.importorskip("numba")
    q, k, v = _qkv(dtype=torch.float32)
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=1.0)
    assert kit_cpu.guard_non_finite(call) is call
    q[0, 1, 2, 3] = float("inf")
    v[1, 0, 4, 0] = float("nan")
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=1.0)
    got = kit_cpu.guard_non_finite(call)
    assert torch.isnan(got.q[0, 1, 2]).all() and torch.isfinite(got.q[0, 1, :2]).all()
    assert torch.isnan(got.k[1, 0, 4]).all() and torch.equal(got.v[1, 0, 4], torch.zeros(8))
    assert torch.equal(got.k[0], k[0]) and torch.equal(got.v[0], v[0])
    assert kit_cpu.guard_non_finite(call, queries=False).q is call.q


def test_numba_exp_keeps_nan_and_any_non_finite() -> None:
    pytest.importorskip("numba")
    from attnkit.kernels.numba_exp import any_non_finite, exp_into

    for dt in (np.float32, np.float64):
        src = np.array([0.0, -1.0, np.nan, -np.inf, 2.0], dtype=dt)
        dst, poly, pow2 = np.empty_like(src), np.empty_like(src), np.empty(5)
        total = exp_into(src, dst, 0, 5, 0.0, poly, pow2)
        assert np.isnan(dst[2]) and np.isnan(total)
        assert dst[3] < 1e-37 and np.allclose(dst[[0, 1, 4]], np.exp(src[[0, 1, 4]].astype(np.float64)), rtol=1e-6)
        x = np.ones((7, 3), dtype=dt)
        assert not any_non_finite(x)
        for value in (np.nan, np.inf, -np.inf):
            x[5, 1] = value
            assert any_non_finite(x)


def test_gathered_attention_follows_the_non_finite_rule() -> None:
    q, k, v = _qkv(hq=4, hkv=2, spatial=(11,))
    v[0, 1, 10, 2] = float("nan")  # the last key: causally only the last query sees it
    k[1, 0, 3, 0] = float("inf")
    q[0, 2, 5, 1] = float("nan")
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=True, scale=8**-0.5, return_lse=True)
    idx, valid = _band_index(11, 2, True)  # padding slots point at in-range keys, some bad
    out, lse = kit_onnx.gathered_attention(call, idx, valid)
    _assert_rule(out, q, k, v, 2, True)
    assert torch.equal(torch.isnan(lse), _band_nan_rows(q, k, v, 2, True))


# ---------------------------------------------------------------------------------------------
# flex
# ---------------------------------------------------------------------------------------------


def test_dense_mask_of_a_rule_is_the_brute_force_mask() -> None:
    for causal in (False, True):
        rule = kit_flex.MaskRule(band_mask_mod, (3, causal))
        got = kit_flex.dense_mask(rule, 17, 17, chunk=5)
        assert got.shape == (1, 17, 17)
        assert torch.equal(got[0], _band_mask(17, 3, causal))


def test_block_masks_are_cached_per_rule_and_size() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    rule = kit_flex.MaskRule(band_mask_mod, (2, True))
    a = kit_flex.block_mask(rule, 256, 256)
    assert kit_flex.block_mask(kit_flex.MaskRule(band_mask_mod, (2, True)), 256, 256) is a
    assert kit_flex.block_mask(rule, 384, 384) is not a


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (CallInfo(device=torch.device("cpu"), dtype=torch.float32, requires_grad=True), "requires grad"),
        (CallInfo(device=torch.device("cpu"), dtype=torch.float32, return_lse=True), "log-sum-exp"),
        (CallInfo(device=torch.device("cpu"), dtype=torch.float64), "float64"),
        (CallInfo(device=torch.device("cpu"), dtype=torch.float32, exporting=True), "ONNX"),
    ],
    ids=["grad", "lse", "float64", "export"],
)
def test_flex_can_run_refuses_with_reason(call: CallInfo, needle: str) -> None:
    reason = kit_flex.can_run(call)
    assert reason is not None and needle in reason


def test_flex_backend_matches_reference(band_spec) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch.nn.attention.flex_attention")
    assert kit_flex.can_run(CallInfo(device=torch.device("cpu"), dtype=torch.float32)) is None
    q, k, v = _qkv(spatial=(40,), dtype=torch.float32)
    got = band_spec(q, k, v, backend="flex", window=3, is_causal=True)
    want, _ = _dense_band(q.double(), k.double(), v.double(), 3, True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert band_flex.mask_rule is band_rule


def test_flex_backend_follows_the_non_finite_rule(band_spec) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch.nn.attention.flex_attention")
    # The shape of test_flex_backend_matches_reference: the compiled graph is reused.
    for name, idx, value in (("q", (0, 1, 6, 3), float("nan")), ("v", (1, 0, 39, 2), float("-inf"))):
        q, k, v = _qkv(spatial=(40,), dtype=torch.float32)
        {"q": q, "k": k, "v": v}[name][idx] = value
        _assert_rule(band_spec(q, k, v, backend="flex", window=3, is_causal=True), q, k, v, 3, True)
    # Logits overflowing float32 for one query row: that row is NaN, the others are exact.
    q, k, v = _qkv(spatial=(40,), dtype=torch.float32)
    q[0, 0, 7] = 1e38
    k[0, 0, 4:8] = 10.0  # query 7's causal band: (q * scale) . k ~ 3e39 overflows, others stay small
    out = band_spec(q, k, v, backend="flex", window=3, is_causal=True)
    assert torch.isnan(out[0, 0, 7]).all()
    want, _ = _dense_band(q.double(), k.double(), v.double(), 3, True)
    keep = torch.ones(out.shape[:-1], dtype=torch.bool)
    keep[0, 0, 7] = False
    torch.testing.assert_close(out[keep].double(), want[keep], rtol=1e-5, atol=1e-5)


def _captured_mask_mod(allowed: torch.Tensor, device: object = "cpu"):  # type: ignore[no-untyped-def]
    def mod(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        return allowed[b, q_idx, kv_idx]

    return mod


def test_flex_rule_per_batch_entry_and_uncached() -> None:
    # A data-dependent mask: a different random pattern per batch entry (each row keeps its
    # own key), read by the mask_mod at b; cache=False leaves nothing in the BlockMask cache.
    pytest.importorskip("torch.nn.attention.flex_attention")
    gen = torch.Generator().manual_seed(3)
    allowed = torch.rand(2, 40, 40, generator=gen) < 0.3
    allowed |= torch.eye(40, dtype=torch.bool)
    rule = kit_flex.MaskRule(_captured_mask_mod, (allowed,), batch=2, cache=False)
    before = kit_flex._cached_block_mask.cache_info().currsize
    mask = kit_flex.block_mask(rule, 40, 40)
    assert kit_flex._cached_block_mask.cache_info().currsize == before
    for b in range(2):
        assert torch.equal(kit_flex.dense_mask(rule, 40, 40, batch_entry=b)[0], allowed[b])
    q, k, v = _qkv(spatial=(40,), dtype=torch.float32)
    call = KernelCall(q=q, k=k, v=v, spatial=(40,), kv_spatial=(40,), params=None, causal=(False,), scale=0.35)
    got = kit_flex.attention(call, mask)
    want = dense(q.double(), k.double(), v.double(), mask=allowed[:, None], scale=0.35)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kv_len", [24, 56, 120])
def test_flex_short_key_lengths_take_the_padded_path(kv_len: int) -> None:
    # kv_len % 16 == 8 below 128 keys: the lengths where inductor's CPU template overflows
    # its logits row on 8-lane (AVX2) CPUs. The BlockMask covers 8 more keys, all refused, and
    # the output still equals the float64 reference (data-dependent mask: a tensor read at kv).
    pytest.importorskip("torch.nn.attention.flex_attention")
    assert kit_flex.cpu_kv_padding(kv_len, "cpu") == 8
    assert kit_flex.cpu_kv_padding(kv_len + 8, "cpu") == 0 and kit_flex.cpu_kv_padding(kv_len, "meta") == 0
    gen = torch.Generator().manual_seed(kv_len)
    allowed = torch.rand(2, 40, kv_len, generator=gen) < 0.2
    allowed[:, :, 0] = True
    rule = kit_flex.MaskRule(_captured_mask_mod, (allowed,), batch=2, cache=False)
    mask = kit_flex.block_mask(rule, 40, kv_len)
    assert tuple(mask.seq_lengths) == (40, kv_len + 8)
    padded = kit_flex.padded_rule(rule, kv_len)
    for b in range(2):
        dense_padded = kit_flex.dense_mask(padded, 40, kv_len + 8, batch_entry=b)[0]
        assert torch.equal(dense_padded[:, :kv_len], allowed[b]) and not dense_padded[:, kv_len:].any()
    q, _, _ = _qkv(spatial=(40,), dtype=torch.float32, seed=1)
    _, k, v = _qkv(spatial=(kv_len,), dtype=torch.float32, seed=2)
    call = KernelCall(q=q, k=k, v=v, spatial=(40,), kv_spatial=(kv_len,), params=None, causal=(False,), scale=0.35)
    got = kit_flex.attention(call, mask)
    want = dense(q.double(), k.double(), v.double(), mask=allowed[:, None], scale=0.35)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Triton
# ---------------------------------------------------------------------------------------------


def _triton_call(device: str = "cpu", dtype: torch.dtype = torch.float32, head_dim: int = 16) -> CallInfo:
    return CallInfo(device=torch.device(device), dtype=dtype, q_shape=(1, 1, 8, head_dim))


def test_triton_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = kit_gpu.TritonKernels("attnkit_no_such_module", "fwd", install="pip install demo[gpu]")
    monkeypatch.setattr(kit_gpu, "_interpret_env", lambda: True)
    monkeypatch.setattr(kit_gpu.importlib.util, "find_spec", lambda name, *a: object())
    assert kernels.can_run(_triton_call()) is None
    assert "bfloat16" in kernels.can_run(_triton_call(dtype=torch.bfloat16))
    assert "float64" in kernels.can_run(_triton_call(dtype=torch.float64))
    assert "head dim 512 exceeds 256" in kernels.can_run(_triton_call(head_dim=512))
    assert "not mps" in kernels.can_run(_triton_call(device="mps"))
    monkeypatch.setattr(kit_gpu, "_interpret_env", lambda: False)
    assert "TRITON_INTERPRET=1" in kernels.can_run(_triton_call())
    monkeypatch.setattr(kit_gpu.importlib.util, "find_spec", lambda name, *a: None)
    assert kernels.can_run(_triton_call()) == "triton is not installed (pip install demo[gpu])"


def test_interpreter_env_is_read_when_kernels_are_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = kit_gpu.TritonKernels("attnkit_no_such_module", "fwd")
    for value, want in (("1", True), ("0", False), ("true", True)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert kernels.interpreting() is want


def test_triton_launch_sizes() -> None:
    kernels = kit_gpu.TritonKernels("m", "f", interpreter_blocks=(16, 32), cuda_blocks=(128, 64, 8))
    q32 = torch.empty(1, 1, 4, 40)
    v = torch.empty(1, 1, 4, 8)
    meta = kernels.meta(q32, v)
    assert meta == {
        "BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_D": 64, "BLOCK_DV": 16, "PRECISION": "ieee", "num_warps": 1,
    }  # fmt: skip
    assert kernels.meta(q32.half(), v.half())["PRECISION"] == "tf32"
    assert kernels.blocks(torch.device("cuda")) == (128, 64, 8)
    assert (kit_gpu.pow2_at_least(17), kit_gpu.pow2_at_least(3), kit_gpu.cdiv(65, 64)) == (32, 16, 2)


# ---------------------------------------------------------------------------------------------
# traceable formulations
# ---------------------------------------------------------------------------------------------


def _band_index(n: int, window: int, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2w+1) key indices clamped into range, and which slots are real band keys."""
    offs = torch.arange(-window, window + 1)
    j = torch.arange(n)[:, None] + offs[None, :]
    valid = (j >= 0) & (j < n)
    if causal:
        valid &= offs[None, :] <= 0
    return j.clamp(0, n - 1), valid


@pytest.mark.parametrize("per_head", [False, True])
def test_gathered_attention_matches_dense_under_the_mask(per_head: bool) -> None:
    q, k, v = _qkv(hq=6, hkv=2, spatial=(11,), dv=5)
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=True, scale=0.7, return_lse=True)
    idx, valid = _band_index(11, 2, True)
    if per_head:
        idx, valid = idx.expand(2, 2, -1, -1), valid.expand(2, 2, -1, -1)
    out, lse = kit_onnx.gathered_attention(call, idx, valid)
    want, want_lse = _dense_band(q, k, v, 2, True, scale=0.7)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


def test_gathered_attention_empty_rows_give_zeros_and_minus_inf() -> None:
    q, k, v = _qkv(hq=2, hkv=2, spatial=(4,))
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=1.0)
    idx = torch.zeros(4, 2, dtype=torch.int64)
    valid = torch.tensor([[True, True], [False, False], [True, False], [False, False]])
    out, lse = kit_onnx.gathered_attention(call, idx, valid)
    assert torch.all(out[:, :, [1, 3]] == 0) and torch.all(lse[:, :, [1, 3]] == float("-inf"))
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0], rtol=0, atol=1e-12)


def test_masked_attention_is_the_dense_reference() -> None:
    q, k, v = _qkv(hq=4, hkv=2)
    call = KernelCall.from_inputs(q, k, v, params=None, is_causal=False, scale=0.5)
    allowed = _band_mask(9, 1, False)
    out, lse = kit_onnx.masked_attention(call, allowed[None])
    want, want_lse = _dense_band(q, k, v, 1, False, scale=0.5)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------


def test_standard_backends_defaults_and_overrides() -> None:
    backends = standard_backends(
        "attnkit_demo", "demo_attention", numba="fast", triton={"differentiable": False}, flex=True, onnx=True
    )
    assert [b.name for b in backends] == list(BACKEND_ORDER)
    by = {b.name: b for b in backends}
    assert by["numba"].impl == "attnkit_demo.cpu:demo_attention" and by["numba"].description == "fast"
    assert by["numba"].can_run == "attnkit.kernels.cpu:can_run" and by["numba"].devices == ("cpu",)
    assert by["triton"].can_run == "attnkit_demo.gpu:TRITON.can_run" and not by["triton"].differentiable
    assert by["reference"].impl == "attnkit_demo.reference:demo_attention" and by["reference"].auto
    assert not by["flex"].supports_lse and not by["flex"].auto
    assert by["onnx"].traceable and not by["onnx"].auto
    assert [b.name for b in standard_backends("p", "f")] == ["reference"]


def test_standard_backends_refuses_bad_declarations() -> None:
    with pytest.raises(ValueError, match="declares no backend"):
        standard_backends("p", "f", reference=None)
    with pytest.raises(ValueError, match="backend numba: expected True"):
        standard_backends("p", "f", numba=3)  # type: ignore[arg-type]


def test_kit_package_import_stays_light() -> None:
    import subprocess

    code = "import sys, attnkit.kernels; print(any(m in sys.modules for m in ('torch', 'numba', 'triton')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------
# the declared benchmark
# ---------------------------------------------------------------------------------------------


def test_kernel_bench_counts_pairs_and_times_every_variant(band_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from attnkit.kernels.bench import KernelBench, Shape

    shape = Shape("band T=24 w=3", (24,), {"window": 3}, is_causal=True, heads=2, head_dim=8)
    bench = KernelBench(spec="kitband", title="band", shapes=[shape], quick=[shape], backends=("reference",))
    # Causal band of 3 over 24 tokens: 24 * 4 - (3 + 2 + 1) pairs per head, 2 heads.
    assert bench.pairs(shape) == 2 * (24 * 4 - 6)
    assert torch.equal(bench.dense_mask(shape)[0], _band_mask(24, 3, True))
    path = tmp_path / "band.json"
    argv = ["--quick", "--repeat", "2", "--no-progress", "--probe-size", "16", "--json", str(path)]
    assert bench.run(argv) == 0
    data = json.loads(path.read_text())
    assert [(r["variant"], r["status"]) for r in data["results"]] == [
        ("reference", "ok"), ("sdpa", "ok"), ("matmul", "ok"),
    ]  # fmt: skip
    assert all(len(r["times_s"]) == 2 for r in data["results"])
    assert {r["ratio"] for r in data["ratios"]} == {"reference/sdpa", "reference:matmul GFLOP/s"}
    assert data["results"][0]["info"]["pairs"] == 2 * (24 * 4 - 6)


def test_kernel_bench_validates_its_declaration_and_options(band_spec, capsys) -> None:  # type: ignore[no-untyped-def]
    from attnkit.kernels.bench import KernelBench, Shape

    with pytest.raises(ValueError, match="unknown peer"):
        KernelBench(spec="kitband", title="t", shapes=[], quick=[], peers=("gemm",))
    shape = Shape("s", (8,), {"window": 1}, heads=1, head_dim=4)
    bench = KernelBench(spec="kitband", title="t", shapes=[shape], quick=[shape], backends=("reference",))
    with pytest.raises(SystemExit):
        bench.run(["--backends", "numba"])
    assert "unknown numba" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.run(["--only", "zzz"])
    assert "matches no case; cases: s" in capsys.readouterr().err


def test_bench_rounds_are_interleaved(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from attnkit.bench import Bench, Case, Variant, bench_parser

    order: list[str] = []
    variants = [Variant(n, (lambda n=n: lambda: order.append(n))) for n in ("a", "b", "c")]
    args = bench_parser("x").parse_args(["--no-progress", "--probe-size", "16", "--repeat", "3", "--warmup", "0"])
    Bench("t", args, stream=io.StringIO()).run([Case("c", flops=1.0, variants=variants)])
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]


def test_stable_topk_breaks_ties_by_position_and_zeroes_non_finite_rows() -> None:
    from attnkit.kernels.selection import stable_topk, zero_non_finite_rows

    key = torch.tensor([[3.0, 1.0, 3.0, 2.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    for largest in (True, False):
        want = [sorted(range(6), key=lambda j, r=r: (-r[j] if largest else r[j], j))[:4] for r in key.tolist()]
        assert stable_topk(key, 4, largest=largest).tolist() == want
    x = torch.ones(2, 3, 4)
    x[0, 1, 2] = float("nan")
    x[1, 2, 0] = float("-inf")
    got = zero_non_finite_rows(x)
    assert torch.equal(got[0, 1], torch.zeros(4)) and torch.equal(got[1, 2], torch.zeros(4))
    assert int((got == 1).sum()) == 4 * 4
