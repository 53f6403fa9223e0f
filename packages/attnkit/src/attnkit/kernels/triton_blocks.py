"""Triton building blocks every attention kernel's forward shares (needs triton).

A plugin's ``_triton_kernels.py`` decides which keys a block of queries may see (its mask
rule) and how to walk them; the step over one block of keys is the same everywhere:

* :func:`load_queries`, :func:`online_softmax_state` - a program's query tile and the
  empty ``(acc, m_i, l_i)`` it folds key blocks into;
* :func:`row_poison` - ``0`` for finite query rows, NaN for rows holding a NaN or an infinity
  (``x * 0`` is NaN exactly for those), added to the logits so the rows that see a
  non-finite input come out NaN (attnkit's non-finite rule, see the user guide);
* :func:`store_rows` - the finished rows: ``acc / l`` and the LSE, zeros / -inf for rows
  with nothing to attend to, NaN for poisoned or overflowed rows;
* :func:`attend_block` - load a ``BLOCK_N`` block of keys and values through their strides,
  poison the logits of non-finite keys / values, mask the disallowed pairs, and fold the block
  into the online softmax ``(acc, m_i, l_i)`` in float32.

Import this module only from a kernels module that is itself imported on first use:
``@triton.jit`` decides between compiled and interpreted mode when it decorates, from
``TRITON_INTERPRET`` at that time.

Shape legend: ``q (BLOCK_M, BLOCK_D)``; keys ``offs_n (BLOCK_N,)``; ``acc (BLOCK_M,
BLOCK_DV)``, ``m_i`` / ``l_i`` ``(BLOCK_M,)`` float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["attend_block", "load_kv_block", "load_queries", "online_softmax_state", "row_poison", "store_rows"]


@triton.jit
def row_poison(x, axis: tl.constexpr):  # type: ignore[no-untyped-def]
    """``0`` per row of ``x`` along ``axis`` when every entry is finite, else NaN (float32)."""
    return tl.sum((x * 0.0).to(tl.float32), axis=axis)


@triton.jit
def load_queries(Q, b, h, offs_m, m_ok, offs_d, sqb, sqh, sqn, sqd, D):  # type: ignore[no-untyped-def]
    """The query tile ``(BLOCK_M, BLOCK_D)`` of batch entry ``b``, head ``h`` (rows outside
    ``m_ok`` and columns past ``D`` are 0), and its :func:`row_poison`."""
    q = tl.load(
        Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :] * sqd,
        mask=m_ok[:, None] & (offs_d < D)[None, :],
        other=0.0,
    )
    return q, row_poison(q, 1)


@triton.jit
def online_softmax_state(BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):  # type: ignore[no-untyped-def]
    """The empty online softmax: ``acc`` zeros, ``m_i`` -inf, ``l_i`` zeros (float32)."""
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    return acc, m_i, l_i


@triton.jit
def load_kv_block(k_base, v_base, offs_n, col_ok, skn, skd, svn, svd, offs_d, offs_dv, D, DV):  # type: ignore[no-untyped-def]
    """The keys ``offs_n`` as ``k`` ``(BLOCK_D, BLOCK_N)`` and their values ``v`` ``(BLOCK_N,
    BLOCK_DV)``, with ``kv_bad`` ``(BLOCK_N,)`` (:func:`row_poison` of each key and value row)
    and the values of poisoned rows zeroed; returns ``(k, v, kv_bad)``. For kernels that need
    the logits before the online-softmax step (:func:`attend_block` does both)."""
    k = tl.load(
        k_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
        mask=col_ok[None, :] & (offs_d < D)[:, None],
        other=0.0,
    )
    v = tl.load(
        v_base + offs_n[:, None] * svn + offs_dv[None, :] * svd,
        mask=col_ok[:, None] & (offs_dv < DV)[None, :],
        other=0.0,
    )
    kv_bad = row_poison(k, 0) + row_poison(v, 1)
    # A non-finite value row would poison every query through p @ v, even where p is 0.
    v = tl.where((kv_bad == 0.0)[:, None], v, 0.0)
    return k, v, kv_bad


@triton.jit
def attend_block(  # type: ignore[no-untyped-def]
    q, q_bad, acc, m_i, l_i, k_base, v_base, offs_n, col_ok, key_ok, skn, skd, svn, svd, offs_d, offs_dv, D, DV,
    scale, PRECISION: tl.constexpr,
):  # fmt: skip
    """One online-softmax step over the keys ``offs_n``; returns ``(acc, m_i, l_i)``.

    :param q_bad: :func:`row_poison` of ``q`` (``(BLOCK_M,)``).
    :param k_base: pointer to this batch entry's and key/value head's keys (``v_base`` values).
    :param col_ok: ``(BLOCK_N,)`` which keys to load (in range).
    :param key_ok: ``(BLOCK_M, BLOCK_N)`` which (query, key) pairs the mask allows.
    :param PRECISION: ``tl.dot``'s input precision (``"ieee"`` for float32 accuracy).
    """
    k, v, kv_bad = load_kv_block(k_base, v_base, offs_n, col_ok, skn, skd, svn, svd, offs_d, offs_dv, D, DV)
    s = tl.dot(q, k, input_precision=PRECISION) * scale + q_bad[:, None] + kv_bad[None, :]
    s = tl.where(key_ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # A block may hold no key of some row; keep that row's exponent finite.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@triton.jit
def store_rows(  # type: ignore[no-untyped-def]
    OUT, LSE, b, h, offs_m, m_ok, offs_dv, acc, m_i, l_i, has_key, sob, soh, son, sod, slb, slh, sln, DV
):  # fmt: skip
    """Write the finished rows: ``out = acc / l`` and ``lse = m + log(l)``.

    ``has_key`` (``(BLOCK_M,)``) says which rows may attend to at least one key: the others
    get zeros and ``lse = -inf``. A row with keys and ``l = 0`` had every logit overflow to
    -inf, and one whose ``l`` a NaN logit made NaN is poisoned: both come out NaN, LSE too.
    """
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    tl.store(
        OUT + b * sob + h * soh + offs_m[:, None] * son + offs_dv[None, :] * sod,
        out.to(OUT.dtype.element_ty),
        mask=m_ok[:, None] & (offs_dv < DV)[None, :],
    )
    lse = tl.where(has_key, tl.where(l_i > 0, m_i + tl.log(l_i), float("nan")), float("-inf"))
    tl.store(LSE + b * slb + h * slh + offs_m * sln, lse, mask=m_ok)
