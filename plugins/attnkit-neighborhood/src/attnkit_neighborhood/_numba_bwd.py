"""numba backward kernels of neighborhood attention (private to :mod:`attnkit_neighborhood.cpu`).

Probabilities are recomputed from the saved LSE, ``P = exp(scale * q.k - lse)``, and
``dS = P * (dO.v - delta)`` with ``delta = rowsum(dO * O)`` (minus the LSE's own gradient).
Two passes avoid write races without per-thread copies of dK/dV:

* :func:`grad_q` walks query tiles (as the forward does) and owns the rows of ``dq``;
* :func:`grad_kv` walks key tiles and owns the rows of ``dk``/``dv``. The queries whose
  windows contain a key form one contiguous in-group range per axis (window starts and ends
  never decrease along an axis), given by the inverse-window arrays ``is``/``il``, so a key
  tile's queries again form a dense block (ordered ``(y, head, x, z)`` so that the queries
  seeing one key row are a contiguous slice across the ``G`` query heads of the kv head).

Non-finite input: the backward does not repeat the forward's checks (gradients of rows the
non-finite rule made NaN are not specified); for finite input it is unchanged, and
:func:`~attnkit.kernels.numba_exp.exp_into` keeps a NaN from the saved LSE a NaN.

Shape legend as in :mod:`attnkit_neighborhood._numba_fwd`; ``do (B, Hq, N, Dv)``,
``lse``/``delta (B, Hq, N)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from attnkit.kernels.numba_exp import CACHE, FASTMATH, exp_into
from attnkit_neighborhood._numba_fwd import gather_rows, tile_span


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def gather_vec(src, dst, row0, xs, xl, dx, ys, yl, dy, zlo, lz, dz, ny, nz):  # type: ignore[no-untyped-def]
    """Like ``gather_rows`` for a per-token vector ``src (N,)`` (LSE, delta)."""
    r = row0
    for iy in range(yl):
        yk = ys + iy * dy
        for ix in range(xl):
            base = ((xs + ix * dx) * ny + yk) * nz + zlo
            for c in range(lz):
                dst[r] = src[base + c * dz]
                r += 1


@njit(cache=CACHE, parallel=True, fastmath=FASTMATH)
def grad_q(q, k, v, do, lse, delta, dq, scale, ny, nz, dx, dy, dz, wsx, wlx, wsy, wly, wsz, wlz, tx, ty, tny, tz, tnz):  # type: ignore[no-untyped-def]
    """Write ``dq (B, Hq, N, D)`` tile by tile of queries (tiles as in the forward)."""
    b_sz, hq, _, d = q.shape
    hkv = k.shape[1]
    dv = v.shape[3]
    g_sz = hq // hkv
    n_tiles = tx.shape[0]
    one = q.dtype.type(1.0)
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
        gather_rows(k[b, hk], kb, 0, xs, xl, dx, ylo, ly, dy, zlo, lz, dz, ny, nz, one)
        gather_rows(v[b, hk], vb, 0, xs, xl, dx, ylo, ly, dy, zlo, lz, dz, ny, nz, one)
        rows = g_sz * n
        row_len = xl * lz
        qb = np.empty((rows, d), q.dtype)
        dob = np.empty((rows, dv), q.dtype)
        lb = np.empty(rows, lse.dtype)
        db = np.empty(rows, delta.dtype)
        dqb = np.empty((rows, d), q.dtype)
        s_buf = np.empty(rows * ly * row_len, q.dtype)
        dp_buf = np.empty(rows * ly * row_len, q.dtype)
        poly = np.empty(ly * row_len, q.dtype)
        pow2 = np.empty(ly * row_len, np.float64)
        for iy in range(n_y):
            y = y0 + iy * dy
            first = (wsy[y] - ylo) // dy * row_len
            n_keys = wly[y] * row_len
            for g in range(g_sz):
                h = hk * g_sz + g
                gather_rows(q[b, h], qb, g * n, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz, scale)
                gather_rows(do[b, h], dob, g * n, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz, one)
                gather_vec(lse[b, h], lb, g * n, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz)
                gather_vec(delta[b, h], db, g * n, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz)
            s = s_buf[: rows * n_keys].reshape((rows, n_keys))
            dp = dp_buf[: rows * n_keys].reshape((rows, n_keys))
            kr = kb[first : first + n_keys]
            np.dot(qb, kr.T, s)
            np.dot(dob, vb[first : first + n_keys].T, dp)
            n_seg = wly[y] * xl
            for r in range(rows):
                zq = z0 + (r % n) * dz
                off = (wsz[zq] - zlo) // dz
                cnt = wlz[zq]
                srow = s[r]
                exp_into(srow, srow, 0, n_keys, lb[r], poly, pow2)
                for sg in range(n_seg):
                    c0 = sg * lz
                    for c in range(c0, c0 + off):
                        srow[c] = 0.0
                    for c in range(c0 + off, c0 + off + cnt):
                        srow[c] *= dp[r, c] - db[r]
                    for c in range(c0 + off + cnt, c0 + lz):
                        srow[c] = 0.0
            np.dot(s, kr, dqb)
            for r in range(rows):
                row = (x * ny + y) * nz + z0 + (r % n) * dz
                h = hk * g_sz + r // n
                for e in range(d):
                    dq[b, h, row, e] = dqb[r, e] * scale


@njit(cache=CACHE, parallel=True, fastmath=FASTMATH)
def grad_kv(
    q,
    k,
    v,
    do,
    lse,
    delta,
    dk,
    dv_out,
    scale,
    ny,
    nz,
    dx,
    dy,
    dz,
    wsz,
    wlz,
    isx,
    ilx,
    isy,
    ily,
    isz,
    ilz,
    tx,
    ty,
    tny,
    tz,
    tnz,
):  # type: ignore[no-untyped-def]
    """Write ``dk (B, Hkv, N, D)`` and ``dv_out (B, Hkv, N, Dv)`` tile by tile of keys."""
    b_sz, hq, _, d = q.shape
    hkv = k.shape[1]
    dv = v.shape[3]
    g_sz = hq // hkv
    n_tiles = tx.shape[0]
    one = q.dtype.type(1.0)
    for w in prange(b_sz * hkv * n_tiles):
        b = w // (hkv * n_tiles)
        hk = (w // n_tiles) % hkv
        t = w % n_tiles
        x, y0, n_y, z0, n = tx[t], ty[t], tny[t], tz[t], tnz[t]
        # the queries that see any key of the tile: X-range x Y-span x Z-span, all G heads,
        # gathered in order (y, head, x, z)
        xs, xl = isx[x], ilx[x]
        ylo, ly = tile_span(isy, ily, y0, n_y, dy)
        zlo, lz = tile_span(isz, ilz, z0, n, dz)
        row_len = g_sz * xl * lz  # queries of one Y step, all heads
        qb = np.empty((ly * row_len, d), q.dtype)
        dob = np.empty((ly * row_len, dv), q.dtype)
        lb = np.empty(ly * row_len, lse.dtype)
        db = np.empty(ly * row_len, delta.dtype)
        for iy in range(ly):
            yq = ylo + iy * dy
            for g in range(g_sz):
                h = hk * g_sz + g
                r0 = iy * row_len + g * xl * lz
                gather_rows(q[b, h], qb, r0, xs, xl, dx, yq, 1, 1, zlo, lz, dz, ny, nz, scale)
                gather_rows(do[b, h], dob, r0, xs, xl, dx, yq, 1, 1, zlo, lz, dz, ny, nz, one)
                gather_vec(lse[b, h], lb, r0, xs, xl, dx, yq, 1, 1, zlo, lz, dz, ny, nz)
                gather_vec(delta[b, h], db, r0, xs, xl, dx, yq, 1, 1, zlo, lz, dz, ny, nz)
        kb = np.empty((n, d), q.dtype)
        vb = np.empty((n, dv), q.dtype)
        dkb = np.empty((n, d), q.dtype)
        dvb = np.empty((n, dv), q.dtype)
        p_buf = np.empty(ly * row_len * n, q.dtype)
        ds_buf = np.empty(ly * row_len * n, q.dtype)
        poly = np.empty(n, q.dtype)
        pow2 = np.empty(n, np.float64)
        for iy in range(n_y):
            y = y0 + iy * dy
            gather_rows(k[b, hk], kb, 0, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz, one)
            gather_rows(v[b, hk], vb, 0, x, 1, 1, y, 1, 1, z0, n, dz, ny, nz, one)
            first = (isy[y] - ylo) // dy * row_len
            rows = ily[y] * row_len
            qr = qb[first : first + rows]
            dor = dob[first : first + rows]
            p = p_buf[: rows * n].reshape((rows, n))
            ds = ds_buf[: rows * n].reshape((rows, n))
            np.dot(qr, kb.T, p)
            np.dot(dor, vb.T, ds)
            for r in range(rows):
                zq = zlo + (r % lz) * dz
                # keys of the tile inside this query's Z window: in-group indices [lo, hi)
                a = (wsz[zq] - z0) // dz
                lo = min(max(a, 0), n)
                hi = max(min(a + wlz[zq], n), lo)
                prow, dsrow = p[r], ds[r]
                lr, dr = lb[first + r], db[first + r]
                for c in range(lo):
                    prow[c] = 0.0
                    dsrow[c] = 0.0
                exp_into(prow, prow, lo, hi, lr, poly, pow2)
                for c in range(lo, hi):
                    dsrow[c] = prow[c] * (dsrow[c] - dr)
                for c in range(hi, n):
                    prow[c] = 0.0
                    dsrow[c] = 0.0
            np.dot(ds.T, qr, dkb)  # qb already carries the scale
            np.dot(p.T, dor, dvb)
            for c in range(n):
                row = (x * ny + y) * nz + z0 + c * dz
                for e in range(d):
                    dk[b, hk, row, e] = dkb[c, e]
                for e in range(dv):
                    dv_out[b, hk, row, e] = dvb[c, e]
