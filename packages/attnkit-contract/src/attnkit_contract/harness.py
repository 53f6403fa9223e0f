"""What every check shares: the case (tolerances, device), inputs, the float64 oracle,
running one pinned backend, and comparing results.

The oracle is independent of the backends under test wherever the spec allows: dense
attention (:func:`attnkit.reference.attention`) under the spec's brute-force ``mask`` when it
declares one, otherwise the spec's own ``reference`` backend, always in float64.

Shape legend: ``B`` batch, ``Hq``/``Hkv`` heads, ``*S`` token axes (``T`` for one axis),
``N = prod(S)``, ``D``/``Dv`` head dims.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from attnkit.reference import attention as dense_attention
from attnkit.registry import AttentionSpec, CallInfo, resolve

__all__ = [
    "DEFAULT_TOLERANCES",
    "ContractCase",
    "NoOracle",
    "Refused",
    "assert_close",
    "default_case",
    "make_qkv",
    "oracle",
    "run_backend",
]

#: dtype name -> ``(atol, rtol)`` for outputs compared with the float64 oracle. The float64
#: bound leaves room for tiled kernels that sum in another order; the low-precision ones
#: cover rounding of the output and of the probabilities before the ``P @ V`` product.
DEFAULT_TOLERANCES: Mapping[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-7),
    "float32": (1e-4, 1e-4),
    "float16": (4e-3, 4e-3),
    "bfloat16": (3e-2, 3e-2),
}

#: Gradients accumulate over every query; their bounds are this many times the output's.
GRAD_TOLERANCE_FACTOR = 10.0
#: With logits near 1e4, float32 rounding of the logits alone moves them by ~1e-3.
LARGE_LOGIT_TOLERANCE_FACTOR = 100.0

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


@dataclass(frozen=True)
class ContractCase:
    """Settings one run of the checks uses.

    :param device: device the inputs are made on (``ATTNKIT_CONTRACT_DEVICE``, default cpu).
    :param tolerances: dtype name -> ``(atol, rtol)`` against the float64 oracle.
    :param dtypes: dtypes tried where a check covers several (each skipped when the backend
        refuses it).
    :param lengths: token counts of ``check_odd_lengths``; none a multiple of a block size.
    :param max_examples: hypothesis examples per backend (``ATTNKIT_CONTRACT_EXAMPLES``).
    :param seed: seed of every random input.
    """

    device: str = "cpu"
    tolerances: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))
    dtypes: tuple[str, ...] = ("float64", "float32", "bfloat16", "float16")
    lengths: tuple[int, ...] = (1, 7, 13, 61, 130)
    max_examples: int = 15
    seed: int = 0

    def tolerance(self, dtype: torch.dtype | str, factor: float = 1.0) -> tuple[float, float]:
        name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
        try:
            atol, rtol = self.tolerances[name]
        except KeyError:
            raise ValueError(f"tolerances has no entry for dtype {name!r}; it has {sorted(self.tolerances)}") from None
        return atol * factor, rtol * factor


def default_case(**overrides: Any) -> ContractCase:
    """The case built from the environment (``ATTNKIT_CONTRACT_DEVICE``, ``..._EXAMPLES``)."""
    kwargs: dict[str, Any] = {
        "device": os.environ.get("ATTNKIT_CONTRACT_DEVICE", "cpu"),
        "max_examples": _env_int("ATTNKIT_CONTRACT_EXAMPLES", 15),
    }
    kwargs.update(overrides)
    return ContractCase(**kwargs)


class Refused(Exception):
    """The backend cannot run this call here (its ``can_run`` reason, or a missing module)."""


class NoOracle(Exception):
    """The spec declares neither a brute-force ``mask`` nor a ``reference`` backend."""


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def make_qkv(
    q_shape: Sequence[int],
    kv_heads: int | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    value_dim: int | None = None,
    seed: int = 0,
    magnitude: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``.

    Drawn in float64 on the CPU from ``seed`` and rounded to ``dtype``, so the oracle sees
    exactly the values the backend sees. ``magnitude`` multiplies ``q`` and ``k`` (logits
    grow with its square).
    """
    q_shape = tuple(q_shape)
    hkv = q_shape[1] if kv_heads is None else kv_heads
    dv = q_shape[-1] if value_dim is None else value_dim
    gen = torch.Generator().manual_seed(seed)
    kv_shape = (q_shape[0], hkv, *q_shape[2:])
    q = torch.randn(q_shape, generator=gen, dtype=torch.float64) * magnitude
    k = torch.randn(kv_shape, generator=gen, dtype=torch.float64) * magnitude
    v = torch.randn((*kv_shape[:-1], dv), generator=gen, dtype=torch.float64)
    return q.to(dtype).to(device), k.to(dtype).to(device), v.to(dtype).to(device)


# ---------------------------------------------------------------------------------------------
# Oracle
# ---------------------------------------------------------------------------------------------

_MASK_CACHE: dict[Any, torch.Tensor] = {}


def spec_mask(
    spec: AttentionSpec, params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: Any
) -> torch.Tensor:
    """The spec's brute-force ``(N, N_kv)`` mask, cached (it is built with Python loops)."""
    assert spec.mask is not None
    try:
        key: Any = (spec.name, params, q_shape, kv_shape, is_causal)
        hash(key)
    except TypeError:  # an unhashable parameter value: build it every time
        key = None
    if key is not None and key in _MASK_CACHE:
        return _MASK_CACHE[key]
    mask = resolve(spec.mask)(params, q_shape, kv_shape, is_causal)
    if key is not None:
        _MASK_CACHE[key] = mask
    return mask


def oracle(
    spec: AttentionSpec,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: Mapping[str, Any],
    is_causal: Any = False,
    scale: float | None = None,
    return_lse: bool = False,
    mask: torch.Tensor | None = None,
) -> Any:
    """The float64 result the backends are held to (see the module docstring).

    Inputs are taken as they are (any dtype, any device) and upcast to float64 on the CPU;
    gradients flow back to them when they require grad.
    """
    p = spec.make_params(**params)
    q64, k64, v64 = (x.to(device="cpu", dtype=torch.float64) for x in (q, k, v))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    mask_cpu = mask.to("cpu") if mask is not None else None
    if spec.mask is not None or spec.input_mask is not None:
        b, hq, d = q.shape[0], q.shape[1], q.shape[-1]
        spatial = tuple(q.shape[2:-1])
        if spec.mask is not None:
            allowed = spec_mask(spec, p, tuple(q.shape), tuple(k.shape), is_causal).to(torch.bool)
        else:  # a selection by the inputs' values, built from them by brute force
            allowed = resolve(spec.input_mask)(p, q64, k64, is_causal).to(device="cpu", dtype=torch.bool)
        if mask_cpu is not None:
            allowed = allowed & mask_cpu
        res = dense_attention(
            q64.reshape(b, hq, -1, d),
            k64.reshape(k.shape[0], k.shape[1], -1, d),
            v64.reshape(v.shape[0], v.shape[1], -1, v.shape[-1]),
            mask=allowed,
            scale=scale,
            return_lse=return_lse,
        )
        if return_lse:
            out, lse = res
            return out.reshape(b, hq, *spatial, v.shape[-1]), lse.reshape(b, hq, *spatial)
        return res.reshape(b, hq, *spatial, v.shape[-1])
    if any(b.name == "reference" for b in spec.backends):
        extra = {"mask": mask_cpu} if mask_cpu is not None else {}
        fn = spec.backend("reference").load()
        return fn(q64, k64, v64, params=p, is_causal=is_causal, scale=float(scale), return_lse=return_lse, **extra)
    raise NoOracle(
        f"{spec.name} declares neither a brute-force mask (mask / input_mask) nor a 'reference' backend to compare with"
    )


# ---------------------------------------------------------------------------------------------
# Running one backend
# ---------------------------------------------------------------------------------------------


def refusal(
    spec: AttentionSpec,
    backend: str,
    *,
    q_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: str | torch.device,
    params: Mapping[str, Any],
    requires_grad: bool = False,
    return_lse: bool = False,
    has_mask: bool = False,
) -> str | None:
    """Why ``backend`` would refuse this call (as :func:`attnkit.choose` decides), or ``None``."""
    b = spec.backend(backend)
    call = CallInfo(
        device=torch.device(device),
        dtype=dtype,
        requires_grad=requires_grad,
        return_lse=return_lse,
        has_mask=has_mask,
        exporting=False,
        params=spec.make_params(**params),
        q_shape=tuple(q_shape),
    )
    reason = b.reason_not_to_run(call)
    if reason is not None:
        return reason
    try:
        b.load()
    except (ImportError, AttributeError) as exc:  # the backend module is not there (yet)
        return f"implementation {b.impl!r} cannot be imported: {type(exc).__name__}: {exc}"
    return None


def run_backend(
    spec: AttentionSpec,
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: Mapping[str, Any],
    is_causal: Any = False,
    scale: float | None = None,
    return_lse: bool = False,
    mask: torch.Tensor | None = None,
    layout: str = "bhtd",
) -> Any:
    """Call ``spec`` pinned to ``backend``; raises :class:`Refused` when it cannot run here."""
    canonical = tuple(q.shape) if layout == "bhtd" else tuple(q.movedim(-2, 1).shape)
    reason = refusal(
        spec,
        backend,
        q_shape=canonical,
        dtype=q.dtype,
        device=q.device,
        params=params,
        requires_grad=q.requires_grad or k.requires_grad or v.requires_grad,
        return_lse=return_lse,
        has_mask=mask is not None,
    )
    if reason is not None:
        raise Refused(reason)
    extra = {"mask": mask} if mask is not None else {}
    return spec(
        q,
        k,
        v,
        backend=backend,
        is_causal=is_causal,
        scale=scale,
        return_lse=return_lse,
        layout=layout,
        **extra,
        **params,
    )


class Attempts:
    """Collects refusals across the sub-cases of one check.

    A check passes when every sub-case that could run passed; it is skipped (with every
    reason) only when none could run.
    """

    def __init__(self, spec: AttentionSpec, backend: str) -> None:
        self.label = f"{spec.name}.{backend}"
        self.ran = 0
        self.reasons: list[str] = []

    def refused(self, what: str, reason: str) -> None:
        line = f"{what}: {reason}"
        if line not in self.reasons:
            self.reasons.append(line)

    def done(self) -> None:
        if self.ran == 0:
            detail = "; ".join(self.reasons) or "no applicable case"
            pytest.skip(f"{self.label} cannot run here: {detail}")


def first_runnable_dtype(
    spec: AttentionSpec,
    backend: str,
    case: ContractCase,
    candidates: Sequence[str],
    attempts: Attempts | None = None,
    **call: Any,
) -> torch.dtype | None:
    """The first of ``candidates`` the backend accepts for this call, recording refusals."""
    for name in candidates:
        dtype = DTYPES[name]
        reason = refusal(spec, backend, dtype=dtype, device=case.device, **call)
        if reason is None:
            return dtype
        if attempts is not None:
            attempts.refused(name, reason)
    return None


# ---------------------------------------------------------------------------------------------
# Comparing
# ---------------------------------------------------------------------------------------------


def assert_close(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float, what: str) -> None:
    """Assert ``|got - want| <= atol + rtol * |want|`` elementwise, NaN-aware, ``-inf == -inf``.

    The message gives the worst element, how many are off, and the bounds.
    """
    if tuple(got.shape) != tuple(want.shape):
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    g = got.detach().to(device="cpu", dtype=torch.float64)
    w = want.detach().to(device="cpu", dtype=torch.float64)
    same_inf = torch.isinf(g) & torch.isinf(w) & (torch.sign(g) == torch.sign(w))
    diff = torch.where(same_inf, torch.zeros_like(g), (g - w).abs())
    bound = atol + rtol * torch.where(torch.isfinite(w), w.abs(), torch.zeros_like(w))
    bad = ~(diff <= bound)  # NaN compares False, so NaN anywhere counts as off
    if not bool(bad.any()):
        return
    n_bad = int(bad.sum())
    score = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff - bound)
    flat = int(torch.argmax(score.reshape(-1)))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape))
    finite = diff[torch.isfinite(diff)]
    max_err = float(finite.max()) if finite.numel() else math.nan
    nan_note = f"; {int(torch.isnan(g).sum())} NaN in the result" if bool(torch.isnan(g).any()) else ""
    raise AssertionError(
        f"{what}: {n_bad} of {g.numel()} elements differ from the float64 oracle beyond atol={atol:g}, "
        f"rtol={rtol:g} (max finite |error| {max_err:.3g}); worst at index {idx}: got {float(g[idx])!r}, "
        f"expected {float(w[idx])!r}{nan_note}"
    )


def lse_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The LSE dtype the contract requires for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32
