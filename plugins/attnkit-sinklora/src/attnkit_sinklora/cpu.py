"""numba CPU backend of SF-Attn: blockwise forward, backward through the torch block form.

The forward never builds the ``(T, T)`` logits: each query tile multiplies against its own
group's keys and the sink block only (:mod:`attnkit_sinklora._numba_fwd`), so the cost is
``O(T * (G + n_sink) * D)``. Gradients recompute the blockwise torch formulation
(:mod:`attnkit_sinklora.reference`, same cost order) under autograd; a fused numba backward
is not written.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from attnkit import CallInfo
from attnkit_sinklora.params import SFAttnParams, group_size, shift_of_head

__all__ = ["can_run", "sf_attention"]

_DTYPES = (torch.float32, torch.float64)
#: Queries per tile: 64 keeps a tile's logits (64 x G) in L2 for G up to a few thousand.
TILE_Q = 64


def can_run(call: CallInfo) -> str | None:
    """``None`` for CPU float32/float64 inputs when numba imports."""
    if call.device.type != "cpu":
        return f"runs on cpu, not {call.device.type}"
    if call.dtype not in _DTYPES:
        return f"supports float32 and float64, not {str(call.dtype).removeprefix('torch.')}"
    try:
        import numba  # noqa: F401
        import scipy.linalg.cython_blas  # type: ignore[import-untyped]  # noqa: F401  (numba's np.dot calls it)
    except ImportError as exc:
        return f"numba backend unavailable: {exc}"
    return None


def group_bounds(t: int, g: int, shift: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every group in original positions (groups hold ``(p + shift) // g``)."""
    first = (g - shift) % g or g  # the first boundary after position 0
    starts = [0, *range(first, t, g)]
    return list(zip(starts, [*starts[1:], t]))


@functools.lru_cache(maxsize=64)
def _tiles(t: int, g: int, shifts: tuple[int, ...], tile: int) -> tuple[np.ndarray, ...]:
    """Per head the index of its shift class, class offsets into the tile list, and the
    tiles ``(t0, tn, gs, ge)`` of every class."""
    classes = sorted(set(shifts))
    head_class = np.array([classes.index(s) for s in shifts], dtype=np.int64)
    rows: list[tuple[int, int, int, int]] = []
    offs = [0]
    for s in classes:
        for gs, ge in group_bounds(t, g, s):
            for t0 in range(gs, ge, tile):
                rows.append((t0, min(tile, ge - t0), gs, ge))
        offs.append(len(rows))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    cols = tuple(np.ascontiguousarray(arr[:, i]) for i in range(4))
    return (head_class, np.array(offs, dtype=np.int64), *cols)


_BLAS_CONTROLLER: Any = None
# numba's default "workqueue" threading layer aborts the process when two Python threads
# launch parallel kernels at once, so launches are serialised.
_LAUNCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _kernel_launch() -> Iterator[None]:
    """Hold the launch lock and run BLAS single-threaded: the kernel already uses every core
    through prange, and a threaded BLAS inside each prange task oversubscribes them."""
    global _BLAS_CONTROLLER
    with _LAUNCH_LOCK:
        try:
            import threadpoolctl  # type: ignore[import-untyped]
        except ImportError:
            yield
            return
        if _BLAS_CONTROLLER is None:
            # numba's np.dot calls scipy's BLAS: load it first so the controller sees it.
            import scipy.linalg.cython_blas  # noqa: F401

            _BLAS_CONTROLLER = threadpoolctl.ThreadpoolController()
        with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
            yield


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: SFAttnParams, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    from attnkit_sinklora import _numba_fwd

    b, hq, t, _ = q.shape
    g = group_size(params, t)
    shifts = tuple(shift_of_head(params, h, hq, g) for h in range(hq))
    head_class, class_off, t0s, tns, gss, ges = _tiles(t, g, shifts, TILE_Q)
    out = torch.empty(b, hq, t, v.shape[-1], dtype=q.dtype)
    lse = torch.empty(b, hq, t, dtype=q.dtype)
    with _kernel_launch():
        _numba_fwd.forward(
            _np(q), _np(k), _np(v), out.numpy(), lse.numpy(), float(scale), int(params.n_sink), bool(causal),
            head_class, class_off, t0s, tns, gss, ges,
        )  # fmt: skip
    return out, lse


class _SFAttention(torch.autograd.Function):
    """``(q, k, v) -> (out, lse)``; forward in numba, gradients from the torch block form."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: SFAttnParams, causal: bool, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = _forward(q, k, v, params, causal, scale)
        ctx.save_for_backward(q, k, v)
        ctx.params, ctx.causal, ctx.scale = params, causal, scale
        return out, lse

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_lse: torch.Tensor | None) -> tuple[Any, ...]:
        from attnkit_sinklora.reference import sf_attention as reference

        q, k, v = (x.detach().requires_grad_() for x in ctx.saved_tensors)
        with torch.enable_grad():
            out, lse = reference(q, k, v, params=ctx.params, is_causal=ctx.causal, scale=ctx.scale, return_lse=True)
            pairs = [(o, g) for o, g in ((out, d_out), (lse, d_lse)) if g is not None]
            grads = torch.autograd.grad([o for o, _ in pairs], (q, k, v), [g.to(o.dtype) for o, g in pairs])
        return (*grads, None, None, None)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    # The kernel indexes without bounds checks: anything it relies on is checked here.
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"the numba backend runs on cpu; {name} is on {x.device}")
        if x.dtype != q.dtype or x.dtype not in _DTYPES:
            raise TypeError(
                f"the numba backend needs q, k, v all float32 or all float64; got q {q.dtype}, k {k.dtype}, v {v.dtype}"
            )
        if x.dim() != 4:
            raise ValueError(f"{name} must be (B, H, T, D), got shape {tuple(x.shape)}")
    if q.shape[0] != k.shape[0] or k.shape[:-1] != v.shape[:-1] or q.shape[2] != k.shape[2]:
        raise ValueError(f"batch/heads/tokens disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q head dim {q.shape[-1]} must equal k head dim {k.shape[-1]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads {q.shape[1]} must be a multiple of k/v heads {k.shape[1]}")
    if min(q.shape) == 0 or min(v.shape) == 0:
        raise ValueError(f"empty input: q {tuple(q.shape)}, v {tuple(v.shape)}")


def sf_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: SFAttnParams,
    is_causal: bool | tuple[bool, ...],
    scale: float,
    return_lse: bool,
    **_: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SF-Attn on CPU with the numba kernel.

    :param q: ``(B, Hq, T, D)``, float32 or float64.
    :param k: ``(B, Hkv, T, D)`` with ``Hq % Hkv == 0``; never expanded to ``Hq`` heads.
    :param v: ``(B, Hkv, T, Dv)``.
    :returns: ``(B, Hq, T, Dv)`` in ``q.dtype`` (and the LSE ``(B, Hq, T)``, same dtype).
    """
    _check(q, k, v)
    causal = bool(is_causal[0]) if isinstance(is_causal, tuple) else bool(is_causal)
    out, lse = _SFAttention.apply(q, k, v, params, causal, float(scale))
    if return_lse:
        return out, lse
    return out
