"""Triton forward kernel of ``core-context`` (private to :mod:`attnkit_core_context.gpu`).

Imported on first use only, because ``@triton.jit`` fixes interpreter vs compiled mode when it
decorates (``TRITON_INTERPRET`` at import time). A program takes ``BLOCK_M`` queries of one
head and runs one online softmax over two key sets (the fusion): first the core tokens its
rows can see (``kc`` of this query head), then the raw tokens from the block's first local
key to its last query (``k`` / ``v`` read through ``h // G``, no copy), ``BLOCK_N`` at a time.
The per-row rule (core ``i < n``, raw ``n g <= j <= t``) is the mask inside each block; the
loads, non-finite poisoning and the softmax step are :mod:`attnkit.kernels.triton_blocks`'.

Shape legend: ``q (B, Hq, L, D)``, ``k (B, Hkv, L, D)``, ``v (B, Hkv, L, Dv)``,
``kc (B, Hq, m, D)``, ``vc (B, Hq, m, Dv)``, ``lse (B, Hq, L)`` float32, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnkit.kernels.triton_blocks import attend_block, load_queries, online_softmax_state, store_rows


@triton.jit
def cca_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, KC, VC, OUT, LSE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    scb, sch, scn, scd, swb, swh, swn, swd, sob, soh, son, sod, slb, slh, sln,
    HQ, G, N, M, D, DV, GROUP, WINDOW, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)  # int64 offsets: B * H * T * D may exceed 2**31
    h = pid_bh % HQ
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < N
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, q_bad = load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D)
    acc, m_i, l_i = online_softmax_state(BLOCK_M, BLOCK_DV)
    n_core = tl.maximum(offs_m + 1 - WINDOW, 0) // GROUP  # (BLOCK_M,) core tokens per row
    first_raw = n_core * GROUP
    last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, N)  # one past the block's last query
    core_hi = tl.minimum(tl.maximum(last - WINDOW, 0) // GROUP, M)
    for start in range(0, core_hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < core_hi
        ok = m_ok[:, None] & n_ok[None, :] & (offs_n[None, :] < n_core[:, None])
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, KC + b * scb + h * sch, VC + b * swb + h * swh, offs_n, n_ok, ok,
            scn, scd, swn, swd, offs_d, offs_dv, D, DV, scale, PRECISION,
        )  # fmt: skip
    lo = (tl.maximum(pid_m * BLOCK_M + 1 - WINDOW, 0) // GROUP) * GROUP
    for start in range(lo, last, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < last
        rel = offs_n[None, :]
        ok = m_ok[:, None] & n_ok[None, :] & (rel >= first_raw[:, None]) & (rel <= offs_m[:, None])
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, K + b * skb + hk * skh, V + b * svb + hk * svh, offs_n, n_ok, ok,
            skn, skd, svn, svd, offs_d, offs_dv, D, DV, scale, PRECISION,
        )  # fmt: skip
    # Every row sees at least one key (itself, or with window 0 the core token holding it).
    has_key = m_ok
    store_rows(OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, has_key, sob, soh, son, sod, slb, slh, sln, DV)
