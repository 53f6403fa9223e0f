"""numba forward kernel of ``blockrank`` (private to :mod:`attnkit_blockrank.cpu`).

One work item is one query tile of one head: up to ``TILE`` consecutive queries inside one
segment (:func:`attnkit_blockrank.tiles.query_tiles`, ``per_segment=True``). Its keys are at
most two contiguous ranges (the instruction and the document itself, or everything before the
query); they are copied into one buffer and the logits and ``P @ V`` are BLAS products. A
document's tile never touches another document's keys, so the work is linear in the number of
documents. k/v are read through ``h // G`` (GQA, no copy per query head).

Non-finite input (attnkit's rule): the kit's guard (``non_finite="guard"``) gives non-finite
queries NaN rows, non-finite keys a NaN ``k`` row and a zero ``v`` row before the launch; a NaN
logit makes its row's max-shifted exponentials, sum and LSE NaN (``math.exp`` keeps NaN, no
fastmath), and masked (future) keys get probability exactly 0 against finite values.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``, ``plan
(n_tiles, 6)`` as in :mod:`attnkit_blockrank.tiles`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from attnkit.kernels.numba_exp import CACHE


@njit(parallel=True, cache=CACHE)
def forward(q, k, v, out, lse, scale, causal, group, plan):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` for every tile of every head."""
    n_b, hq, tq, d = q.shape
    tk, dv = k.shape[2], v.shape[3]
    off = tk - tq
    n_tiles = plan.shape[0]
    ft = q.dtype.type
    sc = ft(scale)
    for w in prange(n_b * hq * n_tiles):
        b = w // (hq * n_tiles)
        h = (w // n_tiles) % hq
        t = w % n_tiles
        kv = h // group
        p0, p1 = plan[t, 0], plan[t, 1]
        a0, a1, b0, b1 = plan[t, 2], plan[t, 3], plan[t, 4], plan[t, 5]
        na = a1 - a0
        nk = na + max(b1 - b0, 0)
        tn = p1 - p0
        qb = np.empty((tn, d), q.dtype)
        for i in range(tn):
            for c in range(d):
                qb[i, c] = q[b, h, p0 - off + i, c] * sc
        kb = np.empty((nk, d), k.dtype)
        vb = np.empty((nk, dv), v.dtype)
        kpos = np.empty(nk, np.int64)
        for j in range(na):
            kpos[j] = a0 + j
            kb[j, :] = k[b, kv, a0 + j, :]
            vb[j, :] = v[b, kv, a0 + j, :]
        for j in range(nk - na):
            kpos[na + j] = b0 + j
            kb[na + j, :] = k[b, kv, b0 + j, :]
            vb[na + j, :] = v[b, kv, b0 + j, :]
        s = np.dot(qb, kb.T)  # (tn, nk)
        for i in range(tn):
            p = p0 + i
            m = -np.inf
            bad = False
            seen = 0
            for j in range(nk):
                if causal and kpos[j] > p:
                    s[i, j] = -np.inf
                    continue
                seen += 1
                x = s[i, j]
                if x != x or x == np.inf or x == -np.inf:  # NaN, or an overflowed logit
                    bad = True
                elif x > m:
                    m = x
            total = 0.0
            if bad:  # attnkit's rule: the row is NaN, its LSE too
                for j in range(nk):
                    s[i, j] = np.nan
                total = np.nan
            elif seen == 0:  # no visible key (cannot happen: a query sees itself)
                for j in range(nk):
                    s[i, j] = 0.0
            else:
                for j in range(nk):
                    e = math.exp(s[i, j] - m)
                    s[i, j] = e
                    total += e
            for j in range(nk):
                if total > 0.0:
                    s[i, j] = s[i, j] / total
            if seen == 0:
                lse[b, h, p0 - off + i] = -np.inf
            else:
                lse[b, h, p0 - off + i] = m + math.log(total)
        o = np.dot(s, vb)  # (tn, Dv)
        for i in range(tn):
            out[b, h, p0 - off + i, :] = o[i, :]
