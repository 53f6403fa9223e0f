"""numba CPU backend of SF-Attn: blockwise forward, backward through the torch block form.

The forward never builds the ``(T, T)`` logits: each query tile multiplies against its own
group's keys and the sink block only (:mod:`attnkit_sinklora._numba_fwd`), so the cost is
``O(T * (G + n_sink) * D)``. Gradients recompute the blockwise torch formulation
(:mod:`attnkit_sinklora.reference`, same cost order) under autograd; a fused numba backward
is not written. Checks, thread limits, autograd and the call's flattening come from
:mod:`attnkit.kernels.cpu`.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.cpu import as_numpy, empty_outputs, launch, numba_backend
from attnkit_sinklora.params import group_size, shift_of_head

__all__ = ["group_bounds", "sf_attention"]

#: Queries per tile: 64 keeps a tile's logits (64 x G) in L2 for G up to a few thousand.
TILE_Q = 64


def group_bounds(t: int, g: int, shift: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every group in original positions (groups hold ``(p + shift) // g``)."""
    first = (g - shift) % g or g  # the first boundary after position 0
    starts = [0, *range(first, t, g)]
    return list(zip(starts, [*starts[1:], t]))


@functools.lru_cache(maxsize=64)
def _tiles(t: int, g: int, shifts: tuple[int, ...], tile: int) -> tuple[np.ndarray, ...]:
    """Per head the index of its shift class, class offsets into the tile list, and the
    tiles ``(t0, tn, gs, ge)`` of every class."""
    classes = sorted(set(shifts))
    head_class = np.array([classes.index(s) for s in shifts], dtype=np.int64)
    rows: list[tuple[int, int, int, int]] = []
    offs = [0]
    for s in classes:
        for gs, ge in group_bounds(t, g, s):
            for t0 in range(gs, ge, tile):
                rows.append((t0, min(tile, ge - t0), gs, ge))
        offs.append(len(rows))
    arr = np.array(rows, dtype=np.int64).reshape(-1, 4)
    cols = tuple(np.ascontiguousarray(arr[:, i]) for i in range(4))
    return (head_class, np.array(offs, dtype=np.int64), *cols)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """SF-Attn of the flattened call: ``out (B, Hq, T, Dv)``, ``lse (B, Hq, T)``."""
    from attnkit_sinklora import _numba_fwd

    t, hq = call.q_len, call.q_heads
    g = group_size(call.params, t)
    shifts = tuple(shift_of_head(call.params, h, hq, g) for h in range(hq))
    head_class, class_off, t0s, tns, gss, ges = _tiles(t, g, shifts, TILE_Q)
    out, lse = empty_outputs(call)
    with launch():
        _numba_fwd.forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v), out.numpy(), lse.numpy(), call.scale,
            int(call.params.n_sink), call.is_causal, head_class, class_off, t0s, tns, gss, ges,
        )  # fmt: skip
    return out, lse


def _recompute(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    from attnkit_sinklora.reference import sf_attention_call

    return sf_attention_call(call)


#: The numba backend: ``q (B, Hq, T, D)`` float32/float64, ``k/v (B, Hkv, T, D|Dv)`` (never
#: expanded to ``Hq`` heads) -> ``(B, Hq, T, Dv)`` (and the LSE ``(B, Hq, T)``); gradients
#: recompute the blockwise torch form. Non-finite keys and values are poisoned by the kit
#: (``non_finite="keys"``); a non-finite query row is NaN through the kernel's softmax.
sf_attention = numba_backend(_forward, recompute=_recompute, non_finite="keys")
