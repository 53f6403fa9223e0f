"""Vectorisable ``exp`` for numba kernels (needs numba; shared by the plugins' CPU backends).

numba lowers ``np.exp`` to one scalar libm call per element (no vector math library is
linked), which costs more than a logit row's dot products. This exp is plain arithmetic that
LLVM vectorises: ``exp(x) = 2**n * exp(r)`` with ``n = round(x / ln 2)``, ``|r| <= ln(2)/2``,
``exp(r)`` by its Taylor polynomial (degree 12 for float64, 7 for float32: truncation below
the dtype's rounding error), and ``2**n`` written as exponent bits through an integer view.
Arguments are clamped from below at -708 (float64) / -87 (float32) so ``2**n`` stays a
normal number: ``exp(x)`` for very negative ``x`` is below ``1e-37`` instead of 0,
negligible next to a softmax denominator, which is >= 1. A NaN argument gives NaN (it is not
clamped), so a NaN logit makes its softmax row, and the row's sum, NaN: the kernels rely on
that for attnkit's non-finite rule (see :mod:`attnkit.reference.dense`).

:func:`any_non_finite` is the cheap test of the CPU backends' non-finite guard
(:func:`attnkit.kernels.cpu.guard_non_finite`).
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit

# Whether kernels save their machine code with numba's on-disk cache (``@njit(cache=CACHE)``).
# numba reads that cache with pickle; ATTNKIT_NUMBA_CACHE=0 turns it off for every attnkit
# kernel, at the price of compiling again in each process (docs/user-guide.md).
CACHE = os.environ.get("ATTNKIT_NUMBA_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}

# No 'nnan'/'ninf': the kernels rely on -inf, on max() seeing real values, and on NaN
# propagating (x * 0 is not folded to 0, x == x is not folded to True).
FASTMATH = {"contract", "arcp", "nsz", "reassoc"}

_LOG2E = 1.4426950408889634
_LN2_HI = 0.693145751953125  # ln 2 split so n * _LN2_HI is exact (float32 too) for |n| < 2**10
_LN2_LO = 1.4286068203094173e-06
_LOWEST = -708.0
_LOWEST_F32 = -87.0  # 2**-126: smallest normal float32


@njit(cache=CACHE, fastmath=FASTMATH)
def exp_into(src, dst, c0, c1, shift, poly, pow2):  # type: ignore[no-untyped-def]
    """``dst[c] = exp(src[c] - shift)`` for ``c0 <= c < c1``; returns their sum (float64).

    ``poly`` (``src``'s dtype) and ``pow2`` (float64) are scratch buffers of at least ``c1``
    entries. ``dst`` may be ``src``: each loop reads one buffer and writes another, because
    LLVM only vectorises a loop when its input and output provably do not overlap.
    """
    ft = src.dtype.type
    sh = ft(shift)
    log2e, half, ln2_hi, ln2_lo = ft(_LOG2E), ft(0.5), ft(_LN2_HI), ft(_LN2_LO)
    a7, a6, a5, a4 = ft(1 / 5040), ft(1 / 720), ft(1 / 120), ft(1 / 24)
    a3, a2, a1 = ft(1 / 6), ft(0.5), ft(1.0)
    total = 0.0
    if src.itemsize == 4:
        # float32: degree 7 (truncation ~1e-8 relative) and 2**n as float32 bits, so every
        # loop runs at the full float32 vector width
        bits32 = pow2.view(np.int32)
        pow32 = pow2.view(np.float32)
        low32 = ft(_LOWEST_F32)
        for c in range(c0, c1):
            v = src[c] - sh
            x = v if v > low32 else low32
            n = np.floor(x * log2e + half)
            r = (x - n * ln2_hi) - n * ln2_lo
            bits32[c] = (np.int32(n) + np.int32(127)) << np.int32(23)
            p = a7 * r + a6
            p = p * r + a5
            p = p * r + a4
            p = p * r + a3
            p = p * r + a2
            p = p * r + a1
            p = p * r + a1
            poly[c] = p if v == v else v  # NaN stays NaN (the clamp would hide it)
        for c in range(c0, c1):
            e = ft(poly[c] * pow32[c])
            dst[c] = e
            total += e
        return total
    bits = pow2.view(np.int64)
    low = ft(_LOWEST)
    a12, a11, a10, a9, a8 = ft(1 / 479001600), ft(1 / 39916800), ft(1 / 3628800), ft(1 / 362880), ft(1 / 40320)
    for c in range(c0, c1):
        v = src[c] - sh
        x = v if v > low else low
        n = np.floor(x * log2e + half)
        r = (x - n * ln2_hi) - n * ln2_lo
        bits[c] = (np.int64(n) + 1023) << 52
        p = a12 * r + a11
        p = p * r + a10
        p = p * r + a9
        p = p * r + a8
        p = p * r + a7
        p = p * r + a6
        p = p * r + a5
        p = p * r + a4
        p = p * r + a3
        p = p * r + a2
        p = p * r + a1
        p = p * r + a1
        poly[c] = p if v == v else v  # NaN stays NaN (the clamp would hide it)
    for c in range(c0, c1):
        e = ft(poly[c] * pow2[c])
        dst[c] = e
        total += e
    return total


@njit(cache=CACHE, fastmath=FASTMATH)
def any_non_finite(x):  # type: ignore[no-untyped-def]
    """Whether the C-contiguous array ``x`` holds a NaN or an infinity.

    One vectorised pass: ``x * 0`` is 0 for finite entries and NaN otherwise, and the sum of
    those is NaN exactly when one is.
    """
    flat = x.reshape(-1)
    zero = flat.dtype.type(0.0)
    acc = zero
    for i in range(flat.shape[0]):
        acc += flat[i] * zero
    return acc != zero
