"""Which key ranges each query tile visits: the work plan of the numba and Triton kernels.

A query at key position ``p`` in segment ``s`` sees (``E`` = the query segment's start,
``I`` the instruction's length, ``[a_s, e_s)`` segment ``s``):

* the instruction (``s = 0``): ``[0, p]`` (causal) or ``[0, I)``;
* document ``s``: the instruction ``[0, I)`` and ``[a_s, p]`` (causal) or ``[a_s, e_s)``;
* the query (``s = n + 1``): ``[0, p]`` (causal) or every key.

So a tile of queries needs at most two contiguous key ranges, and the keys a document's
tile visits do not grow with the number of documents: total work is
``I^2 + sum_d L_d (I + L_d) + Q * T``, linear in the number of documents for fixed segment
lengths. :func:`query_tiles` writes the plan; :func:`visited_pairs` counts its (query, key)
pairs, which is how the tests measure the cost without a clock.

Shape legend: ``Tq`` queries at key positions ``Tk - Tq .. Tk - 1``; a plan is int64
``(n_tiles, 6)``: ``p_lo, p_hi`` (query key positions, ``p_hi`` exclusive) and two key
ranges ``r1_lo, r1_hi, r2_lo, r2_hi`` (half-open, possibly empty).
"""

from __future__ import annotations

import bisect
import itertools

import numpy as np

__all__ = ["query_tiles", "segment_of", "visited_pairs"]


def segment_of(bounds: tuple[int, ...], p: int) -> int:
    """Segment of key position ``p``: 0 instruction, ``1..n`` documents, ``n + 1`` query."""
    return bisect.bisect_right(bounds, p)


def _ranges(bounds: tuple[int, ...], kv_len: int, p0: int, p1: int, causal: bool) -> tuple[int, int, int, int]:
    """Key ranges covering every key a query in ``[p0, p1]`` (inclusive) may see."""
    n = len(bounds) - 1  # documents
    s0, s1 = segment_of(bounds, p0), segment_of(bounds, p1)
    end = p1 + 1
    if s1 == n + 1:  # a query row: everything up to the tile's end (or all keys)
        return 0, end if causal else kv_len, 0, 0
    if s0 == 0:  # instruction rows (and maybe documents after them): one hull
        return 0, end if causal else (bounds[s1] if s1 >= 1 else bounds[0]), 0, 0
    inst = bounds[0]
    start = bounds[s0 - 1]
    return 0, inst, start, end if causal else bounds[s1]


def query_tiles(
    bounds: tuple[int, ...], q_len: int, kv_len: int, tile: int, causal: bool, *, per_segment: bool = True
) -> np.ndarray:
    """The plan of query tiles of at most ``tile`` queries.

    :param per_segment: tiles never cross a segment border (the numba kernel: then the only
        mask inside a range is causality); otherwise tiles are ``tile``-aligned in query
        index (the Triton kernel's programs) and the ranges are the hull of their rows'.
    """
    off = kv_len - q_len
    rows: list[tuple[int, int, int, int, int, int]] = []
    if per_segment:
        edges = sorted({off, kv_len, *(b for b in bounds if off < b < kv_len)})
        for lo, hi in itertools.pairwise(edges):
            for p0 in range(lo, hi, tile):
                p1 = min(p0 + tile, hi)
                rows.append((p0, p1, *_ranges(bounds, kv_len, p0, p1 - 1, causal)))
    else:
        for i0 in range(0, q_len, tile):
            p0, p1 = i0 + off, min(i0 + tile, q_len) + off
            rows.append((p0, p1, *_ranges(bounds, kv_len, p0, p1 - 1, causal)))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 6)


def visited_pairs(plan: np.ndarray) -> int:
    """(query, key) pairs a plan visits, per batch entry and head."""
    n_q = plan[:, 1] - plan[:, 0]
    n_k = (plan[:, 3] - plan[:, 2]) + (plan[:, 5] - plan[:, 4])
    return int((n_q * n_k).sum())
