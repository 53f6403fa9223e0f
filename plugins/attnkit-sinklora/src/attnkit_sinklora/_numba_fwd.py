"""numba forward kernel of SF-Attn (private to :mod:`attnkit_sinklora.cpu`).

One work item is one query tile of one head: up to ``TQ`` consecutive queries inside one
group. Its keys are the sink keys outside the group (one or two contiguous ranges) and the
group's own keys up to the tile's last query (causal) or the group's end. Each range is a
contiguous slice of ``k``/``v``, so the logits are BLAS products straight from the inputs;
k/v are read through ``h // (Hq / Hkv)`` and never copied per query head (GQA).

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``; tiles are
``(t0, tn, gs, ge)``: first query, query count, group start and end.

Non-finite input (attnkit's rule, :mod:`attnkit.reference.dense`): the backend's kit guard
gives non-finite keys a NaN ``k`` row and a zero ``v`` row before the launch
(``non_finite="keys"``); a NaN logit, and so a non-finite query row, turns the row's softmax
NaN through the NaN-keeping :func:`~attnkit.kernels.numba_exp.exp_into`, and the masked
(future) keys of a group only ever meet a probability of exactly 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from attnkit.kernels.numba_exp import CACHE, FASTMATH, exp_into


@njit(cache=CACHE, parallel=True, fastmath=FASTMATH)
def forward(q, k, v, out, lse, scale, n_sink, causal, head_class, class_off, t0s, tns, gss, ges):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, T, Dv)`` and ``lse (B, Hq, T)`` for every query tile of every head."""
    b_sz, hq, t, d = q.shape
    hkv = k.shape[1]
    dv = v.shape[3]
    r_sz = hq // hkv
    max_tiles = 0
    for c in range(class_off.shape[0] - 1):
        max_tiles = max(max_tiles, class_off[c + 1] - class_off[c])
    ns_all = min(n_sink, t)
    ft = q.dtype.type
    for w in prange(b_sz * hq * max_tiles):
        b = w // (hq * max_tiles)
        h = (w // max_tiles) % hq
        ti = w % max_tiles
        cls = head_class[h]
        if ti >= class_off[cls + 1] - class_off[cls]:
            continue
        ti += class_off[cls]
        t0, tn, gs, ge = t0s[ti], tns[ti], gss[ti], ges[ti]
        hk = h // r_sz
        ke = min(t0 + tn, ge) if causal else ge
        n_loc = ke - gs
        # sink keys outside the group: [0, a1) before it, and (non-causal) [ge, ns_all) after
        a1 = min(ns_all, gs)
        b0 = ge
        b1 = ns_all if (not causal and ns_all > ge) else ge
        n_a = a1
        n_b = b1 - b0
        n_keys = n_a + n_b + n_loc
        qb = np.empty((tn, d), q.dtype)
        sc = ft(scale)
        for i in range(tn):
            for e in range(d):
                qb[i, e] = q[b, h, t0 + i, e] * sc
        s_loc = np.empty((tn, n_loc), q.dtype)
        np.dot(qb, k[b, hk, gs:ke].T, s_loc)
        s_a = np.empty((tn, n_a), q.dtype)
        if n_a > 0:
            np.dot(qb, k[b, hk, 0:a1].T, s_a)
        s_b = np.empty((tn, n_b), q.dtype)
        if n_b > 0:
            np.dot(qb, k[b, hk, b0:b1].T, s_b)
        poly = np.empty(n_keys, q.dtype)
        pow2 = np.empty(n_keys, np.float64)
        row = np.empty(n_keys, q.dtype)
        inv = np.empty(tn, np.float64)
        for i in range(tn):
            cnt = (t0 + i - gs + 1) if causal else n_loc
            for c in range(n_a):
                row[c] = s_a[i, c]
            for c in range(n_b):
                row[n_a + c] = s_b[i, c]
            for c in range(cnt):
                row[n_a + n_b + c] = s_loc[i, c]
            m_all = n_a + n_b + cnt
            m = -np.inf
            for c in range(m_all):
                m = max(m, row[c])
            total = exp_into(row, row, 0, m_all, m, poly, pow2)
            # total >= 1 (the row maximum gives exp(0)): normalised after P @ V. A NaN or
            # infinite logit (or all -inf: overflow) makes it NaN, and so lse and the row.
            inv[i] = 1.0 / total
            lse[b, h, t0 + i] = m + np.log(total)
            for c in range(n_a):
                s_a[i, c] = row[c]
            for c in range(n_b):
                s_b[i, c] = row[n_a + c]
            for c in range(cnt):
                s_loc[i, c] = row[n_a + n_b + c]
            for c in range(cnt, n_loc):
                s_loc[i, c] = 0.0
        ob = np.empty((tn, dv), q.dtype)
        np.dot(s_loc, v[b, hk, gs:ke], ob)
        if n_a > 0:
            oa = np.empty((tn, dv), q.dtype)
            np.dot(s_a, v[b, hk, 0:a1], oa)
            ob += oa
        if n_b > 0:
            o2 = np.empty((tn, dv), q.dtype)
            np.dot(s_b, v[b, hk, b0:b1], o2)
            ob += o2
        for i in range(tn):
            for e in range(dv):
                out[b, h, t0 + i, e] = ob[i, e] * inv[i]
