"""Triton forward kernel of ``blockrank`` (private to :mod:`attnkit_blockrank.gpu`).

Imported on first use only, because ``@triton.jit`` fixes interpreter vs compiled mode when it
decorates (``TRITON_INTERPRET`` at import time). A program takes ``BLOCK_M`` queries of one
head and walks only the two key ranges its plan row gives
(:func:`attnkit_blockrank.tiles.query_tiles`, ``per_segment=False``: the hull of its rows'
ranges), ``BLOCK_N`` keys at a time, with an online softmax; the pair mask inside the ranges
comes from a ``(Tk,)`` int32 tensor of segment ids. k/v are read through ``h // G`` (GQA).
The load / poison / online-softmax / store steps are :mod:`attnkit.kernels.triton_blocks`'s.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``lse (B, Hq, Tq)`` float32, ``PLAN (n_programs, 6)`` int64, ``SEG (Tk,)`` int32.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnkit.kernels.triton_blocks import attend_block, load_queries, online_softmax_state, store_rows


@triton.jit
def _mask(seg_q, pos, offs_n, m_ok, n_ok, SEG, QUERY_ID, CAUSAL: tl.constexpr):  # type: ignore[no-untyped-def]
    seg_k = tl.load(SEG + offs_n, mask=n_ok, other=-1)
    ok = (seg_k[None, :] == seg_q[:, None]) | (seg_k == 0)[None, :] | (seg_q == QUERY_ID)[:, None]
    ok = ok & m_ok[:, None] & n_ok[None, :]
    if CAUSAL:
        ok = ok & (offs_n[None, :] <= pos[:, None])
    return ok


@triton.jit
def blockrank_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, OUT, LSE, PLAN, SEG,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, slb, slh, sln,
    HQ, G, TQ, TK, D, DV, QUERY_ID, scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)  # int64 offsets: B * H * T * D may exceed 2**31
    h = pid_bh % HQ
    hk = h // G
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < TQ
    pos = offs_m + (TK - TQ)  # each query's position among the keys
    seg_q = tl.load(SEG + pos, mask=m_ok, other=-2)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, q_bad = load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D)
    acc, m_i, l_i = online_softmax_state(BLOCK_M, BLOCK_DV)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    a0 = tl.load(PLAN + pid_m * 6 + 2).to(tl.int32)
    a1 = tl.load(PLAN + pid_m * 6 + 3).to(tl.int32)
    b0 = tl.load(PLAN + pid_m * 6 + 4).to(tl.int32)
    b1 = tl.load(PLAN + pid_m * 6 + 5).to(tl.int32)
    for start in range(a0, a1, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < a1
        ok = _mask(seg_q, pos, offs_n, m_ok, n_ok, SEG, QUERY_ID, CAUSAL)
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, k_base, v_base, offs_n, n_ok, ok,
            skn, skd, svn, svd, offs_d, offs_dv, D, DV, scale, PRECISION,
        )  # fmt: skip
    for start in range(b0, b1, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < b1
        ok = _mask(seg_q, pos, offs_n, m_ok, n_ok, SEG, QUERY_ID, CAUSAL)
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, k_base, v_base, offs_n, n_ok, ok,
            skn, skd, svn, svd, offs_d, offs_dv, D, DV, scale, PRECISION,
        )  # fmt: skip
    # Every query sees at least itself (its own segment), so every valid row has a key.
    has_key = m_ok
    store_rows(OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, has_key, sob, soh, son, sod, slb, slh, sln, DV)
