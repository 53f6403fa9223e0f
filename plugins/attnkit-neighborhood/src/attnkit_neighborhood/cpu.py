"""numba CPU backend of neighborhood attention: forward and backward, float32 / float64.

Inputs of 1, 2 or 3 token axes are viewed as 3 axes ``(X, Y, Z)`` (size-1 leading axes with
kernel 1), so one set of kernels serves every rank. The window geometry (first key and length
per query and axis, and the inverse: the queries that see each key) is computed here in numpy
and handed to the kernels, which only do dense products over tiles
(:mod:`attnkit_neighborhood._numba_fwd`, :mod:`attnkit_neighborhood._numba_bwd`).

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``,
``N = prod(S)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attnkit import CallInfo
from attnkit_neighborhood.params import NeighborhoodParams, normalize

__all__ = ["can_run", "neighborhood_attention"]

_DTYPES = (torch.float32, torch.float64)


def can_run(call: CallInfo) -> str | None:
    """``None`` for CPU float32/float64 inputs when numba (and the BLAS it calls) import."""
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


# ---------------------------------------------------------------------------------------------
# Window geometry (numpy; tiny next to the attention itself)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Axis:
    """Windows along one axis, in original coordinates with stride ``dilation``.

    ``ws[i]``/``wl[i]``: first key and number of keys query ``i`` sees; ``is_[j]``/``il[j]``:
    first query and number of queries whose windows contain key ``j``.
    """

    n: int
    dilation: int
    ws: np.ndarray
    wl: np.ndarray
    is_: np.ndarray
    il: np.ndarray


def _axis(n: int, kernel: int, dilation: int, causal: bool) -> _Axis:
    i = np.arange(n, dtype=np.int64)
    grp = i % dilation
    ii = i // dilation
    n_g = (n - grp + dilation - 1) // dilation
    if causal:
        lo = np.maximum(ii - kernel + 1, 0)
        wl = ii - lo + 1
    else:
        before = kernel // 2
        after = kernel // 2 + kernel % 2 - 1
        center = np.minimum(np.maximum(ii, before), n_g - 1 - after)
        lo = center - before
        wl = np.full(n, kernel, dtype=np.int64)
    hi = lo + wl - 1
    # Inverse: starts and ends never decrease within a group, so the queries seeing key j'
    # are those with end >= j' and start <= j', a contiguous in-group range.
    is_ = np.empty(n, dtype=np.int64)
    il = np.empty(n, dtype=np.int64)
    for g in range(min(dilation, n)):
        sel = slice(g, n, dilation)
        j = ii[sel]
        first = np.searchsorted(hi[sel], j, side="left")
        last = np.searchsorted(lo[sel], j, side="right") - 1
        is_[sel] = first * dilation + g
        il[sel] = last - first + 1
    return _Axis(n, dilation, lo * dilation + grp, wl.astype(np.int64), is_, il)


def _runs(n: int, dilation: int, tile: int) -> tuple[list[int], list[int]]:
    """Runs of ``<= tile`` consecutive in-group coordinates: first coordinate and length."""
    starts, counts = [], []
    for g in range(min(dilation, n)):
        n_g = len(range(g, n, dilation))
        for s in range(0, n_g, tile):
            starts.append(g + s * dilation)
            counts.append(min(tile, n_g - s))
    return starts, counts


def _tiles(nx: int, ny: int, nz: int, dy: int, dz: int, tile_y: int, tile_z: int) -> tuple[np.ndarray, ...]:
    """Tiles ``(x, y0, ny_tile, z0, nz_tile)`` covering every token once."""
    ys, yc = _runs(ny, dy, tile_y)
    zs, zc = _runs(nz, dz, tile_z)
    grid = np.array(
        [(x, y, c, z, e) for x in range(nx) for y, c in zip(ys, yc) for z, e in zip(zs, zc)], dtype=np.int64
    )
    return tuple(np.ascontiguousarray(grid[:, i]) for i in range(5))


def _tile_sizes(ks: tuple[int, ...], n_g: tuple[int, ...]) -> tuple[int, int]:
    """Query run lengths along ``Y`` and ``Z``.

    A run of ``T`` queries along an axis reads ``T + K - 1`` keys there and uses ``K`` of
    them per query: along ``Z`` the extra keys cost masked products, so ``T ~ K / 2`` (at
    least 8 so the products stay BLAS-sized, at most 64) keeps the waste near a third for
    large kernels. Along ``Y`` they only cost gathering, which the run shares over ``T``
    rows; the gathered block is capped near 2048 keys to stay in cache.
    """
    kx, ky, kz = ks
    tz = max(1, min(n_g[2], max(8, min(64, kz // 2))))
    per_y = kx * (tz + kz - 1)
    ty = 1
    while ty < 8 and ty < n_g[1] and (ty + ky) * per_y <= 2048:
        ty += 1
    return ty, tz


@dataclass(frozen=True)
class _Geometry:
    axes: tuple[_Axis, _Axis, _Axis]
    q_tiles: tuple[np.ndarray, ...]
    k_tiles: tuple[np.ndarray, ...]

    def sizes(self) -> tuple[int, int, int, int, int]:
        ax, ay, az = self.axes
        return ay.n, az.n, ax.dilation, ay.dilation, az.dilation


@functools.lru_cache(maxsize=64)
def _geometry(spatial: tuple[int, ...], params: NeighborhoodParams, is_causal: Any) -> _Geometry:
    """Windows and tiles of one problem; cached, as a model calls the same shapes repeatedly."""
    ks, dl, causal = normalize(params, spatial, is_causal)
    pad = 3 - len(spatial)
    sp = (1,) * pad + tuple(spatial)
    ks3 = (1,) * pad + tuple(ks)
    dl3 = (1,) * pad + tuple(dl)
    ca3 = (False,) * pad + tuple(causal)
    for a, (n, kk, d) in enumerate(zip(sp, ks3, dl3)):
        if kk * d > n:
            raise ValueError(
                f"kernel_size * dilation must not exceed the input size on every axis; axis {a - pad} has "
                f"size {n} but kernel_size={kk}, dilation={d}"
            )
    axes = tuple(_axis(n, kk, d, c) for n, kk, d, c in zip(sp, ks3, dl3, ca3))
    nx, ny, nz = sp
    n_g = tuple(-(-n // d) for n, d in zip(sp, dl3))
    tile_y, tile_z = _tile_sizes(ks3, n_g)
    q_tiles = _tiles(nx, ny, nz, dl3[1], dl3[2], tile_y, tile_z)
    return _Geometry(axes, q_tiles, q_tiles)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Kernel launch
# ---------------------------------------------------------------------------------------------

_BLAS_CONTROLLER: Any = None
# numba's default "workqueue" threading layer aborts the process when two Python threads
# launch parallel kernels at once, so launches are serialised.
_LAUNCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _kernel_launch() -> Iterator[None]:
    """Hold the launch lock and run BLAS single-threaded: the kernels already use every
    core through prange, and a threaded BLAS inside each prange task oversubscribes them."""
    global _BLAS_CONTROLLER
    with _LAUNCH_LOCK:
        try:
            import threadpoolctl  # type: ignore[import-untyped]
        except ImportError:
            yield
            return
        if _BLAS_CONTROLLER is None:
            import scipy.linalg.cython_blas  # noqa: F401  (load numba's BLAS first)

            _BLAS_CONTROLLER = threadpoolctl.ThreadpoolController()
        with _BLAS_CONTROLLER.limit(limits=1, user_api="blas"):
            yield


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().contiguous().numpy()


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geo: _Geometry, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    from attnkit_neighborhood import _numba_fwd

    b, hq, n, _ = q.shape
    out = torch.empty(b, hq, n, v.shape[-1], dtype=q.dtype)
    lse = torch.empty(b, hq, n, dtype=q.dtype)
    ax, ay, az = geo.axes
    ny, nz, dx, dy, dz = geo.sizes()
    with _kernel_launch():
        _numba_fwd.forward(
            _np(q), _np(k), _np(v), out.numpy(), lse.numpy(), float(scale),
            ny, nz, dx, dy, dz, ax.ws, ax.wl, ay.ws, ay.wl, az.ws, az.wl, *geo.q_tiles,
        )  # fmt: skip
    return out, lse


def _backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    d_out: torch.Tensor, d_lse: torch.Tensor | None, geo: _Geometry, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    from attnkit_neighborhood import _numba_bwd

    d_out = d_out.to(q.dtype)
    # delta = rowsum(dO * O); the LSE's gradient enters dS = P * (dP - delta + dLSE).
    delta = (d_out * out).sum(-1)
    if d_lse is not None:
        delta = delta - d_lse.to(delta.dtype)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ax, ay, az = geo.axes
    ny, nz, dx, dy, dz = geo.sizes()
    args = (_np(q), _np(k), _np(v), _np(d_out), _np(lse), _np(delta))
    s = float(scale)
    with _kernel_launch():
        _numba_bwd.grad_q(
            *args, dq.numpy(), s, ny, nz, dx, dy, dz, ax.ws, ax.wl, ay.ws, ay.wl, az.ws, az.wl, *geo.q_tiles
        )
        _numba_bwd.grad_kv(
            *args, dk.numpy(), dv.numpy(), s, ny, nz, dx, dy, dz, az.ws, az.wl,
            ax.is_, ax.il, ay.is_, ay.il, az.is_, az.il, *geo.k_tiles,
        )  # fmt: skip
    return dq, dk, dv


class _NeighborhoodAttention(torch.autograd.Function):
    """``(q, k, v) -> (out, lse)`` on ``(B, H, N, D)`` tensors; gradients for q, k, v."""

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geo: _Geometry, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = _forward(q, k, v, geo, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.geo, ctx.scale = geo, scale
        return out, lse

    @staticmethod
    def backward(ctx: Any, d_out: torch.Tensor | None, d_lse: torch.Tensor | None) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        if d_out is None:
            d_out = torch.zeros_like(out)
        dq, dk, dv = _backward(q, k, v, out, lse, d_out, d_lse, ctx.geo, ctx.scale)
        return dq, dk, dv, None, None


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    # The kernels index without bounds checks: anything they rely on is checked here.
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"the numba backend runs on cpu; {name} is on {x.device}")
        if x.dtype != q.dtype or x.dtype not in _DTYPES:
            raise TypeError(
                f"the numba backend needs q, k, v all float32 or all float64; got q {q.dtype}, k {k.dtype}, v {v.dtype}"
            )
        if not 4 <= x.dim() <= 6:
            raise ValueError(f"{name} must be (B, H, *S, D) with 1 to 3 token axes, got {tuple(x.shape)}")
    if not (q.dim() == k.dim() == v.dim()):
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must have the same rank")
    if q.shape[0] != k.shape[0] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"batch/heads/token axes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[2:-1] != k.shape[2:-1]:
        raise ValueError(f"q token axes {tuple(q.shape[2:-1])} must equal k token axes {tuple(k.shape[2:-1])}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q head dim {q.shape[-1]} must equal k head dim {k.shape[-1]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"q heads {q.shape[1]} must be a multiple of k/v heads {k.shape[1]}")
    if min(q.shape) == 0 or min(v.shape) == 0:
        raise ValueError(f"empty input: q {tuple(q.shape)}, v {tuple(v.shape)}")


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: NeighborhoodParams,
    is_causal: bool | tuple[bool, ...],
    scale: float,
    return_lse: bool,
    **_: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention on CPU with the numba kernels.

    :param q: ``(B, Hq, *S, D)``, 1 to 3 token axes, float32 or float64.
    :param k: ``(B, Hkv, *S, D)`` with ``Hq % Hkv == 0``; never expanded to ``Hq`` heads.
    :param v: ``(B, Hkv, *S, Dv)``.
    :param params: kernel size and dilation (one or one per axis).
    :param is_causal: one flag, or one per token axis.
    :param scale: logit scale.
    :param return_lse: also return the natural-log sum of exp of the scaled logits.
    :returns: ``(B, Hq, *S, Dv)`` in ``q.dtype`` (and the LSE ``(B, Hq, *S)``, same dtype).
    """
    _check(q, k, v)
    spatial = tuple(q.shape[2:-1])
    causal = tuple(bool(c) for c in is_causal) if isinstance(is_causal, (tuple, list)) else bool(is_causal)
    geo = _geometry(spatial, params, causal)
    b, hq, d = q.shape[0], q.shape[1], q.shape[-1]
    hkv, dv = k.shape[1], v.shape[-1]
    n = math.prod(spatial)
    out, lse = _NeighborhoodAttention.apply(
        q.reshape(b, hq, n, d), k.reshape(b, hkv, n, d), v.reshape(b, hkv, n, dv), geo, float(scale)
    )
    out = out.reshape(b, hq, *spatial, dv)
    if return_lse:
        return out, lse.reshape(b, hq, *spatial)
    return out
