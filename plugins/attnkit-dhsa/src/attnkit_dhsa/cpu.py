"""numba CPU backend of ``dhsa``: sparse attention over the keys each query block selected.

The selection is :func:`attnkit_dhsa.selection.select` (torch, ``O(T^2 / b)``); the kernel
takes one ``(batch, key/value head, query block)`` per parallel task, gathers the block's
``K`` kept keys and values into contiguous buffers once for the ``G`` query heads that share
them, and per query head runs two matmuls (BLAS, one thread per task) with a row softmax
between them, its ``exp`` the vectorised :func:`~attnkit.kernels.numba_exp.exp_into` (numba's
own is one libm call per element, which cost more than the matmuls). The kept indices are
ascending, so a causal query's keys are a prefix of its block's list.

The input checks, BLAS and numba threads, autograd (gradients recompute
:mod:`attnkit_dhsa.reference`; the method is training-free) and the call's flattening come
from :mod:`attnkit.kernels.cpu`, and so does attnkit's non-finite rule
(:func:`~attnkit.kernels.cpu.guard_non_finite`, applied after the selection: non-finite key
rows become NaN and their values zero, so the kernel only lets a NaN logit make its row NaN).

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``G = Hq // Hkv``; ``index / valid (B, Hs, nb, K)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from attnkit.kernels import KernelCall
from attnkit.kernels.cpu import as_numpy, empty_outputs, guard_non_finite, launch, numba_backend
from attnkit.kernels.numba_exp import CACHE, FASTMATH, exp_into
from attnkit_dhsa.reference import dhsa_call
from attnkit_dhsa.selection import select

__all__ = ["dhsa_attention"]


@njit(parallel=True, cache=CACHE, fastmath=FASTMATH)
def _gathered_forward(q, k, v, index, n_kept, out, lse, scale, offset, first, bs, causal, group):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)``: query ``i`` (position
    ``i + offset``, block row ``(i + offset) // bs - first``) attends the first ``n_kept``
    keys of its block's ``index`` row (causal: those at or before its position).

    One task per ``(batch, key/value head, query block)``: the block's keys and values are
    gathered once and serve the ``group`` query heads that share them."""
    n_b, _hq, tq, d = q.shape
    hkv = k.shape[1]
    dv = v.shape[3]
    hs = index.shape[1]
    nb = index.shape[2]
    for task in prange(n_b * hkv * nb):
        b = task // (hkv * nb)
        kv = (task // nb) % hkv
        r = task % nb
        sh = 0 if hs == 1 else kv
        start = (r + first) * bs
        i0 = max(start - offset, 0)
        i1 = min(start + bs - offset, tq)
        if i1 <= i0:
            continue
        rows = i1 - i0
        n = n_kept[b, sh, r]
        kg = np.empty((n, d), q.dtype)
        vg = np.empty((n, dv), q.dtype)
        for s in range(n):
            j = index[b, sh, r, s]
            kg[s, :] = k[b, kv, j, :]
            vg[s, :] = v[b, kv, j, :]
        # keys each row sees: the kept indices ascend, so a causal row's keys are a prefix
        # whose length grows with the row
        seen = np.empty(rows, np.int64)
        c = 0
        for row in range(rows):
            if causal:
                p = i0 + row + offset
                while c < n and index[b, sh, r, c] <= p:
                    c += 1
                seen[row] = c
            else:
                seen[row] = n
        poly = np.empty(n, q.dtype)
        pow2 = np.empty(n, np.float64)
        totals = np.empty(rows)
        for g in range(group):
            h = kv * group + g
            scores = np.dot(q[b, h, i0:i1], kg.T)  # (rows, n)
            for row in range(rows):
                c_n = seen[row]
                srow = scores[row]
                m = -np.inf
                for s in range(c_n):
                    x = srow[s] * scale
                    srow[s] = x
                    if x > m:  # a NaN logit is skipped here and poisons the row in exp_into
                        m = x
                totals[row] = exp_into(srow, srow, 0, c_n, m, poly, pow2)
                for s in range(c_n, n):
                    srow[s] = 0.0
                lse[b, h, i0 + row] = m + math.log(totals[row])
            acc = np.dot(scores, vg)  # (rows, Dv)
            for row in range(rows):
                total = totals[row]
                for cc in range(dv):
                    out[b, h, i0 + row, cc] = acc[row, cc] / total


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    # Select on the caller's inputs, then apply the non-finite guard: the guard turns a key
    # whose value row is not finite into a NaN key row, which would change the selection.
    sel = select(call.q, call.k, call.params, call.is_causal)
    call = guard_non_finite(call)
    n_kept = sel.valid.sum(-1).contiguous()  # kept keys come first in each row
    out, lse = empty_outputs(call)
    with launch():
        _gathered_forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v), as_numpy(sel.index), as_numpy(n_kept),
            out.numpy(), lse.numpy(), call.scale, int(sel.offset), int(sel.first_block), sel.block_size,
            call.is_causal, call.group,
        )  # fmt: skip
    return out, lse


#: The numba backend; queries may be fewer than keys (a chunk of prefill after a cache).
dhsa_attention = numba_backend(_forward, recompute=dhsa_call, same_tokens=False, non_finite="kernel")
