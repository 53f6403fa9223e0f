"""The contract checks for attention kernels.

Each check is ``check_<name>(spec, backend, case=None) -> None``: it runs one backend of an
:class:`~attnkit.AttentionSpec` (pinned with ``backend=``) and raises ``AssertionError``
with the sizes, dtype and worst element when it breaks the contract. It calls
``pytest.skip(reason)`` only when it does not apply to the spec or backend, or when the
backend refuses every sub-case here (the reason is the backend's ``can_run`` reason).

Results are compared with the float64 oracle of :mod:`attnkit_contract.harness`. Shapes stay
tiny (``T <= 64`` except the odd-length check) so the suite runs on two CPU cores.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from attnkit.registry import AttentionSpec
from attnkit_contract import profiles
from attnkit_contract.harness import (
    DTYPES,
    GRAD_TOLERANCE_FACTOR,
    LARGE_LOGIT_TOLERANCE_FACTOR,
    Attempts,
    ContractCase,
    NoOracle,
    Refused,
    assert_close,
    default_case,
    first_runnable_dtype,
    lse_dtype_for,
    make_qkv,
    oracle,
    refusal,
    run_backend,
    spec_mask,
)

__all__ = [
    "APPLIES",
    "ATTENTION_CHECKS",
    "SPEC_LEVEL_CHECKS",
    "CheckFn",
    "applies",
    "spec_level_backend",
    "yield_contract",
]

CheckFn = Callable[..., None]

#: Float64 first (tightest bound), then what the backend accepts.
PREFERRED = ("float64", "float32", "bfloat16", "float16")


@dataclasses.dataclass
class _Ctx:
    spec: AttentionSpec
    backend: str
    case: ContractCase
    attempts: Attempts

    @property
    def label(self) -> str:
        return f"{self.spec.name}.{self.backend}"


def _ctx(spec: AttentionSpec, backend: str, case: ContractCase | None) -> _Ctx:
    if not isinstance(spec, AttentionSpec):
        raise TypeError(f"spec must be an attnkit.AttentionSpec, got {type(spec).__name__}")
    spec.backend(backend)  # unknown names raise ValueError listing the spec's backends
    return _Ctx(spec, backend, case or default_case(), Attempts(spec, backend))


def _causal_options(spec: AttentionSpec) -> list[bool]:
    return [False, True] if spec.causal else [False]


def _heads(spec: AttentionSpec) -> tuple[int, int]:
    """``(Hq, Hkv)`` for checks that are not about GQA but should still exercise it."""
    return (4, 2) if spec.gqa else (2, 2)


def _describe(
    q_shape: Sequence[int], kv_heads: int, dtype: torch.dtype, params: Mapping[str, Any], is_causal: Any
) -> str:
    ptxt = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"q {tuple(q_shape)}, Hkv={kv_heads}, {str(dtype).removeprefix('torch.')}, is_causal={is_causal}" + (
        f", {ptxt}" if ptxt else ""
    )


def _compare(
    ctx: _Ctx,
    *,
    q_shape: tuple[int, ...],
    kv_heads: int,
    dtypes: Sequence[str],
    params: Mapping[str, Any],
    is_causal: Any = False,
    first_only: bool = False,
    magnitude: float = 1.0,
    tol_factor: Callable[[torch.dtype], float] = lambda dt: 1.0,
    what: str = "output",
    seed: int | None = None,
) -> int:
    """Run the backend at each runnable dtype and compare with the oracle; returns runs made."""
    runs = 0
    for name in dtypes:
        dtype = DTYPES[name]
        try:
            q, k, v = make_qkv(
                q_shape,
                kv_heads,
                dtype=dtype,
                device=ctx.case.device,
                seed=ctx.case.seed if seed is None else seed,
                magnitude=magnitude,
            )
            got = run_backend(ctx.spec, ctx.backend, q, k, v, params=params, is_causal=is_causal)
        except Refused as exc:
            ctx.attempts.refused(name, str(exc))
            continue
        want = _oracle(ctx, q, k, v, params=params, is_causal=is_causal)
        atol, rtol = ctx.case.tolerance(dtype, tol_factor(dtype))
        assert_close(
            got, want, atol, rtol, f"{ctx.label} {what} ({_describe(q_shape, kv_heads, dtype, params, is_causal)})"
        )
        runs += 1
        ctx.attempts.ran += 1
        if first_only:
            break
    return runs


def _oracle(ctx: _Ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: Any) -> Any:
    try:
        return oracle(ctx.spec, q, k, v, **kw)
    except NoOracle as exc:
        pytest.skip(str(exc))


def _params(spec: AttentionSpec, seq_len: int) -> list[dict[str, Any]]:
    sets = spec.params_for_contract(seq_len)
    if not sets:
        raise AssertionError(f"{spec.name}.params_for_contract({seq_len}) returned no parameter set")
    return [dict(p) for p in sets]


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def check_output_shape_dtype_device(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """``out (B, Hq, T, Dv)`` in q's dtype on q's device (``Dv != D``); ``lse (B, Hq, T)`` in
    float32 (float64 for float64 inputs) when ``return_lse=True``."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (2, hq, 13, 16)
    params = _params(spec, 13)[0]
    supports_lse = spec.backend(backend).supports_lse
    for name in ctx.case.dtypes:
        dtype = DTYPES[name]
        q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, value_dim=8, seed=ctx.case.seed)
        for return_lse in (False, True) if supports_lse else (False,):
            try:
                res = run_backend(spec, backend, q, k, v, params=params, return_lse=return_lse)
            except Refused as exc:
                ctx.attempts.refused(f"{name}, return_lse={return_lse}", str(exc))
                continue
            ctx.attempts.ran += 1
            where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, False)}, Dv=8, return_lse={return_lse})"
            if return_lse:
                assert isinstance(res, tuple) and len(res) == 2, (
                    f"{where}: expected (out, lse), got {type(res).__name__}"
                )
                out, lse = res
                assert isinstance(lse, torch.Tensor), f"{where}: lse is a {type(lse).__name__}, not a tensor"
                assert tuple(lse.shape) == (2, hq, 13), f"{where}: lse shape {tuple(lse.shape)}, expected {(2, hq, 13)}"
                want_lse = lse_dtype_for(dtype)
                assert lse.dtype == want_lse, f"{where}: lse dtype {lse.dtype}, expected {want_lse}"
                assert lse.device == q.device, f"{where}: lse on {lse.device}, inputs on {q.device}"
            else:
                out = res
            assert isinstance(out, torch.Tensor), f"{where}: returned a {type(out).__name__}, not a tensor"
            assert tuple(out.shape) == (2, hq, 13, 8), (
                f"{where}: out shape {tuple(out.shape)}, expected {(2, hq, 13, 8)}"
            )
            assert out.dtype == dtype, f"{where}: out dtype {out.dtype}, expected the input dtype {dtype}"
            assert out.device == q.device, f"{where}: out on {out.device}, inputs on {q.device}"
    ctx.attempts.done()


def check_matches_reference(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Every parameter set, causal or not, matches the float64 oracle in float64 and float32,
    and the first set in bfloat16/float16, within each dtype's tolerance (each dtype the
    backend refuses is skipped)."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    sets = _params(spec, 13)
    small = profiles.is_reduced(spec, backend, "check_matches_reference")
    for params, causal, dtypes in _dtype_grid(ctx, sets[:1] if small else sets):
        if small:  # the quick profile's one small check of a compiled / interpreted backend
            dtypes = [d for d in dtypes if d in ("float64", "float32")]
        _compare(ctx, q_shape=(2, hq, 13, 16), kv_heads=hkv, dtypes=dtypes, params=params, is_causal=causal)
    ctx.attempts.done()


def check_mask_semantics(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """The ``reference`` backend equals dense attention under the spec's brute-force mask,
    at several lengths, every parameter set, causal or not, and on every token-axis count."""
    if spec.mask is None and spec.input_mask is None:
        pytest.skip(f"{spec.name} declares no brute-force mask (spec.mask and spec.input_mask are None)")
    owner = spec_level_backend(spec, "check_mask_semantics")
    if backend != owner:
        pytest.skip(f"check_mask_semantics runs once per spec, under backend {owner!r}")
    ctx = _ctx(spec, backend, case)
    for t in (1, 7, 13, 32):
        for params in _params(spec, t):
            for causal in _causal_options(spec):
                _compare(
                    ctx,
                    q_shape=(1, 2, t, 8),
                    kv_heads=2,
                    dtypes=PREFERRED,
                    params=params,
                    is_causal=causal,
                    first_only=True,
                )
    for spatial in _multi_axis_shapes(spec):
        for params in _params(spec, min(spatial)):
            for causal in _axis_causal_options(spec, len(spatial)):
                _compare(
                    ctx,
                    q_shape=(1, 2, *spatial, 8),
                    kv_heads=2,
                    dtypes=PREFERRED,
                    params=params,
                    is_causal=causal,
                    first_only=True,
                )
    ctx.attempts.done()


def check_gradient(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Gradients w.r.t. ``q``, ``k`` and ``v`` equal the float64 oracle's (GQA and causal
    included), for backends declared differentiable."""
    b = spec.backend(backend)
    if not b.differentiable:
        pytest.skip(f"backend {backend!r} is declared not differentiable")
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (2, hq, 13, 8)
    for params in _params(spec, 13):
        for causal in _causal_options(spec):
            dtype = first_runnable_dtype(
                spec,
                backend,
                ctx.case,
                ("float64", "float32"),
                ctx.attempts,
                q_shape=q_shape,
                params=params,
                requires_grad=True,
            )
            if dtype is None:
                continue
            q, k, v = (
                x.requires_grad_()
                for x in make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
            )
            out = run_backend(spec, backend, q, k, v, params=params, is_causal=causal)
            weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            (out.to(device="cpu", dtype=torch.float64) * weight).sum().backward()
            q64, k64, v64 = (x.detach().to(device="cpu", dtype=torch.float64).requires_grad_() for x in (q, k, v))
            want = _oracle(ctx, q64, k64, v64, params=params, is_causal=causal)
            (want * weight).sum().backward()
            atol, rtol = ctx.case.tolerance(dtype, GRAD_TOLERANCE_FACTOR)
            where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, causal)})"
            for name, got, ref in (("q", q, q64), ("k", k, k64), ("v", v, v64)):
                assert got.grad is not None, f"{where}: no gradient reached {name}"
                assert ref.grad is not None, f"{where}: the oracle gave no gradient for {name}"
                assert_close(got.grad, ref.grad, atol, rtol, f"{where} d(loss)/d{name}")
            ctx.attempts.ran += 1
    ctx.attempts.done()


def check_causal_no_future(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """With ``is_causal=True``, changing token ``t`` (its query, key and value) leaves every
    output before ``t`` bit-identical, and does change the output at ``t``."""
    if not spec.causal:
        pytest.skip(f"{spec.name} does not support is_causal=True")
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (1, hq, 13, 8)
    for params in _params(spec, 13):
        dtype = first_runnable_dtype(spec, backend, ctx.case, PREFERRED, ctx.attempts, q_shape=q_shape, params=params)
        if dtype is None:
            continue
        q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
        base = run_backend(spec, backend, q, k, v, params=params, is_causal=True)
        for t in (1, 6, 12):
            q2, k2, v2 = q.clone(), k.clone(), v.clone()
            bump = 3.0 + torch.arange(q.shape[-1], dtype=torch.float64).to(dtype=dtype, device=q.device)
            q2[:, :, t] += bump
            k2[:, :, t] -= bump
            v2[:, :, t] += bump
            out = run_backend(spec, backend, q2, k2, v2, params=params, is_causal=True)
            where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, True)})"
            if not torch.equal(out[:, :, :t], base[:, :, :t]):
                diff = (out[:, :, :t].double() - base[:, :, :t].double()).abs()
                pos = int(diff.amax(dim=(0, 1, 3)).argmax())
                raise AssertionError(
                    f"{where}: changing token {t} changed the output at earlier position {pos} "
                    f"(max |change| {float(diff.max()):.3g}); a causal kernel must not read the future"
                )
            assert not torch.equal(out[:, :, t], base[:, :, t]), (
                f"{where}: changing token {t} left its own output unchanged; the check cannot tell anything"
            )
            ctx.attempts.ran += 1
    ctx.attempts.done()


def check_gqa(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """``Hq = 2..4 x Hkv`` (query head ``h`` reads key/value head ``h // (Hq // Hkv)``)
    matches the oracle, causal or not."""
    if not spec.gqa:
        pytest.skip(f"{spec.name} declares gqa=False (check_bad_inputs covers rejecting Hq != Hkv)")
    ctx = _ctx(spec, backend, case)
    params = _params(spec, 13)[0]
    for hq, hkv in ((2, 1), (6, 2), (8, 2)):
        for causal in _causal_options(spec):
            _compare(
                ctx,
                q_shape=(2, hq, 13, 8),
                kv_heads=hkv,
                dtypes=PREFERRED,
                params=params,
                is_causal=causal,
                first_only=True,
            )
    ctx.attempts.done()


def check_single_token(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """``T = 1`` (one query, one key) matches the oracle."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    for params in _params(spec, 1):
        for causal in _causal_options(spec):
            _compare(
                ctx,
                q_shape=(2, hq, 1, 8),
                kv_heads=hkv,
                dtypes=PREFERRED,
                params=params,
                is_causal=causal,
                first_only=True,
            )
    ctx.attempts.done()


def check_odd_lengths(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Lengths that are not a multiple of any block size (``case.lengths``: 1, 7, 13, 61,
    130) match the oracle for every parameter set; causal for the first."""
    ctx = _ctx(spec, backend, case)
    hkv = 1 if spec.gqa else 2
    lengths = profiles.QUICK_LENGTHS if profiles.is_reduced(spec, backend, "check_odd_lengths") else ctx.case.lengths
    for t in lengths:
        sets = _params(spec, t)
        for i, params in enumerate(sets):
            for causal in _causal_options(spec) if i == 0 else [False]:
                _compare(
                    ctx,
                    q_shape=(1, 2, t, 16),
                    kv_heads=hkv,
                    dtypes=PREFERRED,
                    params=params,
                    is_causal=causal,
                    first_only=True,
                )
    ctx.attempts.done()


def check_token_axes(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Inputs with 2 or 3 token axes (``(B, H, X, Y, D)``, ``(B, H, X, Y, Z, D)``) match the
    oracle, with per-axis causal flags, for specs whose ``spatial_dims`` allow them."""
    shapes = _multi_axis_shapes(spec)
    if not shapes:
        pytest.skip(f"{spec.name} takes one token axis only (spatial_dims={spec.spatial_dims})")
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    for spatial in shapes:
        for params in _params(spec, min(spatial)):
            for causal in _axis_causal_options(spec, len(spatial)):
                _compare(
                    ctx,
                    q_shape=(1, hq, *spatial, 8),
                    kv_heads=hkv,
                    dtypes=PREFERRED,
                    params=params,
                    is_causal=causal,
                    first_only=True,
                )
    ctx.attempts.done()


def check_batch_independence(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Each batch entry's output equals running it alone, and changing one entry leaves the
    others bit-identical."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (3, hq, 13, 8)
    params = _params(spec, 13)[0]
    for causal in _causal_options(spec):
        dtype = first_runnable_dtype(spec, backend, ctx.case, PREFERRED, ctx.attempts, q_shape=q_shape, params=params)
        if dtype is None:
            continue
        q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
        full = run_backend(spec, backend, q, k, v, params=params, is_causal=causal)
        where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, causal)})"
        atol, rtol = ctx.case.tolerance(dtype)
        for i in range(3):
            alone = run_backend(
                spec, backend, q[i : i + 1], k[i : i + 1], v[i : i + 1], params=params, is_causal=causal
            )
            assert_close(full[i : i + 1], alone, atol, rtol, f"{where}: batch entry {i} run in the batch vs alone")
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[0] = x[0] * 2 + 1
        other = run_backend(spec, backend, q2, k2, v2, params=params, is_causal=causal)
        assert torch.equal(other[1:], full[1:]), (
            f"{where}: changing batch entry 0 changed the outputs of entries 1 and 2"
        )
        ctx.attempts.ran += 1
    ctx.attempts.done()


def check_deterministic(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Two runs on the same inputs are bit-equal (output and LSE)."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (2, hq, 61, 16)
    params = _params(spec, 61)[0]
    lse = spec.backend(backend).supports_lse
    for causal in _causal_options(spec):
        dtype = first_runnable_dtype(
            spec,
            backend,
            ctx.case,
            ("float32", "float64", "bfloat16", "float16"),
            ctx.attempts,
            q_shape=q_shape,
            params=params,
            return_lse=lse,
        )
        if dtype is None:
            continue
        q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
        first = run_backend(spec, backend, q, k, v, params=params, is_causal=causal, return_lse=lse)
        second = run_backend(spec, backend, q, k, v, params=params, is_causal=causal, return_lse=lse)
        where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, causal)})"
        for i, (a, b) in enumerate(zip(first, second) if lse else [(first, second)]):
            what = "lse" if i == 1 else "out"
            assert torch.equal(a, b), (
                f"{where}: two runs gave different {what} (max |difference| {float((a.double() - b.double()).abs().max()):.3g})"
            )
        ctx.attempts.ran += 1
    ctx.attempts.done()


def check_large_logits(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Inputs scaled so the logits reach ~1e4: the output (and LSE) stay finite and match the
    oracle (float32 within ``LARGE_LOGIT_TOLERANCE_FACTOR`` x its tolerance)."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (1, hq, 13, 16)
    params = _params(spec, 13)[0]
    supports_lse = spec.backend(backend).supports_lse
    for causal in _causal_options(spec):
        for name in ("float64", "float32"):
            dtype = DTYPES[name]
            # |q.k| * D**-0.5 ~ magnitude**2 for unit-variance entries: 100 gives ~1e4.
            q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed, magnitude=100.0)
            try:
                res = run_backend(spec, backend, q, k, v, params=params, is_causal=causal, return_lse=supports_lse)
            except Refused as exc:
                ctx.attempts.refused(name, str(exc))
                continue
            out, lse = res if supports_lse else (res, None)
            want = _oracle(ctx, q, k, v, params=params, is_causal=causal, return_lse=supports_lse)
            want_out, want_lse = want if supports_lse else (want, None)
            where = f"{ctx.label} logits ~1e4 ({_describe(q_shape, hkv, dtype, params, causal)})"
            assert bool(torch.isfinite(out).all()), (
                f"{where}: output has {int((~torch.isfinite(out)).sum())} non-finite values"
            )
            factor = 1.0 if dtype == torch.float64 else LARGE_LOGIT_TOLERANCE_FACTOR
            atol, rtol = ctx.case.tolerance(dtype, factor)
            assert_close(out, want_out, atol, rtol, f"{where} output")
            if lse is not None and want_lse is not None:
                assert bool(torch.isfinite(lse).all()), f"{where}: lse has non-finite values"
                assert_close(lse, want_lse, atol, rtol, f"{where} lse")
            ctx.attempts.ran += 1
    ctx.attempts.done()


def check_fully_masked_rows(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Query rows an explicit ``mask=`` leaves with no key give zeros (never NaN) and
    ``lse = -inf``; other rows match the oracle. Only for backends with ``supports_mask``."""
    b = spec.backend(backend)
    if not b.supports_mask:
        pytest.skip(f"backend {backend!r} does not accept an explicit mask (supports_mask=False)")
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    t = 13
    q_shape = (2, hq, t, 8)
    params = _params(spec, t)[0]
    gen = torch.Generator().manual_seed(ctx.case.seed + 7)
    mask = torch.rand((2, 1, t, t), generator=gen) < 0.6
    empty = [(0, 0), (0, 5), (1, 12)]  # (batch, query row)
    for bi, row in empty:
        mask[bi, 0, row] = False
    for causal in _causal_options(spec):
        for name in ("float64", "float32"):
            dtype = DTYPES[name]
            q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
            m = mask.to(ctx.case.device)
            try:
                res = run_backend(
                    spec, backend, q, k, v, params=params, is_causal=causal, mask=m, return_lse=b.supports_lse
                )
            except Refused as exc:
                ctx.attempts.refused(name, str(exc))
                continue
            out, lse = res if b.supports_lse else (res, None)
            where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, causal)}, mask with empty rows)"
            for bi, row in empty:
                r = out[bi, :, row]
                assert not bool(torch.isnan(r).any()), (
                    f"{where}: NaN in the output of fully masked row (batch {bi}, query {row})"
                )
                assert bool((r == 0).all()), (
                    f"{where}: fully masked row (batch {bi}, query {row}) must be zeros, got max |value| {float(r.abs().max()):.3g}"
                )
                if lse is not None:
                    lr = lse[bi, :, row]
                    assert bool((lr == float("-inf")).all()), (
                        f"{where}: lse of fully masked row (batch {bi}, query {row}) must be -inf, got {lr.tolist()}"
                    )
            want = _oracle(ctx, q, k, v, params=params, is_causal=causal, mask=mask, return_lse=b.supports_lse)
            want_out, want_lse = want if b.supports_lse else (want, None)
            atol, rtol = ctx.case.tolerance(dtype)
            assert_close(out, want_out, atol, rtol, f"{where} output")
            if lse is not None and want_lse is not None:
                assert_close(lse, want_lse, atol, rtol, f"{where} lse")
            ctx.attempts.ran += 1
    ctx.attempts.done()


def check_non_finite(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Non-finite input follows attnkit's rule (docs/user-guide.md, "Non-finite input").

    A query row that may attend to at least one key (under the spec's brute-force mask,
    ``is_causal`` and any ``mask=``) is *poisoned* when its ``q`` row, or the ``k`` or ``v``
    row of a key it may attend to, holds a NaN or an infinity, or when its logits overflow
    the working dtype (float32 below float64). A poisoned row is NaN in every entry, and so is
    its LSE; every other row is finite and matches the float64 oracle, so a non-finite key or
    value a row may not attend to has no effect on it; a row with nothing to attend to is
    zeros with ``lse = -inf`` whatever its ``q``.

    Cases, causal or not, float64 and float32 (two per run, one in each batch entry): NaN in
    one ``q`` entry, a ``q`` row of ``-inf``, NaN / ``+inf`` / ``-inf`` in one ``k`` entry, NaN
    / ``+inf`` / ``-inf`` in one ``v`` entry (the last key: causally, only the last query sees
    it), finite inputs whose logits all overflow to ``+inf`` and to ``-inf``, and, for backends
    with ``supports_mask``, an explicit mask with an empty row whose ``q`` is NaN. Rows
    expected NaN are derived from the injected positions and the brute-force mask, not from a
    backend.
    """
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    t, d = 13, 16  # the shape of check_matches_reference: compiled backends reuse its graph
    q_shape = (2, hq, t, d)
    params = _params(spec, t)[0]
    b = spec.backend(backend)
    lse_wanted = b.supports_lse
    for causal in _causal_options(spec):
        for name in ("float64", "float32"):
            dtype = DTYPES[name]
            for label, inject in _non_finite_cases(hq, hkv, t, dtype):
                q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
                overflow = inject(q, k, v)
                mask = None
                if label == "explicit mask":
                    if not b.supports_mask:
                        continue
                    mask = _mask_with_empty_row(t, ctx.case.device)
                try:
                    with warnings.catch_warnings():  # invalid-value warnings are the point here
                        warnings.simplefilter("ignore", RuntimeWarning)
                        res = run_backend(
                            spec, backend, q, k, v, params=params, is_causal=causal, mask=mask, return_lse=lse_wanted
                        )
                except Refused as exc:
                    ctx.attempts.refused(name, str(exc))
                    continue
                out, lse = res if lse_wanted else (res, None)
                where = f"{ctx.label} {label} ({_describe(q_shape, hkv, dtype, params, causal)})"
                has_key, poisoned = _expected_poison(ctx, q, k, v, params, causal, mask, overflow)
                if overflow and poisoned is None:
                    continue  # no brute-force mask to say which rows have keys
                if not overflow:
                    want = _oracle(ctx, q, k, v, params=params, is_causal=causal, mask=mask, return_lse=lse_wanted)
                else:  # the float64 oracle does not overflow where float32 does: nothing to compare
                    want = None
                _assert_non_finite_rows(ctx, where, dtype, out, lse, want, has_key, poisoned, lse_wanted)
                ctx.attempts.ran += 1
    ctx.attempts.done()


def check_non_contiguous(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Transposed views, strided views (gaps filled with NaN, so reading them shows) and
    ``layout="bthd"`` give the oracle's result."""
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (2, hq, 13, 8)
    params = _params(spec, 13)[0]
    for causal in _causal_options(spec):
        dtype = first_runnable_dtype(spec, backend, ctx.case, PREFERRED, ctx.attempts, q_shape=q_shape, params=params)
        if dtype is None:
            continue
        q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
        want = _oracle(ctx, q, k, v, params=params, is_causal=causal)
        atol, rtol = ctx.case.tolerance(dtype)
        where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, causal)})"

        transposed = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)]
        assert not transposed[0].is_contiguous()
        out = run_backend(spec, backend, *transposed, params=params, is_causal=causal)
        assert_close(out, want, atol, rtol, f"{where} with (B, T, H, D)-strided views")

        strided = []
        for x in (q, k, v):
            big = torch.full(
                (*x.shape[:-2], 2 * x.shape[-2], 2 * x.shape[-1]), float("nan"), dtype=dtype, device=x.device
            )
            big[..., ::2, ::2] = x
            strided.append(big[..., ::2, ::2])
        out = run_backend(spec, backend, *strided, params=params, is_causal=causal)
        assert_close(out, want, atol, rtol, f"{where} with every-other-element views (NaN in the gaps)")

        heads_last = [x.transpose(1, 2) for x in (q, k, v)]
        out = run_backend(spec, backend, *heads_last, params=params, is_causal=causal, layout="bthd")
        assert_close(out, want.transpose(1, 2), atol, rtol, f"{where} with layout='bthd'")
        ctx.attempts.ran += 1
    ctx.attempts.done()


def check_return_lse(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """``return_lse=True`` gives the same output and the oracle's log-sum-exp of the scaled,
    masked logits (dtypes as in :func:`check_matches_reference`)."""
    b = spec.backend(backend)
    if not b.supports_lse:
        pytest.skip(f"backend {backend!r} does not return the log-sum-exp (supports_lse=False)")
    ctx = _ctx(spec, backend, case)
    hq, hkv = _heads(spec)
    q_shape = (2, hq, 13, 16)
    for params, causal, dtypes in _dtype_grid(ctx, _params(spec, 13)):
        for name in dtypes:
            dtype = DTYPES[name]
            q, k, v = make_qkv(q_shape, hkv, dtype=dtype, device=ctx.case.device, seed=ctx.case.seed)
            try:
                out, lse = run_backend(spec, backend, q, k, v, params=params, is_causal=causal, return_lse=True)
                plain = run_backend(spec, backend, q, k, v, params=params, is_causal=causal)
            except Refused as exc:
                ctx.attempts.refused(name, str(exc))
                continue
            where = f"{ctx.label} ({_describe(q_shape, hkv, dtype, params, causal)})"
            assert lse.dtype == lse_dtype_for(dtype), f"{where}: lse dtype {lse.dtype}, expected {lse_dtype_for(dtype)}"
            want_out, want_lse = _oracle(ctx, q, k, v, params=params, is_causal=causal, return_lse=True)
            atol, rtol = ctx.case.tolerance(dtype)
            assert_close(out, plain, atol, rtol, f"{where}: out with return_lse=True vs without")
            assert_close(out, want_out, atol, rtol, f"{where} output")
            assert_close(lse, want_lse, atol, rtol, f"{where} lse")
            ctx.attempts.ran += 1
    ctx.attempts.done()


def check_bad_inputs(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Bad calls raise ``ValueError``/``TypeError`` whose message names the argument: wrong
    ndim, head ratio, dtype mismatch, head-dim mismatch, non-tensors, integer tensors, bad
    ``is_causal``/``scale``, unknown parameters and invalid values of each int parameter."""
    owner = spec_level_backend(spec, "check_bad_inputs")
    if backend != owner:
        pytest.skip(f"check_bad_inputs runs once per spec, under backend {owner!r}")
    ctx = _ctx(spec, backend, case)
    dev = ctx.case.device
    params = _params(spec, 13)[0]
    q, k, v = make_qkv((1, 2, 13, 8), 2, dtype=torch.float32, device=dev)
    bad: list[tuple[str, str, Callable[[], Any]]] = []

    def call(*qkv: Any, **kw: Any) -> Callable[[], Any]:
        merged = {**params, **kw}
        return lambda: ctx.spec(*qkv, backend=backend, **merged)

    bad.append(("q is a list", r"\bq\b", call(q.tolist(), k, v)))
    bad.append(("q has 3 dims (B, T, D)", r"\bq\b", call(q[:, 0], k, v)))
    bad.append(("k has one more dim than q", r"\bk\b", call(q, k.unsqueeze(2), v)))
    bad.append(("q is an integer tensor", r"\bq\b", call(q.to(torch.int32), k, v)))
    bad.append(("k is float64, q and v float32", r"\bk\b", call(q, k.double(), v)))
    bad.append(("k has D=4, q D=8", r"\bk\b", call(q, k[..., :4], v)))
    q3 = make_qkv((1, 3, 13, 8), 2, device=dev)[0].float()
    bad.append(("Hq=3, Hkv=2", r"\b(q|k|v|k/v)\b|heads", call(q3, k, v)))
    if not spec.gqa:
        q4 = make_qkv((1, 4, 13, 8), 2, device=dev)[0].float()
        bad.append(("Hq=4, Hkv=2 on a spec without GQA", r"\b(q|k|v|k/v)\b|heads", call(q4, k, v)))
    bad.append(("is_causal='yes'", r"is_causal", call(q, k, v, is_causal="yes")))
    bad.append(("scale=0.0", r"\bscale\b", call(q, k, v, scale=0.0)))
    bad.append(("scale=nan", r"\bscale\b", call(q, k, v, scale=float("nan"))))
    bad.append(("an unknown parameter", r"not_a_parameter", call(q, k, v, not_a_parameter=1)))
    for f in spec.param_fields():
        for value in _invalid_values(f):
            bad.append((f"{f.name}={value!r}", re.escape(f.name), call(q, k, v, **{f.name: value})))

    problems = []
    for what, pattern, fn in bad:
        try:
            fn()
        except (ValueError, TypeError) as exc:
            if not re.search(pattern, str(exc)):
                problems.append(f"{what}: {type(exc).__name__} does not name the argument (/{pattern}/): {exc}")
        except Exception as exc:  # anything else is the wrong kind of error for a user mistake
            problems.append(f"{what}: raised {type(exc).__name__} ({exc}), expected ValueError or TypeError")
        else:
            problems.append(f"{what}: no error raised")
    if problems:
        raise AssertionError(f"{spec.name}.{backend} accepted or mis-reported bad input:\n  " + "\n  ".join(problems))


def check_onnx_export(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """The spec exports with ``torch.onnx.export(dynamo=True)`` traced at T=16 and runs in
    onnxruntime at T=9 and T=23 (batch 2 and 1) within the float32 tolerance of the float64
    reference; causal too where supported. Runs once per spec."""
    if not spec.onnx:
        pytest.skip(f"{spec.name} declares onnx=False")
    owner = spec_level_backend(spec, "check_onnx_export")
    if backend != owner:
        pytest.skip(f"check_onnx_export runs once per spec, under backend {owner!r}")
    if not spec.backend(owner).traceable:
        raise AssertionError(f"{spec.name} declares onnx=True but none of its backends is traceable")
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module, reason=f"check_onnx_export needs {module} (pip install 'attnkit-contract[onnx]')")
    ctx = _ctx(spec, backend, case)
    from attnkit.export import check_attention_export

    params = _params(spec, 9)[0]
    reason = _refusal_for_export(ctx, params)
    if reason is not None:
        pytest.skip(f"{ctx.label} cannot run here: {reason}")
    hkv = 1 if spec.gqa else 2
    atol, _ = ctx.case.tolerance("float32")
    with tempfile.TemporaryDirectory(prefix="attnkit-contract-onnx-") as tmp:
        for causal in _causal_options(spec):
            path = Path(tmp) / f"{spec.name}-causal{int(causal)}.onnx"
            try:
                errors = check_attention_export(
                    spec,
                    path,
                    trace_shape=(1, 2, 16, 8),
                    test_shapes=[(2, 2, 9, 8), (1, 2, 23, 8)],
                    kv_heads=hkv,
                    is_causal=causal,
                    **params,
                )
            except Exception as exc:
                raise AssertionError(
                    f"{spec.name}: ONNX export or onnxruntime run failed (is_causal={causal}, {params}): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            for shape, err in errors.items():
                assert err == err and err <= atol * 10, (
                    f"{spec.name}: onnxruntime at q {shape} (traced at (1, 2, 16, 8), is_causal={causal}, {params}) "
                    f"differs from the float64 reference by {err:.3g} (bound {atol * 10:g})"
                )


def check_hypothesis_property(spec: AttentionSpec, backend: str, case: ContractCase | None = None) -> None:
    """Property: over random ``(B, Hq/Hkv, T, D)``, parameter sets and causal flags the
    backend matches the float64 oracle (``case.max_examples`` derandomized examples)."""
    from hypothesis import HealthCheck, Phase, given, note, settings
    from hypothesis import strategies as st

    ctx = _ctx(spec, backend, case)

    examples = ctx.case.max_examples
    if profiles.is_reduced(spec, backend, "check_hypothesis_property"):
        examples = min(examples, profiles.QUICK_EXAMPLES)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        # Shrinking re-runs the kernel many times; a failure's drawn case is printed anyway.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def prop(data: Any) -> None:
        b = data.draw(st.integers(1, 2), label="B")
        hkv = data.draw(st.integers(1, 2), label="Hkv")
        group = data.draw(st.integers(1, 3), label="Hq/Hkv") if spec.gqa else 1
        t = data.draw(st.integers(1, 40), label="T")
        d = data.draw(st.sampled_from([4, 8, 16]), label="D")
        params = data.draw(st.sampled_from(_params(spec, t)), label="params")
        causal = data.draw(st.sampled_from(_causal_options(spec)), label="is_causal")
        seed = data.draw(st.integers(0, 2**16), label="seed")
        note(f"q {(b, hkv * group, t, d)}, Hkv={hkv}, params={params}, is_causal={causal}")
        _compare(
            ctx,
            q_shape=(b, hkv * group, t, d),
            kv_heads=hkv,
            dtypes=PREFERRED,
            params=params,
            is_causal=causal,
            first_only=True,
            seed=seed,
        )

    prop()
    ctx.attempts.done()


# ---------------------------------------------------------------------------------------------
# Helpers of the checks above
# ---------------------------------------------------------------------------------------------


def _dtype_grid(ctx: _Ctx, param_sets: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], bool, list[str]]]:
    """``(params, is_causal, dtype names)``: float64/float32 for every parameter set, the
    half-precision dtypes for the first only (each new shape or dtype may mean a compile)."""
    full = [d for d in ctx.case.dtypes if d in ("float64", "float32")]
    half = [d for d in ctx.case.dtypes if d not in full]
    for i, params in enumerate(param_sets):
        for causal in _causal_options(ctx.spec):
            yield params, causal, full + half if i == 0 else full


def _multi_axis_shapes(spec: AttentionSpec) -> list[tuple[int, ...]]:
    shapes = {2: (5, 6), 3: (3, 4, 5)}
    return [shapes[n] for n in sorted(spec.spatial_dims) if n in shapes]


def _axis_causal_options(spec: AttentionSpec, n_axes: int) -> list[Any]:
    if not spec.causal:
        return [False]
    mixed = tuple(i % 2 == 0 for i in range(n_axes))
    return [False, mixed, True]


def _invalid_values(f: dataclasses.Field[Any]) -> list[Any]:
    """Values parameter ``f`` must reject.

    ``field(metadata={"contract_invalid": [...]})`` lists them explicitly; ``{"min": m}``
    gives ``m - 1``; otherwise an int field with default ``d >= 1`` must reject 0 and -1, and
    one with default 0 must reject -1. Any int field must reject a string.
    """
    meta: Mapping[str, Any] = f.metadata or {}
    if "contract_invalid" in meta:
        return list(meta["contract_invalid"])
    default = f.default
    if isinstance(default, bool) or not isinstance(default, int):
        return []
    if "min" in meta:
        return [meta["min"] - 1, "x"]
    if default >= 1:
        return [0, -1, "x"]
    if default == 0:
        return [-1, "x"]
    return ["x"]


def _non_finite_cases(
    hq: int, hkv: int, t: int, dtype: torch.dtype
) -> list[tuple[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], bool]]]:
    """``(label, inject)`` pairs of :func:`check_non_finite`: ``inject(q, k, v)`` edits the
    inputs in place and returns whether the case is an overflow of finite inputs."""
    nan, inf = float("nan"), float("inf")
    hk = hkv - 1
    # Entries whose logits overflow the working dtype: (q * scale) . k ~ D * c**2 / sqrt(D).
    big = 1e160 if dtype == torch.float64 else 1e20

    def at(*edits: tuple[str, tuple[Any, ...], float]) -> Callable[..., bool]:
        # One edit per batch entry: batch entries are independent, so one run checks two.
        def inject(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
            for x_name, idx, value in edits:
                {"q": q, "k": k, "v": v}[x_name][idx] = value
            return False

        return inject

    def overflow(sign: float) -> Callable[..., bool]:
        def inject(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
            q.fill_(big)
            k.fill_(sign * big)
            return True

        return inject

    def masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        q[0, 0, 5, 1] = nan  # query 5 of batch 0 has an empty mask row: zeros, not NaN
        v[1, hk, 2, 0] = nan  # key 2 of batch 1: masked for some rows
        return False

    return [
        (
            "NaN in one q entry / a q row of -inf",
            at(("q", (0, hq - 1, 6, 3), nan), ("q", (1, 0, 2, slice(None)), -inf)),
        ),
        ("+inf / NaN in one k entry", at(("k", (0, hk, 4, 2), inf), ("k", (1, hk, 9, 0), nan))),
        ("-inf in one k entry / +inf in one v entry", at(("k", (0, 0, 7, 5), -inf), ("v", (1, 0, 3, 3), inf))),
        # the last key: causally, only the last query sees it
        (
            "-inf in the last key's v / NaN in one v entry",
            at(("v", (0, hk, t - 1, 0), -inf), ("v", (1, hk, 8, 1), nan)),
        ),
        ("logits overflowing to +inf", overflow(1.0)),
        ("logits overflowing to -inf", overflow(-1.0)),
        ("explicit mask", masked),
    ]


def _mask_with_empty_row(t: int, device: str | torch.device) -> torch.Tensor:
    """``(2, 1, T, T)``: a random mask, query 5 of batch 0 with no key, key 2 of batch 1
    masked for every other query."""
    gen = torch.Generator().manual_seed(11)
    mask = torch.rand((2, 1, t, t), generator=gen) < 0.6
    mask[:, :, torch.arange(t), torch.arange(t)] = True
    mask[0, 0, 5] = False
    mask[1, 0, 1::2, 2] = False
    return mask.to(device)


def _expected_poison(
    ctx: _Ctx,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    params: Mapping[str, Any],
    causal: Any,
    mask: torch.Tensor | None,
    overflow: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(has_key, poisoned)``, both ``(B, Hq, T)`` bool, from the injected inputs and the
    spec's brute-force mask (``(None, None)`` for a spec without one: the oracle decides)."""
    if ctx.spec.mask is None:
        return None, None
    b, hq, t = q.shape[0], q.shape[1], q.shape[2]
    g = hq // k.shape[1]
    allowed = spec_mask(ctx.spec, ctx.spec.make_params(**params), tuple(q.shape), tuple(k.shape), causal)
    allowed = allowed.to(torch.bool).to("cpu").expand(b, hq, t, k.shape[2])
    if mask is not None:
        allowed = allowed & mask.to("cpu")
    has_key = allowed.any(dim=-1)
    if overflow:
        return has_key, has_key
    bad_q = ~torch.isfinite(q.cpu()).all(dim=-1)
    bad_kv = ~(torch.isfinite(k.cpu()).all(dim=-1) & torch.isfinite(v.cpu()).all(dim=-1))
    sees_bad = (allowed & bad_kv.repeat_interleave(g, dim=1)[:, :, None, :]).any(dim=-1)
    return has_key, has_key & (bad_q | sees_bad)


def _assert_non_finite_rows(
    ctx: _Ctx,
    where: str,
    dtype: torch.dtype,
    out: torch.Tensor,
    lse: torch.Tensor | None,
    want: Any,
    has_key: torch.Tensor | None,
    poisoned: torch.Tensor | None,
    lse_wanted: bool,
) -> None:
    """NaN rows (and LSE) exactly where ``poisoned``, zeros (``lse = -inf``) where there is no
    key, the oracle's values everywhere else."""
    want_out, want_lse = (want if lse_wanted else (want, None)) if want is not None else (None, None)
    if poisoned is None:  # no brute-force mask: the oracle's NaN rows are the expectation
        assert want_out is not None
        poisoned = torch.isnan(want_out).any(dim=-1).cpu()
        no_key = (want_lse == float("-inf")).cpu() if want_lse is not None else torch.zeros_like(poisoned)
        has_key = ~no_key
    assert has_key is not None
    got = out.detach().cpu()
    nan_rows = torch.isnan(got).all(dim=-1)
    finite_rows = torch.isfinite(got).all(dim=-1)
    empty = ~has_key

    def show(x: torch.Tensor, idx: list[int]) -> Any:
        return x[tuple(idx)][:4].tolist() if x.dim() > len(idx) else float(x[tuple(idx)])

    problems = []
    for idx in torch.nonzero(poisoned & ~nan_rows).tolist()[:3]:
        problems.append(f"row (batch, head, query) {tuple(idx)} must be NaN in every entry, got {show(got, idx)}")
    for idx in torch.nonzero(~poisoned & ~finite_rows).tolist()[:3]:
        problems.append(f"row {tuple(idx)} may not attend to any non-finite input but is not finite: {show(got, idx)}")
    for idx in torch.nonzero(empty & ~(got == 0).all(dim=-1)).tolist()[:3]:
        problems.append(f"row {tuple(idx)} has nothing to attend to and must be zeros, got {show(got, idx)}")
    if lse is not None:
        gl = lse.detach().cpu().to(torch.float64)
        for idx in torch.nonzero(poisoned & ~torch.isnan(gl)).tolist()[:3]:
            problems.append(f"lse of poisoned row {tuple(idx)} must be NaN, got {show(gl, idx)!r}")
        for idx in torch.nonzero(empty & ~(gl == float("-inf"))).tolist()[:3]:
            problems.append(f"lse of empty row {tuple(idx)} must be -inf, got {show(gl, idx)!r}")
        for idx in torch.nonzero(~poisoned & has_key & ~torch.isfinite(gl)).tolist()[:3]:
            problems.append(f"lse of row {tuple(idx)} must be finite, got {show(gl, idx)!r}")
    if problems:
        n_bad = int((poisoned & ~nan_rows).sum() + (~poisoned & ~finite_rows).sum())
        raise AssertionError(
            f"{where}: {n_bad} rows break the non-finite rule (NaN exactly in the rows that may attend to a "
            "non-finite q/k/v or whose logits overflow, zeros where nothing may be attended to):\n  "
            + "\n  ".join(problems)
        )
    if want_out is None:
        return
    atol, rtol = ctx.case.tolerance(dtype)
    keep = ~poisoned
    assert_close(got[keep], want_out.detach().cpu()[keep], atol, rtol, f"{where}: rows without non-finite input")
    if lse is not None and want_lse is not None:
        assert_close(lse.detach().cpu()[keep], want_lse.detach().cpu()[keep], atol, rtol, f"{where}: their lse")


def _refusal_for_export(ctx: _Ctx, params: Mapping[str, Any]) -> str | None:
    return refusal(ctx.spec, ctx.backend, q_shape=(1, 2, 16, 8), dtype=torch.float32, device="cpu", params=params)


# ---------------------------------------------------------------------------------------------
# The ordered list, and which (backend, check) pairs a spec gets
# ---------------------------------------------------------------------------------------------

#: name -> check, in the order they run and appear in reports.
ATTENTION_CHECKS: Mapping[str, CheckFn] = {
    fn.__name__: fn
    for fn in (
        check_output_shape_dtype_device,
        check_matches_reference,
        check_mask_semantics,
        check_gradient,
        check_causal_no_future,
        check_gqa,
        check_single_token,
        check_odd_lengths,
        check_token_axes,
        check_batch_independence,
        check_deterministic,
        check_large_logits,
        check_fully_masked_rows,
        check_non_finite,
        check_non_contiguous,
        check_return_lse,
        check_bad_inputs,
        check_onnx_export,
        check_hypothesis_property,
    )
}

#: Checks about the spec as a whole: each runs under one backend only.
SPEC_LEVEL_CHECKS = ("check_mask_semantics", "check_bad_inputs", "check_onnx_export")


def spec_level_backend(spec: AttentionSpec, check: str) -> str:
    """The backend a spec-level check runs under.

    ``check_onnx_export``: the backend named ``onnx``, else the first traceable one.
    The others: ``reference``, else the first backend.
    """
    names = [b.name for b in spec.backends]
    if check == "check_onnx_export":
        if "onnx" in names:
            return "onnx"
        traceable = [b.name for b in spec.backends if b.traceable]
        return traceable[0] if traceable else names[0]
    return "reference" if "reference" in names else names[0]


#: Which checks apply to a spec / backend, from what they declare (scikit-learn's
#: ``_yield_*_checks`` from estimator tags): a check that does not apply is never generated,
#: so ``pytest.skip`` is left for "this environment cannot" (no GPU, a dtype refused here).
APPLIES: Mapping[str, Callable[[AttentionSpec, Any], bool]] = {
    "check_mask_semantics": lambda spec, b: spec.mask is not None or spec.input_mask is not None,
    "check_gradient": lambda spec, b: b.differentiable,
    "check_causal_no_future": lambda spec, b: spec.causal,
    "check_gqa": lambda spec, b: spec.gqa,
    "check_token_axes": lambda spec, b: bool(_multi_axis_shapes(spec)),
    "check_fully_masked_rows": lambda spec, b: b.supports_mask,
    "check_return_lse": lambda spec, b: b.supports_lse,
    "check_onnx_export": lambda spec, b: spec.onnx,
}


def applies(spec: AttentionSpec, backend: str, check: str) -> bool:
    """Whether ``check`` applies to ``spec``'s ``backend`` (its declared capabilities) and, for
    a spec-level check, whether ``backend`` is the one it runs under."""
    if check in SPEC_LEVEL_CHECKS and backend != spec_level_backend(spec, check):
        return False
    rule = APPLIES.get(check)
    return rule is None or bool(rule(spec, spec.backend(backend)))


def yield_contract(
    spec: AttentionSpec,
    backends: Sequence[str] | None = None,
    checks: Sequence[str] | None = None,
    *,
    profile: str | None = None,
) -> Iterator[tuple[str, str]]:
    """``(backend, check name)`` pairs to run for ``spec``, backends in priority order: the
    checks that apply (:func:`applies`) and that the profile runs
    (:func:`attnkit_contract.profiles.included`; left-out ones are recorded).

    :param backends: restrict to these backend names (unknown ones raise ``ValueError``).
    :param checks: restrict to these check names (unknown ones raise ``ValueError``).
    :param profile: ``quick``, ``full`` or ``rest`` (default: ``ATTNKIT_CONTRACT_PROFILE``).
    """
    names = [b.name for b in spec.backends]
    if backends is not None:
        unknown = [b for b in backends if b not in names]
        if unknown:
            raise ValueError(f"{spec.name} has no backend(s) {unknown}; its backends are: {', '.join(names)}")
        names = [n for n in names if n in backends]
    wanted = list(ATTENTION_CHECKS)
    if checks is not None:
        unknown = [c for c in checks if c not in ATTENTION_CHECKS]
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; the checks are: {', '.join(ATTENTION_CHECKS)}")
        wanted = [c for c in wanted if c in checks]
    for backend, check in itertools.product(names, wanted):
        if not applies(spec, backend, check):
            continue
        reason = profiles.included(spec, backend, check, profile)
        if reason is not None:
            profiles.record_left_out(spec, backend, check, reason)
            continue
        yield backend, check
