"""numba CPU backend of ``core-context``: one parallel task per tile of query rows, over the
tile's visible core tokens and raw local band only (row ``t`` sees ``n + (t + 1 - n g)`` keys,
about ``L/g + s``).

The core tokens are pooled in torch first (:func:`attnkit_core_context.pooling.core_tokens`,
``O(L D)``); ``_tiled_forward`` is the fused attention: per tile, the logits and the weighted
values are BLAS products over both key sets, the two-pass softmax runs per row over that
row's keys only (raw k/v read in place through ``h // G``, never expanded for GQA). The input
checks, BLAS and numba threads, the non-finite guard, autograd (gradients recompute
:mod:`attnkit_core_context.reference`) and the call's flattening come from
:mod:`attnkit.kernels.cpu`.

Shape legend: ``q (B, Hq, L, D)``, ``k (B, Hkv, L, D)``, ``v (B, Hkv, L, Dv)``,
``kc (B, Hq, m, D)``, ``vc (B, Hq, m, Dv)``, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from attnkit.kernels import KernelCall
from attnkit.kernels.cpu import as_numpy, empty_outputs, launch, numba_backend
from attnkit.kernels.numba_exp import CACHE
from attnkit_core_context.pooling import core_tokens
from attnkit_core_context.reference import core_context_call

__all__ = ["core_context_attention"]


#: Query rows per task: one BLAS product per tile over the keys its rows see (see below).
TILE = 64


@njit(parallel=True, cache=CACHE)
def _tiled_forward(q, k, v, kc, vc, out, lse, scale, group_size, window, group, tile):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, L, Dv)`` and ``lse (B, Hq, L)``: query ``t`` over core tokens
    ``i < n`` and raw tokens ``n g .. t``, ``n = max(t + 1 - window, 0) // group_size``.

    One task per ``tile`` query rows ``t0 .. t1 - 1``: the logits against the core tokens the
    last row sees (``c_hi``) and the raw keys from the first row's first one (``c_lo * g``)
    to ``t1 - 1`` are two BLAS products; the softmax runs per row over the keys that row
    sees only (the others get probability 0, never ``exp`` of their logit), and the values
    are two BLAS products again. Core tokens ``c_lo .. c_hi - 1`` (seen by some rows of the
    tile only) are summed row by row, so a masked core value is never multiplied at all
    (a NaN one, from a non-finite key in its group, must not reach rows that cannot see it).
    Raw values are finite or zero after :func:`attnkit.kernels.cpu.guard_non_finite`."""
    n_b, hq, n_tok, _ = q.shape
    dv = v.shape[3]
    n_tiles = (n_tok + tile - 1) // tile
    for task in prange(n_b * hq * n_tiles):
        b = task // (hq * n_tiles)
        h = (task // n_tiles) % hq
        t0 = (task % n_tiles) * tile
        t1 = min(t0 + tile, n_tok)
        rows = t1 - t0
        kv = h // group
        c_lo = max(t0 + 1 - window, 0) // group_size  # core tokens every row of the tile sees
        c_hi = max(t1 - window, 0) // group_size  # core tokens the tile's last row sees
        lo = c_lo * group_size  # the first row's first raw key: the tile's lowest
        width = t1 - lo
        qt = np.ascontiguousarray(q[b, h, t0:t1])
        sr = np.dot(qt, np.ascontiguousarray(k[b, kv, lo:t1]).T)  # (rows, width)
        pr = np.zeros((rows, width), dtype=v.dtype)
        pc = np.zeros((rows, c_lo), dtype=v.dtype)
        sc = np.zeros((rows, c_hi), dtype=q.dtype)
        if c_hi > 0:
            sc = np.dot(qt, np.ascontiguousarray(kc[b, h, :c_hi]).T)  # (rows, c_hi)
        acc = np.zeros((rows, dv))
        for r in range(rows):
            t = t0 + r
            n_core = max(t + 1 - window, 0) // group_size
            first = n_core * group_size - lo
            last = t - lo
            m = -np.inf
            for i in range(n_core):
                m = max(m, sc[r, i] * scale)
            for j in range(first, last + 1):
                m = max(m, sr[r, j] * scale)
            total = 0.0
            for i in range(c_lo):
                e = math.exp(sc[r, i] * scale - m)
                total += e
                pc[r, i] = e
            for i in range(c_lo, n_core):
                e = math.exp(sc[r, i] * scale - m)
                total += e
                for c in range(dv):
                    acc[r, c] += e * vc[b, h, i, c]
            for j in range(first, last + 1):
                e = math.exp(sr[r, j] * scale - m)
                total += e
                pr[r, j] = e
            lse[b, h, t] = m + math.log(total)
            acc[r, :] /= total
            pc[r, :] /= total
            pr[r, :] /= total
        o = np.dot(pr, np.ascontiguousarray(v[b, kv, lo:t1]))
        if c_lo > 0:
            o += np.dot(pc, np.ascontiguousarray(vc[b, h, :c_lo]))
        for r in range(rows):
            for c in range(dv):
                out[b, h, t0 + r, c] = o[r, c] + acc[r, c]


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    kc, vc = core_tokens(call)
    out, lse = empty_outputs(call)
    p = call.params
    with launch():
        _tiled_forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v),
            as_numpy(kc.to(call.dtype)), as_numpy(vc.to(call.dtype)), out.numpy(), lse.numpy(),
            call.scale, p.group_size, p.window, call.group, TILE,
        )  # fmt: skip
    return out, lse


#: The numba backend (self-attention: as many key tokens as query tokens).
core_context_attention = numba_backend(_forward, recompute=core_context_call)
