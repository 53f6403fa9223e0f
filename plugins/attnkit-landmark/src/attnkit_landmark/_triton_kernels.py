"""Triton forward kernel of ``landmark`` (private to :mod:`attnkit_landmark.gpu`).

Imported on first use only, because ``@triton.jit`` fixes interpreter vs compiled mode when it
decorates (``TRITON_INTERPRET`` at import time). A program takes ``BLOCK_M`` queries of one
head inside one key block ``r`` (their own block), and walks the key blocks one at a time
(``BLOCK_N >= block_size`` key slots), folding each into an online softmax over the
rewritten logits of :mod:`attnkit_landmark.reference`:

* the own block ``r``: its regular keys (causal: at or before the query), logits as they are;
* an earlier complete block ``j`` (causal; every other complete block when not causal): its
  regular keys with ``s_u - lse_j + s_{L_j}`` (``lse_j`` the row's log-sum-exp over the
  block's regular logits, ``s_{L_j}`` the landmark logit); the landmark itself gets no weight;
* every other block is skipped.

attnkit's non-finite rule as :mod:`attnkit.kernels.triton_blocks`: a non-finite q row, or a
non-finite k / v row of a key whose logit the row uses (the gated blocks' landmarks
included), makes the logits NaN, and the row comes out NaN (:func:`store_rows`); non-finite
value rows are zeroed before ``p @ v`` so that they poison no row that gives them no weight.
k / v are read through ``h // G`` (GQA, no copy).

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``lse (B, Hq, Tq)`` float32, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnkit.kernels.triton_blocks import load_kv_block, load_queries, online_softmax_state, store_rows


@triton.jit
def landmark_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, OUT, LSE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, son, sod, slb, slh, sln,
    HQ, G, TQ, TK, D, DV, OFFSET, FIRST, BS, TILES, scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)  # int64 offsets: B * H * T * D may exceed 2**31
    h = pid_bh % HQ
    hk = h // G
    r = pid_t // TILES + FIRST  # the queries' own key block
    t = pid_t % TILES
    in_blk = t * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = r * BS + in_blk  # key positions of the queries
    offs_m = pos - OFFSET
    m_ok = (in_blk < BS) & (offs_m >= 0) & (offs_m < TQ)
    offs_m = tl.where(m_ok, offs_m, 0)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, q_bad = load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D)
    acc, m_i, l_i = online_softmax_state(BLOCK_M, BLOCK_DV)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    n_full = TK // BS
    nbk = (TK + BS - 1) // BS
    slot = tl.arange(0, BLOCK_N)
    regular = slot < BS - 1
    last = slot == BS - 1
    j_end = nbk
    if CAUSAL:
        j_end = r + 1
    for j in range(j_end):
        own = j == r
        if own or j < n_full:
            keys = j * BS + slot
            col_ok = (slot < BS) & (keys < TK)
            k, v, kv_bad = load_kv_block(
                k_base, v_base, keys, col_ok, skn, skd, svn, svd, offs_d, offs_dv, D, DV
            )  # k (BLOCK_D, BLOCK_N)
            s = tl.dot(q, k, input_precision=PRECISION) * scale + q_bad[:, None] + kv_bad[None, :]
            reg_ok = m_ok[:, None] & (regular & col_ok)[None, :]
            if own:
                ok = reg_ok
                if CAUSAL:
                    ok = ok & (keys[None, :] <= pos[:, None])
                s = tl.where(ok, s, float("-inf"))
            else:
                # Inner log-sum-exp over the regular keys, landmark logit from the last slot.
                s_reg = tl.where(reg_ok, s, float("-inf"))
                mx = tl.max(s_reg, axis=1)
                mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
                lse_j = mx_safe + tl.log(tl.sum(tl.exp(s_reg - mx_safe[:, None]), axis=1))
                s_lm = tl.sum(tl.where(last[None, :], s, 0.0), axis=1)
                s = tl.where(reg_ok, s - lse_j[:, None] + s_lm[:, None], float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
    # Every real query has a key of its own block (block_size >= 2 puts one regular key first).
    store_rows(OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, m_ok, sob, soh, son, sod, slb, slh, sln, DV)
