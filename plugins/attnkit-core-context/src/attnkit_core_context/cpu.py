"""numba CPU backend of ``core-context``: one query row per parallel task, over its visible core
tokens and its raw local window only (``n + (t + 1 - n g)`` keys, about ``L/g + s``).

The core tokens are pooled in torch first (:func:`attnkit_core_context.pooling.core_tokens`,
``O(L D)``); ``_fused_forward`` is the fused attention: one online-free two-pass softmax over
both key sets, read in place (raw k/v through ``h // G``, never expanded for GQA). The input
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


@njit(parallel=True, cache=CACHE)
def _fused_forward(q, k, v, kc, vc, out, lse, scale, group_size, window, group):  # type: ignore[no-untyped-def]
    """Write ``out (B, Hq, L, Dv)`` and ``lse (B, Hq, L)``: query ``t`` over core tokens
    ``i < n`` and raw tokens ``n g .. t``, ``n = max(t + 1 - window, 0) // group_size``."""
    n_b, hq, n_tok, d = q.shape
    dv = v.shape[3]
    for row in prange(n_b * hq * n_tok):
        b = row // (hq * n_tok)
        h = (row // n_tok) % hq
        t = row % n_tok
        kv = h // group
        n_core = max(t + 1 - window, 0) // group_size
        lo = n_core * group_size
        s = np.empty(n_core + t + 1 - lo)
        m = -np.inf
        for i in range(n_core):
            dot = 0.0
            for c in range(d):
                dot += q[b, h, t, c] * kc[b, h, i, c]
            s[i] = dot * scale
            m = max(m, s[i])
        for j in range(lo, t + 1):
            dot = 0.0
            for c in range(d):
                dot += q[b, h, t, c] * k[b, kv, j, c]
            s[n_core + j - lo] = dot * scale
            m = max(m, s[n_core + j - lo])
        total = 0.0
        acc = np.zeros(dv)
        for i in range(n_core):
            e = math.exp(s[i] - m)
            total += e
            for c in range(dv):
                acc[c] += e * vc[b, h, i, c]
        for j in range(lo, t + 1):
            e = math.exp(s[n_core + j - lo] - m)
            total += e
            for c in range(dv):
                acc[c] += e * v[b, kv, j, c]
        for c in range(dv):
            out[b, h, t, c] = acc[c] / total
        lse[b, h, t] = m + math.log(total)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    kc, vc = core_tokens(call)
    out, lse = empty_outputs(call)
    p = call.params
    with launch():
        _fused_forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v),
            as_numpy(kc.to(call.dtype)), as_numpy(vc.to(call.dtype)), out.numpy(), lse.numpy(),
            call.scale, p.group_size, p.window, call.group,
        )  # fmt: skip
    return out, lse


#: The numba backend (self-attention: as many key tokens as query tokens).
core_context_attention = numba_backend(_forward, recompute=core_context_call)
