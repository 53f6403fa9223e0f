"""numba CPU backend of neighborhood attention: forward and backward, float32 / float64.

Inputs of 1, 2 or 3 token axes are viewed as 3 axes ``(X, Y, Z)`` (size-1 leading axes with
kernel 1), so one set of kernels serves every rank. The window geometry (first key and length
per query and axis, and the inverse: the queries that see each key) is computed here in numpy
and handed to the kernels, which only do dense products over tiles
(:mod:`attnkit_neighborhood._numba_fwd`, :mod:`attnkit_neighborhood._numba_bwd`). Checks,
thread limits, autograd and the call's flattening come from :mod:`attnkit.kernels.cpu`.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``,
``N = prod(S)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.autograd import softmax_delta
from attnkit.kernels.cpu import as_numpy, empty_outputs, launch, numba_backend
from attnkit_neighborhood.params import NeighborhoodParams, normalize

__all__ = ["neighborhood_attention"]


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


def _geometry_of(call: KernelCall) -> _Geometry:
    return _geometry(call.spatial, call.params, call.causal)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention of the flattened call: ``out (B, Hq, N, Dv)``, ``lse (B, Hq, N)``."""
    from attnkit_neighborhood import _numba_fwd

    geo = _geometry_of(call)
    out, lse = empty_outputs(call)
    ax, ay, az = geo.axes
    ny, nz, dx, dy, dz = geo.sizes()
    with launch():
        _numba_fwd.forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v), out.numpy(), lse.numpy(), call.scale,
            ny, nz, dx, dy, dz, ax.ws, ax.wl, ay.ws, ay.wl, az.ws, az.wl, *geo.q_tiles,
        )  # fmt: skip
    return out, lse


def _backward(
    call: KernelCall, out: torch.Tensor, lse: torch.Tensor, d_out: torch.Tensor, d_lse: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from attnkit_neighborhood import _numba_bwd

    geo = _geometry_of(call)
    q, k, v = call.q, call.k, call.v
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    ax, ay, az = geo.axes
    ny, nz, dx, dy, dz = geo.sizes()
    delta = softmax_delta(out, d_out, d_lse, q.dtype)
    args = (as_numpy(q), as_numpy(k), as_numpy(v), as_numpy(d_out.to(q.dtype)), as_numpy(lse), as_numpy(delta))
    s = call.scale
    with launch():
        _numba_bwd.grad_q(
            *args, dq.numpy(), s, ny, nz, dx, dy, dz, ax.ws, ax.wl, ay.ws, ay.wl, az.ws, az.wl, *geo.q_tiles
        )
        _numba_bwd.grad_kv(
            *args, dk.numpy(), dv.numpy(), s, ny, nz, dx, dy, dz, az.ws, az.wl,
            ax.is_, ax.il, ay.is_, ay.il, az.is_, az.il, *geo.k_tiles,
        )  # fmt: skip
    return dq, dk, dv


#: The numba backend: ``(q, k, v, *, params, is_causal, scale, return_lse)`` with ``q (B, Hq,
#: *S, D)`` float32/float64, ``k/v (B, Hkv, *S, D|Dv)`` (never expanded to ``Hq`` heads);
#: returns ``(B, Hq, *S, Dv)`` (and the LSE ``(B, Hq, *S)``), gradients for q, k, v. The
#: forward kernel applies the non-finite rule itself (``non_finite="kernel"``: checked while
#: it gathers keys and values, at no extra pass over the inputs).
neighborhood_attention = numba_backend(_forward, backward=_backward, non_finite="kernel")
