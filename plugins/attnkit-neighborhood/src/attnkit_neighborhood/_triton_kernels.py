"""Triton kernels of neighborhood attention: fused forward, dQ and dK/dV.

Imported only by :mod:`attnkit_neighborhood.gpu` on first use, because ``@triton.jit`` fixes
interpreter vs compiled mode when it decorates (``TRITON_INTERPRET`` at import time).

Every kernel sees the token axes canonicalised to three, ``(X, Y, Z)`` (missing leading axes
have size 1, kernel 1, dilation 1, not causal), flattened row-major to ``N = X * Y * Z``.
A program takes a tile of consecutive flattened queries (or keys), bounds the flattened key
(or query) span that its windows can touch, and walks that span in blocks with ``tl.dot``,
masking each (query, key) pair with the exact per-axis neighbourhood rule.

Non-finite input (attnkit's rule, :mod:`attnkit.reference.dense`): the forward adds
``rowsum(x * 0)`` of its q tile and of each k/v block to the logits (0 for finite rows, NaN
otherwise), so a query whose row or an allowed key/value row is not finite gets NaN logits and
so a NaN row and LSE, and zeroes the non-finite value rows, so ``P @ V`` carries nothing of
them to queries that mask them. The backward kernels do not repeat this: gradients of
poisoned rows are not specified.

Shape legend: ``q (B, Hq, N, D)``, ``k (B, Hkv, N, D)``, ``v (B, Hkv, N, Dv)``,
``lse (B, Hq, N)`` float32, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from attnkit.kernels.triton_blocks import attend_block, load_queries, online_softmax_state, store_rows


@triton.jit
def _axis_window(i, n, kernel, dilation, CAUSAL: tl.constexpr):
    """Window of positions ``i`` on one axis: first and last key (raw coordinates)."""
    g = i % dilation
    ii = i // dilation
    if CAUSAL:
        lo = tl.maximum(ii - kernel + 1, 0)
        hi = ii
    else:
        # Group length differs between groups when n % dilation != 0.
        n_g = (n - g + dilation - 1) // dilation
        before = kernel // 2
        after = kernel // 2 + kernel % 2 - 1
        center = tl.minimum(tl.maximum(ii, before), n_g - 1 - after)
        lo = center - before
        hi = center + after
    return lo * dilation + g, hi * dilation + g


@triton.jit
def _axis_ok(qi, kj, n, kernel, dilation, CAUSAL: tl.constexpr):
    """``(M, N)`` bool: key coordinate ``kj[None, :]`` is in the window of ``qi[:, None]``."""
    lo, hi = _axis_window(qi, n, kernel, dilation, CAUSAL)
    kk = kj[None, :]
    same_group = (kk % dilation) == (qi % dilation)[:, None]
    return same_group & (kk >= lo[:, None]) & (kk <= hi[:, None])


@triton.jit
def _pair_mask(
    offs_q,
    offs_k,
    N,
    X,
    Y,
    Z,
    KX,
    KY,
    KZ,
    DX,
    DY,
    DZ,
    CX: tl.constexpr,
    CY: tl.constexpr,
    CZ: tl.constexpr,
):
    """``(M, N)`` bool: flattened key ``offs_k`` lies in the neighbourhood of ``offs_q``."""
    qc = tl.minimum(offs_q, N - 1)  # padded query rows borrow the last row's window
    qx = qc // (Y * Z)
    qy = (qc // Z) % Y
    qz = qc % Z
    kx = offs_k // (Y * Z)
    ky = (offs_k // Z) % Y
    kz = offs_k % Z
    ok = _axis_ok(qx, kx, X, KX, DX, CX)
    ok = ok & _axis_ok(qy, ky, Y, KY, DY, CY)
    ok = ok & _axis_ok(qz, kz, Z, KZ, DZ, CZ)
    return ok & (offs_k < N)[None, :]


@triton.jit
def _key_span(
    offs_q,
    N,
    X,
    Y,
    Z,
    KX,
    KY,
    KZ,
    DX,
    DY,
    DZ,
    CX: tl.constexpr,
    CY: tl.constexpr,
    CZ: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Flattened ``[start, stop)`` covering every window of the query tile, block aligned.

    Row-major order is monotone in the coordinates, so the window box's first corner is its
    smallest flattened index and its last corner the largest.
    """
    qc = tl.minimum(offs_q, N - 1)
    qx = qc // (Y * Z)
    qy = (qc // Z) % Y
    qz = qc % Z
    lx, hx = _axis_window(qx, X, KX, DX, CX)
    ly, hy = _axis_window(qy, Y, KY, DY, CY)
    lz, hz = _axis_window(qz, Z, KZ, DZ, CZ)
    start = tl.min(lx * Y * Z + ly * Z + lz, axis=0)
    stop = tl.max(hx * Y * Z + hy * Z + hz, axis=0) + 1
    return (start // BLOCK_N) * BLOCK_N, stop


@triton.jit
def _query_span(
    offs_k,
    N,
    X,
    Y,
    Z,
    KX,
    KY,
    KZ,
    DX,
    DY,
    DZ,
    CX: tl.constexpr,
    CY: tl.constexpr,
    CZ: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Flattened ``[start, stop)`` covering every query that can see a key of the tile.

    A window holds its own query and spans ``(kernel - 1) * dilation`` positions, so a query
    sees a key only within that distance (and only at or after it when causal).
    """
    kc = tl.minimum(offs_k, N - 1)
    kx = kc // (Y * Z)
    ky = (kc // Z) % Y
    kz = kc % Z
    rx = (KX - 1) * DX
    ry = (KY - 1) * DY
    rz = (KZ - 1) * DZ
    if CX:
        lx = kx
    else:
        lx = tl.maximum(kx - rx, 0)
    if CY:
        ly = ky
    else:
        ly = tl.maximum(ky - ry, 0)
    if CZ:
        lz = kz
    else:
        lz = tl.maximum(kz - rz, 0)
    hx = tl.minimum(kx + rx, X - 1)
    hy = tl.minimum(ky + ry, Y - 1)
    hz = tl.minimum(kz + rz, Z - 1)
    start = tl.min(lx * Y * Z + ly * Z + lz, axis=0)
    stop = tl.max(hx * Y * Z + hy * Z + hz, axis=0) + 1
    return (start // BLOCK_M) * BLOCK_M, stop


@triton.jit
def na_fwd_kernel(
    Q,
    K,
    V,
    OUT,
    LSE,
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sob,
    soh,
    son,
    sod,
    slb,
    slh,
    sln,
    HQ,
    G,
    N,
    D,
    DV,
    X,
    Y,
    Z,
    KX,
    KY,
    KZ,
    DX,
    DY,
    DZ,
    scale,
    CX: tl.constexpr,
    CY: tl.constexpr,
    CZ: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 batch offsets: B * H * N * D may exceed 2**31 elements.
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    hk = h // G  # GQA: read the shared k/v head in place

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < N

    q, q_bad = load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh

    acc, m_i, l_i = online_softmax_state(BLOCK_M, BLOCK_DV)

    start, stop = _key_span(offs_m, N, X, Y, Z, KX, KY, KZ, DX, DY, DZ, CX, CY, CZ, BLOCK_N)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        allowed = _pair_mask(offs_m, offs_n, N, X, Y, Z, KX, KY, KZ, DX, DY, DZ, CX, CY, CZ)
        acc, m_i, l_i = attend_block(
            q, q_bad, acc, m_i, l_i, k_base, v_base, offs_n, n_ok, allowed, skn, skd, svn, svd, offs_d, offs_dv,
            D, DV, scale, PRECISION,
        )  # fmt: skip

    # Every window holds its own query: every real row has a key.
    store_rows(OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, m_ok, sob, soh, son, sod, slb, slh, sln, DV)


@triton.jit
def na_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sdob,
    sdoh,
    sdon,
    sdod,
    slb,
    slh,
    sln,
    HQ,
    G,
    N,
    D,
    DV,
    X,
    Y,
    Z,
    KX,
    KY,
    KZ,
    DX,
    DY,
    DZ,
    scale,
    CX: tl.constexpr,
    CY: tl.constexpr,
    CZ: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``dq`` (same strides as ``q``) from the saved LSE; ``DELTA = rowsum(dO * O) - dLSE``."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HQ).to(tl.int64)
    h = pid_bh % HQ
    hk = h // G

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    m_ok = offs_m < N
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
        mask=m_ok[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )
    do = tl.load(
        DO + b * sdob + h * sdoh + offs_m[:, None] * sdon + offs_dv[None, :] * sdod,
        mask=m_ok[:, None] & (offs_dv < DV)[None, :],
        other=0.0,
    )
    lse = tl.load(LSE + b * slb + h * slh + offs_m * sln, mask=m_ok, other=0.0)
    delta = tl.load(DELTA + b * slb + h * slh + offs_m * sln, mask=m_ok, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    start, stop = _key_span(offs_m, N, X, Y, Z, KX, KY, KZ, DX, DY, DZ, CX, CY, CZ, BLOCK_N)
    for start_n in range(start, stop, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < N
        k = tl.load(
            k_base + offs_n[:, None] * skn + offs_d[None, :] * skd,
            mask=n_ok[:, None] & (offs_d < D)[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        vt = tl.load(
            v_base + offs_n[None, :] * svn + offs_dv[:, None] * svd,
            mask=n_ok[None, :] & (offs_dv < DV)[:, None],
            other=0.0,
        )  # (BLOCK_DV, BLOCK_N)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        allowed = _pair_mask(offs_m, offs_n, N, X, Y, Z, KX, KY, KZ, DX, DY, DZ, CX, CY, CZ)
        p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)

    tl.store(
        DQ + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
        (dq * scale).to(DQ.dtype.element_ty),
        mask=m_ok[:, None] & (offs_d < D)[None, :],
    )


@triton.jit
def na_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV_,
    sqb,
    sqh,
    sqn,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    sdob,
    sdoh,
    sdon,
    sdod,
    slb,
    slh,
    sln,
    HKV,
    G,
    N,
    D,
    DV,
    X,
    Y,
    Z,
    KX,
    KY,
    KZ,
    DX,
    DY,
    DZ,
    scale,
    CX: tl.constexpr,
    CY: tl.constexpr,
    CZ: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``dk``/``dv`` (strides of ``k``/``v``) for one key tile of one k/v head.

    The ``G`` query heads sharing the k/v head are summed inside the program, so GQA needs
    neither atomics nor an expanded copy of k/v.
    """
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // HKV).to(tl.int64)
    hk = pid_bh % HKV

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    n_ok = offs_n < N
    k = tl.load(
        K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
        mask=n_ok[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )  # (BLOCK_N, BLOCK_D)
    v = tl.load(
        V + b * svb + hk * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
        mask=n_ok[:, None] & (offs_dv < DV)[None, :],
        other=0.0,
    )  # (BLOCK_N, BLOCK_DV)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)

    start, stop = _query_span(offs_n, N, X, Y, Z, KX, KY, KZ, DX, DY, DZ, CX, CY, CZ, BLOCK_M)
    for gi in range(G):
        h = hk * G + gi
        for start_m in range(start, stop, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            m_ok = offs_m < N
            q = tl.load(
                Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
                mask=m_ok[:, None] & (offs_d < D)[None, :],
                other=0.0,
            )
            do = tl.load(
                DO + b * sdob + h * sdoh + offs_m[:, None] * sdon + offs_dv[None, :] * sdod,
                mask=m_ok[:, None] & (offs_dv < DV)[None, :],
                other=0.0,
            )
            lse = tl.load(LSE + b * slb + h * slh + offs_m * sln, mask=m_ok, other=0.0)
            delta = tl.load(DELTA + b * slb + h * slh + offs_m * sln, mask=m_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # (BLOCK_M, BLOCK_N)
            allowed = _pair_mask(offs_m, offs_n, N, X, Y, Z, KX, KY, KZ, DX, DY, DZ, CX, CY, CZ)
            allowed = allowed & m_ok[:, None]
            p = tl.where(allowed, tl.exp(s - lse[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    tl.store(
        DK + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd,
        (dk * scale).to(DK.dtype.element_ty),
        mask=n_ok[:, None] & (offs_d < D)[None, :],
    )
    tl.store(
        DV_ + b * svb + hk * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd,
        dv.to(DV_.dtype.element_ty),
        mask=n_ok[:, None] & (offs_dv < DV)[None, :],
    )
