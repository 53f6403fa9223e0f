"""numba forward kernel of neighborhood attention (private to :mod:`attnkit_neighborhood.cpu`).

Every input is canonicalised to three token axes ``(X, Y, Z)`` flattened row-major to
``N = X * Y * Z``. A *tile* is a block of queries with one ``x``, a run of ``y`` and a run of
``z``, each run inside one dilation group. Window starts and ends never decrease along an
axis, so the union of the tile's windows is one contiguous in-group span per axis: its keys
are gathered once into a dense block ordered ``(y, x, z)``. For one query row (one ``y``) the
keys it can see are then a contiguous slice of that block: one BLAS product gives the row's
logits, the entries outside each query's own ``Z`` window are masked, and a second product
gives ``P @ V``. The query heads that share a kv head are stacked into the same products
(GQA without copying k/v to ``Hq`` heads).

Shape legend: ``q (B, Hq, N, D)``, ``k (B, Hkv, N, D)``, ``v (B, Hkv, N, Dv)``,
``G = Hq // Hkv``; per axis ``ws``/``wl`` are the first key (original coordinate) and the
number of keys of each query's window, with stride = the dilation of that axis.

Non-finite input (attnkit's rule, :mod:`attnkit.reference.dense`): keys and values are
checked while they are gathered (:func:`gather_kv`); a non-finite query row needs nothing
extra, as its logits are all NaN or infinite and the softmax (``m``, then the NaN-keeping
:func:`~attnkit.kernels.numba_exp.exp_into`) turns them into a NaN row.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from attnkit.kernels.numba_exp import CACHE, FASTMATH, exp_into


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def tile_span(ws, wl, z0, n, dz):  # type: ignore[no-untyped-def]
    """First key and in-group length of the union of the windows of ``n`` tile queries."""
    zlast = z0 + (n - 1) * dz
    lo = ws[z0]
    hi = ws[zlast] + (wl[zlast] - 1) * dz
    return lo, (hi - lo) // dz + 1


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def gather_rows(src, dst, row0, xs, xl, dx, ys, yl, dy, zlo, lz, dz, ny, nz, scale):  # type: ignore[no-untyped-def]
    """Copy the rows ``Y-range x X-range x Z-range`` (in that order) of ``src (N, D)`` into
    ``dst[row0:row0 + yl*xl*lz]``, multiplied by ``scale``."""
    d = src.shape[1]
    r = row0
    for iy in range(yl):
        yk = ys + iy * dy
        for ix in range(xl):
            base = ((xs + ix * dx) * ny + yk) * nz + zlo
            for c in range(lz):
                srow = base + c * dz
                for e in range(d):
                    dst[r, e] = src[srow, e] * scale
                r += 1


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def gather_kv(k, v, kb, vb, xs, xl, dx, ys, yl, dy, zlo, lz, dz, ny, nz):  # type: ignore[no-untyped-def]
    """``gather_rows`` of ``k (N, D)`` into ``kb`` and ``v (N, Dv)`` into ``vb`` at once (no
    scale), applying attnkit's non-finite rule on the way: a key whose ``k`` or ``v`` row holds
    a NaN or an infinity gets a NaN row in ``kb`` (so every query whose window holds it gets
    NaN logits, hence a NaN row) and a zero row in ``vb`` (so ``P @ V`` carries nothing of it
    to the queries that mask it). The test is one multiply-add per element copied."""
    d = k.shape[1]
    dv = v.shape[1]
    zero = k.dtype.type(0.0)
    r = 0
    for iy in range(yl):
        yk = ys + iy * dy
        for ix in range(xl):
            base = ((xs + ix * dx) * ny + yk) * nz + zlo
            for c in range(lz):
                srow = base + c * dz
                acc = zero  # x * 0 is NaN for NaN and infinities, 0 otherwise
                for e in range(d):
                    x = k[srow, e]
                    kb[r, e] = x
                    acc += x * zero
                for e in range(dv):
                    x = v[srow, e]
                    vb[r, e] = x
                    acc += x * zero
                if acc != zero:
                    for e in range(d):
                        kb[r, e] = np.nan
                    for e in range(dv):
                        vb[r, e] = zero
                r += 1


@njit(cache=CACHE, parallel=True, fastmath=FASTMATH)
def forward(q, k, v, out, lse, scale, ny, nz, dx, dy, dz, wsx, wlx, wsy, wly, wsz, wlz, tx, ty, tny, tz, tnz):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, N, Dv)`` and ``lse (B, Hq, N)`` for every query tile."""
    b_sz, hq, _, d = q.shape
    hkv = k.shape[1]
    dv = v.shape[3]
    g_sz = hq // hkv
    n_tiles = tx.shape[0]
    for w in prange(b_sz * hkv * n_tiles):
        b = w // (hkv * n_tiles)
        hk = (w // n_tiles) % hkv
        t = w % n_tiles
        x, y0, n_y, z0, n = tx[t], ty[t], tny[t], tz[t], tnz[t]
        xs, xl = wsx[x], wlx[x]
        ylo, ly = tile_span(wsy, wly, y0, n_y, dy)
        zlo, lz = tile_span(wsz, wlz, z0, n, dz)
        kb = np.empty((ly * xl * lz, d), q.dtype)
        vb = np.empty((ly * xl * lz, dv), q.dtype)
        gather_kv(k[b, hk], v[b, hk], kb, vb, xs, xl, dx, ylo, ly, dy, zlo, lz, dz, ny, nz)
        rows = g_sz * n
        qb = np.empty((rows, d), q.dtype)
        ob = np.empty((rows, dv), q.dtype)
        inv = np.empty(rows, q.dtype)
        row_len = xl * lz  # keys of one Y step of the block
        s_buf = np.empty(rows * ly * row_len, q.dtype)
        poly = np.empty(ly * row_len, q.dtype)
        pow2 = np.empty(ly * row_len, np.float64)
        for iy in range(n_y):
            y = y0 + iy * dy
            first = (wsy[y] - ylo) // dy * row_len
            n_keys = wly[y] * row_len
            for g in range(g_sz):
                # the row's queries: x, y fixed, z = z0 + i*dz (a 1 x 1 x n block)
                gather_rows(q[b, hk * g_sz + g], qb, g * n, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz, scale)
            s = s_buf[: rows * n_keys].reshape((rows, n_keys))
            np.dot(qb, kb[first : first + n_keys].T, s)
            n_seg = wly[y] * xl
            for r in range(rows):
                zq = z0 + (r % n) * dz
                off = (wsz[zq] - zlo) // dz
                cnt = wlz[zq]
                srow = s[r]
                m = -np.inf
                for sg in range(n_seg):
                    for c in range(sg * lz + off, sg * lz + off + cnt):
                        m = max(m, srow[c])
                # exp over the whole row (one long vectorised loop), then zero what the query
                # does not see: entries outside its window may overflow, they are overwritten.
                exp_into(srow, srow, 0, n_keys, m, poly, pow2)
                total = 0.0
                for sg in range(n_seg):
                    c0 = sg * lz
                    for c in range(c0, c0 + off):
                        srow[c] = 0.0
                    for c in range(c0 + off, c0 + off + cnt):
                        total += srow[c]
                    for c in range(c0 + off + cnt, c0 + lz):
                        srow[c] = 0.0
                # total >= 1: the row's maximum contributes exp(0); normalise after P @ V.
                # A NaN or infinite logit in the window (a non-finite query or key, or logits
                # that overflowed) makes m or an exp NaN, so total, lse and the row are NaN.
                inv[r] = 1.0 / total
                lse[b, hk * g_sz + r // n, (x * ny + y) * nz + zq] = m + np.log(total)
            np.dot(s, vb[first : first + n_keys], ob)
            for r in range(rows):
                row = (x * ny + y) * nz + z0 + (r % n) * dz
                h = hk * g_sz + r // n
                for e in range(dv):
                    out[b, h, row, e] = ob[r, e] * inv[r]
