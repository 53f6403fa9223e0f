"""numba CPU backends of ``landmark`` and ``landmark.retrieval``: the grouped softmax, one
query block per parallel task, two small matmuls per key block.

A task takes the queries of one block ``r`` (one batch entry, one query head) and merges
*groups* with an online softmax: each group has a log-weight ``W`` and a mean value ``Y``:

* the current section (block ``r``'s regular keys; causal: at or before the query):
  ``W = lse`` of its logits, ``Y`` = their softmax times ``V``;
* a gated block ``j``: ``W = s_{L_j}`` (the landmark logit, the outer softmax's entry) and
  ``Y`` = the inner softmax over its regular keys times ``V``.

``out = sum exp(W - lse) Y`` with ``lse = log sum exp W`` is exactly the grouped softmax (and
its LSE that of the reference's single softmax). For retrieval the task first scores every
eligible landmark per query, keeps the ``top_k`` best (a partial selection, ``O(top_k)``
passes; ties keep the lower block, as the reference's stable sort) and visits only blocks some
query of the tile keeps, computing each block's logits only for the queries that keep it.

Input checks, BLAS / numba threads, the flattening and autograd (gradients recompute
:mod:`attnkit_landmark.reference`) come from :mod:`attnkit.kernels.cpu`, and so does the
non-finite rule's guard (non-finite k/v rows become NaN k rows and zero v rows before the
launch): the kernel lets a NaN logit make its row NaN, and marks a row NaN when a landmark it
ranks is NaN.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``G = Hq // Hkv``; query ``i`` sits at key position ``i + Tk - Tq``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from attnkit.kernels import KernelCall
from attnkit.kernels.cpu import as_numpy, empty_outputs, launch, numba_backend
from attnkit.kernels.numba_exp import CACHE
from attnkit_landmark.reference import landmark_call, retrieval_call

__all__ = ["landmark_attention", "retrieval_attention"]


@njit(parallel=True, cache=CACHE)
def _grouped_forward(q, k, v, out, lse, scale, bs, causal, group, top_k):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` (pre-filled with zeros / -inf
    for queries before the first key); ``top_k < 0``: gate every eligible block."""
    n_b, hq, tq, d = q.shape
    tk, dv = k.shape[2], v.shape[3]
    off = tk - tq
    nbk = (tk + bs - 1) // bs
    n_full = tk // bs
    for task in prange(n_b * hq * nbk):
        b = task // (hq * nbk)
        h = (task // nbk) % hq
        r = task % nbk
        kv = h // group
        i0 = max(r * bs - off, 0)
        i1 = min((r + 1) * bs - off, tq)
        if i1 <= i0:
            continue
        rows = i1 - i0
        qt = np.empty((rows, d), q.dtype)
        qt[:, :] = q[b, h, i0:i1] * scale  # (rows, D): the scale applies before the product
        m_run = np.full(rows, -np.inf)
        l_run = np.zeros(rows)
        acc = np.zeros((rows, dv))
        bad = np.zeros(rows, np.bool_)
        # Retrieval: which eligible blocks each row keeps.
        keep = np.ones((rows, nbk), np.bool_)
        visit = np.ones(nbk, np.bool_)
        if top_k >= 0:
            keep[:, :] = False
            visit[:] = False
            n_elig = 0
            elig = np.empty(nbk, np.int64)
            for j in range(n_full):
                if j != r and (j < r or not causal):
                    elig[n_elig] = j
                    n_elig += 1
            if n_elig > 0:
                lm = np.empty((n_elig, d), q.dtype)
                for e in range(n_elig):
                    lm[e] = k[b, kv, elig[e] * bs + bs - 1]
                s_lm = np.dot(qt, lm.T)  # (rows, n_elig)
                taken = np.zeros(n_elig, np.bool_)
                for row in range(rows):
                    for e in range(n_elig):
                        if s_lm[row, e] != s_lm[row, e]:
                            bad[row] = True
                    if top_k >= n_elig:
                        for e in range(n_elig):
                            keep[row, elig[e]] = True
                        continue
                    # Partial selection, O(top_k * n_elig): the best remaining block, ties to the
                    # lower block (what a stable descending sort keeps).
                    taken[:] = False
                    for _ in range(top_k):
                        best = -1
                        for e in range(n_elig):
                            if not taken[e] and (best < 0 or s_lm[row, e] > s_lm[row, best]):
                                best = e
                        taken[best] = True
                        keep[row, elig[best]] = True
                for e in range(n_elig):
                    for row in range(rows):
                        if keep[row, elig[e]]:
                            visit[elig[e]] = True
                            break
        hi = r + 1 if causal else nbk
        for j in range(hi):
            if j != r and (j >= n_full or not visit[j]):
                continue
            k0 = j * bs
            k1 = min(k0 + bs, tk)
            # The rows that use block j: all for the own block and for landmark, else those keeping it.
            sel = np.empty(rows, np.int64)
            n_sel = 0
            for row in range(rows):
                if j == r or keep[row, j]:
                    sel[n_sel] = row
                    n_sel += 1
            if n_sel == 0:
                continue
            if n_sel == rows:
                qs = qt
            else:
                qs = np.empty((n_sel, d), q.dtype)
                for a_ in range(n_sel):
                    qs[a_] = qt[sel[a_]]
            s = np.dot(qs, np.ascontiguousarray(k[b, kv, k0:k1]).T)  # (n_sel, <= bs)
            n_reg = min(bs - 1, k1 - k0)
            probs = np.zeros((n_sel, k1 - k0), q.dtype)
            w = np.empty(n_sel)
            for a_ in range(n_sel):
                row = sel[a_]
                limit = n_reg
                if j == r and causal:
                    limit = min(n_reg, i0 + row + off - k0 + 1)
                mx = -np.inf
                for u in range(limit):
                    if s[a_, u] > mx:  # a NaN logit is skipped here and poisons the row below
                        mx = s[a_, u]
                total = 0.0
                for u in range(limit):
                    e = math.exp(s[a_, u] - mx)
                    probs[a_, u] = e
                    total += e
                for u in range(limit):
                    probs[a_, u] /= total
                if j == r:
                    w[a_] = mx + math.log(total) if limit > 0 else -np.inf
                elif total != total:  # a NaN logit in the block
                    w[a_] = np.nan
                else:
                    w[a_] = s[a_, bs - 1]  # the landmark's logit gates the block
            y = np.dot(probs, np.ascontiguousarray(v[b, kv, k0:k1]))  # (n_sel, Dv)
            for a_ in range(n_sel):
                row = sel[a_]
                wr = w[a_]
                if wr != wr:  # a NaN logit: the row is NaN
                    bad[row] = True
                    continue
                if wr == -np.inf:
                    continue
                mn = m_run[row]
                if wr > mn:
                    mn = wr
                a = math.exp(m_run[row] - mn) if m_run[row] != -np.inf else 0.0
                c = math.exp(wr - mn)
                l_run[row] = l_run[row] * a + c
                for col in range(dv):
                    acc[row, col] = acc[row, col] * a + c * y[a_, col]
                m_run[row] = mn
        for row in range(rows):
            i = i0 + row
            total = l_run[row]
            if bad[row]:
                total = np.nan
            if m_run[row] == -np.inf and not bad[row]:  # nothing visible
                out[b, h, i, :] = 0.0
                lse[b, h, i] = -np.inf
                continue
            for col in range(dv):
                out[b, h, i, col] = acc[row, col] / total
            lse[b, h, i] = m_run[row] + math.log(total)


def _launch(call: KernelCall, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = empty_outputs(call)
    out.zero_()
    lse.fill_(float("-inf"))
    with launch():
        _grouped_forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v), out.numpy(), lse.numpy(),
            call.scale, call.params.block_size, call.is_causal, call.group, top_k,
        )  # fmt: skip
    return out, lse


def _landmark_forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(call, -1)


def _retrieval_forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch(call, call.params.top_k)


#: The numba backends; queries may be fewer than keys (a chunk after a cache).
landmark_attention = numba_backend(_landmark_forward, recompute=landmark_call, same_tokens=False)
retrieval_attention = numba_backend(_retrieval_forward, recompute=retrieval_call, same_tokens=False)
