"""Triton forward kernel of SF-Attn (private to :mod:`attnkit_sinklora.gpu`).

Imported on first use only, because ``@triton.jit`` fixes interpreter vs compiled mode when it
decorates (``TRITON_INTERPRET`` at import time).

A program takes one query tile (``<= BLOCK_M`` consecutive queries inside one group) of one
head. It walks the sink keys outside the group, then the group's keys up to the tile's last
query (causal) or the group's end, in ``BLOCK_N`` blocks with an online softmax: the
``(T, T)`` logits are never formed, and k/v are read through ``h // R`` (GQA, no copy).

Non-finite input (attnkit's rule, :mod:`attnkit.reference.dense`): ``rowsum(x * 0)`` of the q
tile and of each k/v block (0 for finite rows, NaN otherwise) is added to the logits, so a
query whose row or an allowed key/value row is not finite gets a NaN row and LSE, and
non-finite value rows are zeroed before ``P @ V``, so queries that mask them never see them.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``,
``lse (B, Hq, T)`` float32, ``R = Hq // Hkv``; tiles ``(t0, tn, gs, ge)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnkit.kernels.triton_blocks import attend_block, load_queries, online_softmax_state, store_rows


@triton.jit
def sf_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, OUT, LSE, HEAD_CLASS, CLASS_OFF, T0, TN, GS, GE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, slb, slh, sln,
    HQ, R, T, D, DV, N_SINK, scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 batch offsets: B * H * T * D may exceed 2**31 elements.
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    hk = h // R
    cls = tl.load(HEAD_CLASS + h)
    first = tl.load(CLASS_OFF + cls)
    n_tiles = tl.load(CLASS_OFF + cls + 1) - first
    # The grid covers the class with the most tiles; extra programs redo the last tile and
    # store nothing.
    ti = first + tl.minimum(pid_t, n_tiles - 1)
    t0 = tl.load(T0 + ti)
    tn = tl.load(TN + ti)
    gs = tl.load(GS + ti)
    ge = tl.load(GE + ti)

    offs_i = tl.arange(0, BLOCK_M)
    offs_m = t0 + offs_i
    n_rows = tl.where(pid_t < n_tiles, tn, 0)
    m_ok = offs_i < n_rows
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, q_bad = load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    acc, m_i, l_i = online_softmax_state(BLOCK_M, BLOCK_DV)

    # Sinks outside the group: before it, or (non-causal) after it.
    ns = tl.minimum(N_SINK, T)
    for start in range(0, ns, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        outside = offs_n < gs
        if not CAUSAL:
            outside = outside | (offs_n >= ge)
        col_ok = (offs_n < ns) & outside
        key_ok = m_ok[:, None] & col_ok[None, :]
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, k_base, v_base, offs_n, col_ok, key_ok, skn, skd, svn, svd, offs_d, offs_dv,
            D, DV, scale, PRECISION,
        )  # fmt: skip

    if CAUSAL:
        ke = tl.minimum(t0 + tn, ge)
    else:
        ke = ge
    for start in range(gs, ke, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        col_ok = offs_n < ke
        key_ok = m_ok[:, None] & col_ok[None, :]
        if CAUSAL:
            key_ok = key_ok & (offs_n[None, :] <= offs_m[:, None])
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, k_base, v_base, offs_n, col_ok, key_ok, skn, skd, svn, svd, offs_d, offs_dv,
            D, DV, scale, PRECISION,
        )  # fmt: skip

    # Every real query sees itself: every stored row has a key.
    store_rows(OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, m_ok, sob, soh, son, sod, slb, slh, sln, DV)
