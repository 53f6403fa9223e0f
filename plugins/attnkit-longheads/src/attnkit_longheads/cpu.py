"""numba CPU backend of ``longheads``: each query over the keys of its chosen chunks only.

The selection is :func:`attnkit_longheads.selection.select` (torch, ``O(Tq n D)``); the kernel
takes one ``(batch, query head, query)`` row per parallel task and walks its chosen chunks
(ascending), each a contiguous run of keys, so nothing is gathered: at most
``chunks * chunk_size`` logits per query, ``O(T * chunks * w * D)`` in all (linear in ``T``).
With ``rope_theta`` the query is rotated by ``-shift`` once per chunk (``O(D)``), which is the
paper's re-rotation of keys and query at compact positions
(:mod:`attnkit_longheads.positions`).

The input checks, BLAS and numba threads, autograd (gradients recompute
:mod:`attnkit_longheads.reference`; the method is training-free) and the call's flattening
come from :mod:`attnkit.kernels.cpu`, and so does attnkit's non-finite rule
(:func:`~attnkit.kernels.cpu.guard_non_finite`, applied after the selection so a NaN key
cannot change which chunks are chosen; the kernel only lets a NaN logit make its row NaN).

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``G = Hq // Hkv``; ``ids / shift (B, Hq, Tq, C)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from attnkit.kernels import KernelCall
from attnkit.kernels.cpu import as_numpy, empty_outputs, guard_non_finite, launch, numba_backend
from attnkit.kernels.numba_exp import CACHE
from attnkit_longheads.reference import longheads_call
from attnkit_longheads.rope import inv_freq
from attnkit_longheads.selection import select

__all__ = ["longheads_attention"]


@njit(parallel=True, cache=CACHE)
def _chunk_forward(q, k, v, ids, n_valid, shift, freq, out, lse, scale, w, offset, causal, group, rope):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)``: query ``i`` (position
    ``p = i + offset``) attends the keys of its first ``n_valid`` chunks in ``ids`` (causal:
    those at or before ``p``), its query rotated by ``-shift`` per chunk when ``rope``."""
    n_b, hq, tq, d = q.shape
    tk, dv = k.shape[2], v.shape[3]
    cap = ids.shape[3]
    half = d // 2
    for row in prange(n_b * hq * tq):
        b = row // (hq * tq)
        h = (row // tq) % hq
        i = row % tq
        kv = h // group
        p = i + offset
        n = n_valid[b, h, i]
        s = np.empty(cap * w)
        qr = np.empty(d)
        used = 0
        m = -np.inf
        for r in range(n):
            g = ids[b, h, i, r]
            lo = g * w
            hi = min(lo + w, tk) - 1
            if causal:
                hi = min(hi, p)
            if rope:
                e = -float(shift[b, h, i, r])
                for c in range(half):
                    ang = e * freq[c]
                    cs, sn = math.cos(ang), math.sin(ang)
                    x1, x2 = q[b, h, i, c], q[b, h, i, c + half]
                    qr[c] = x1 * cs - x2 * sn
                    qr[c + half] = x2 * cs + x1 * sn
            else:
                for c in range(d):
                    qr[c] = q[b, h, i, c]
            for j in range(lo, hi + 1):
                dot = 0.0
                for c in range(d):
                    dot += qr[c] * k[b, kv, j, c]
                x = dot * scale
                s[used] = x
                used += 1
                if x > m:  # a NaN logit is skipped here and poisons the row below
                    m = x
        if used == 0:
            out[b, h, i, :] = 0.0
            lse[b, h, i] = -np.inf
            continue
        acc = np.zeros(dv)
        total = 0.0
        used = 0
        for r in range(n):
            lo = ids[b, h, i, r] * w
            hi = min(lo + w, tk) - 1
            if causal:
                hi = min(hi, p)
            for j in range(lo, hi + 1):
                e = math.exp(s[used] - m)
                used += 1
                total += e
                for c in range(dv):
                    acc[c] += e * v[b, kv, j, c]
        for c in range(dv):
            out[b, h, i, c] = acc[c] / total
        lse[b, h, i] = m + math.log(total)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    # Select on the caller's inputs, then apply the non-finite guard (it turns a key whose
    # value row is not finite into a NaN key row, which would change the selection).
    p = call.params
    sel = select(call.q, call.k, call.v, p, call.is_causal, call.scale)
    call = guard_non_finite(call)
    rope = p.rope_theta is not None
    freq = inv_freq(call.head_dim, p.rope_theta).numpy() if rope else np.zeros(1)
    out, lse = empty_outputs(call)
    with launch():
        _chunk_forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v), as_numpy(sel.ids.contiguous()),
            as_numpy(sel.n_valid().contiguous()), as_numpy(sel.shift.contiguous()), freq, out.numpy(), lse.numpy(),
            call.scale, p.chunk_size, int(sel.offset), call.is_causal, call.group, rope,
        )  # fmt: skip
    return out, lse


#: The numba backend; queries may be fewer than keys (with ``representation="mean"``).
longheads_attention = numba_backend(_forward, recompute=longheads_call, same_tokens=False, non_finite="kernel")
