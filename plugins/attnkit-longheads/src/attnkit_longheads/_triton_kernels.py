"""Triton forward kernel of ``longheads`` (private to :mod:`attnkit_longheads.gpu`).

Imported on first use only, because ``@triton.jit`` fixes interpreter vs compiled mode when it
decorates (``TRITON_INTERPRET`` at import time). LongHeads selects per query, so queries of a
tile share no key list: a program takes one ``(batch, query head, query)`` row and walks its
chosen chunks (ascending, the first ``n_valid`` slots of ``ids``), each a contiguous run of
``w`` keys, ``BLOCK_N`` keys at a time, with an online softmax in float32. With ``ROPE`` the
query is rotated by ``-shift`` once per chunk (HF ``rotate_half``: the two halves of the head
dim), which equals re-rotating keys and query at their compact positions
(:mod:`attnkit_longheads.positions`); the angle is reduced modulo ``2 pi`` in float64 before
the float32 ``cos`` / ``sin``, since shifts reach the sequence length. k/v are read through
``h // G`` (GQA, no copy). attnkit's non-finite rule is folded into the inputs beforehand
(:func:`attnkit.kernels.cpu.guard_non_finite`): here a NaN logit of an attended key makes its
row NaN, and masked keys never enter the sums.

The logits are row-vector products (``tl.sum``), not ``tl.dot``: a program holds one query.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``ids / shift (B, Hq, Tq, C)``, ``n_valid (B, Hq, Tq)``, ``lse (B, Hq, Tq)`` float32,
``freq (HALF,)`` float64, ``G = Hq // Hkv``, ``HALF = ceil(D / 2)``.
"""

from __future__ import annotations

import triton
import triton.language as tl

TWO_PI = 6.283185307179586


@triton.jit
def chunk_rows_fwd_kernel(  # type: ignore[no-untyped-def]
    Q, K, V, IDS, NV, SHIFT, FREQ, OUT, LSE,
    sqb, sqh, sqn, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sib, sih, sin_, sic, snb, snh, snn, sob, soh, son, sod, slb, slh, sln,
    HQ, G, TK, D, DV, HALF, W, OFFSET, scale,
    CAUSAL: tl.constexpr, ROPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_DV: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)  # int64 offsets: B * H * T * D may exceed 2**31
    h = pid_bh % HQ
    kv = h // G
    p = i + OFFSET  # the query's key position
    offs_h = tl.arange(0, BLOCK_H)
    first = offs_h < HALF
    second = offs_h < D - HALF
    q_base = Q + b * sqb + h * sqh + i * sqn
    q1 = tl.load(q_base + offs_h * sqd, mask=first, other=0.0).to(tl.float32)
    q2 = tl.load(q_base + (HALF + offs_h) * sqd, mask=second, other=0.0).to(tl.float32)
    if ROPE:
        freq = tl.load(FREQ + offs_h, mask=first, other=0.0)
    offs_dv = tl.arange(0, BLOCK_DV)
    dv_ok = offs_dv < DV
    k_base = K + b * skb + kv * skh
    v_base = V + b * svb + kv * svh
    row = b * sib + h * sih + i * sin_
    n = tl.load(NV + b * snb + h * snh + i * snn)
    acc = tl.zeros([BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([], dtype=tl.float32)
    for r in range(n):
        g = tl.load(IDS + row + r * sic)
        if ROPE:
            ang = -tl.load(SHIFT + row + r * sic).to(tl.float64) * freq
            ang = (ang - TWO_PI * tl.floor(ang / TWO_PI)).to(tl.float32)
            cs = tl.cos(ang)
            sn = tl.sin(ang)
            qa = q1 * cs - q2 * sn
            qb = q2 * cs + q1 * sn
        else:
            qa = q1
            qb = q2
        lo = g * W
        hi = tl.minimum(lo + W, TK) - 1
        if CAUSAL:
            hi = tl.minimum(hi, p)
        for start in range(0, W, BLOCK_N):
            offs_n = lo + start + tl.arange(0, BLOCK_N)
            ok = offs_n <= hi
            kp = k_base + offs_n[:, None] * skn
            k1 = tl.load(kp + offs_h[None, :] * skd, mask=ok[:, None] & first[None, :], other=0.0).to(tl.float32)
            k2 = tl.load(kp + (HALF + offs_h)[None, :] * skd, mask=ok[:, None] & second[None, :], other=0.0).to(
                tl.float32
            )
            s = (tl.sum(qa[None, :] * k1, axis=1) + tl.sum(qb[None, :] * k2, axis=1)) * scale
            s = tl.where(ok, s, float("-inf"))
            v = tl.load(
                v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd, mask=ok[:, None] & dv_ok[None, :], other=0.0
            ).to(tl.float32)
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            pr = tl.exp(s - m_safe)
            l_i = l_i * alpha + tl.sum(pr, axis=0)
            acc = acc * alpha + tl.sum(pr[:, None] * v, axis=0)
            m_i = m_new
    has = n > 0
    out = acc / tl.where(has, l_i, 1.0)
    tl.store(OUT + b * sob + h * soh + i * son + offs_dv * sod, out.to(OUT.dtype.element_ty), mask=dv_ok)
    # A row with keys and l = 0 had every logit at -inf (overflow): NaN, as the rule says.
    lse = tl.where(has, tl.where(l_i > 0, m_i + tl.log(l_i), float("nan")), float("-inf"))
    tl.store(LSE + b * slb + h * slh + i * sln, lse)
