"""Triton forward kernel of ``dhsa`` (private to :mod:`attnkit_dhsa.gpu`).

Imported on first use only, because ``@triton.jit`` fixes interpreter vs compiled mode when it
decorates (``TRITON_INTERPRET`` at import time). A program takes ``BLOCK_M`` queries of one
head inside one query block, so they share the block's list of kept keys: it walks that list
``BLOCK_N`` slots at a time, loading the keys and values through the gathered indices, with
the kit's online-softmax step (:func:`attnkit.kernels.triton_blocks.attend_block`, which
also applies attnkit's non-finite rule); k/v are read through ``h // G`` (GQA, no copy).

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``index / valid (B, Hs, nb, K)``, ``lse (B, Hq, Tq)`` float32, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnkit.kernels.triton_blocks import attend_block, load_queries, online_softmax_state, store_rows


@triton.jit
def gathered_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, IDX, VALID, OUT, LSE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sib, sih, sir, sik, sob, soh, son, sod, slb, slh, sln,
    HQ, G, TQ, D, DV, KSEL, OFFSET, FIRST, BS, TILES, SHARED, scale,
    CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)  # int64 offsets: B * H * T * D may exceed 2**31
    h = pid_bh % HQ
    hk = h // G
    hs = tl.where(SHARED != 0, 0, hk)
    r = pid_t // TILES  # the query block (row of IDX)
    t = pid_t % TILES
    in_blk = t * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = (r + FIRST) * BS + in_blk  # positions among the keys
    offs_m = pos - OFFSET
    m_ok = (in_blk < BS) & (offs_m >= 0) & (offs_m < TQ)
    offs_m = tl.where(m_ok, offs_m, 0)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q, q_bad = load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D)
    acc, m_i, l_i = online_softmax_state(BLOCK_M, BLOCK_DV)
    row = IDX + b * sib + hs * sih + r * sir
    vrow = VALID + b * sib + hs * sih + r * sir
    for start in range(0, KSEL, BLOCK_N):
        slot = start + tl.arange(0, BLOCK_N)
        in_range = slot < KSEL
        keys = tl.load(row + slot * sik, mask=in_range, other=0)
        kept = (tl.load(vrow + slot * sik, mask=in_range, other=0) != 0) & in_range
        ok = m_ok[:, None] & kept[None, :]
        if CAUSAL:
            ok = ok & (keys[None, :] <= pos[:, None])
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, K + b * skb + hk * skh, V + b * svb + hk * svh, keys, kept, ok,
            skn, skd, svn, svd, offs_d, offs_dv, D, DV, scale, PRECISION,
        )  # fmt: skip
    # Every query keeps its own key, so every real row has one; l_i = 0 there means every
    # logit overflowed to -inf (NaN, as the rule says), a NaN l_i a poisoned row.
    store_rows(OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, m_ok, sob, soh, son, sod, slb, slh, sln, DV)
