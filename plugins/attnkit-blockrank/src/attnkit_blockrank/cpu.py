"""numba CPU backend of ``blockrank``: segment-aligned query tiles over their own key ranges.

:mod:`attnkit_blockrank._numba_fwd` is the math and :func:`attnkit_blockrank.tiles.query_tiles`
the plan (which keys each tile visits); the input checks, BLAS and numba threads, the
non-finite guard, autograd (gradients recompute :mod:`attnkit_blockrank.reference`) and the
call's flattening come from :mod:`attnkit.kernels.cpu`.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``,
``G = Hq // Hkv``.
"""

from __future__ import annotations

import numpy as np
import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.cpu import as_numpy, empty_outputs, launch, numba_backend
from attnkit_blockrank.params import segment_bounds
from attnkit_blockrank.reference import blockrank_call
from attnkit_blockrank.tiles import query_tiles

__all__ = ["TILE", "blockrank_attention", "plan"]

#: Queries per work item (a module attribute, so tests can narrow it).
TILE = 64


def plan(call: KernelCall) -> np.ndarray:
    """The numba kernel's work plan for ``call`` (see :mod:`attnkit_blockrank.tiles`)."""
    return query_tiles(segment_bounds(call.params), call.q_len, call.kv_len, TILE, call.is_causal)


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    from attnkit_blockrank._numba_fwd import forward

    out, lse = empty_outputs(call)
    if call.q_len == 0:
        return out, lse
    with launch():
        forward(
            as_numpy(call.q), as_numpy(call.k), as_numpy(call.v), out.numpy(), lse.numpy(),
            call.scale, call.is_causal, call.group, plan(call),
        )  # fmt: skip
    return out, lse


#: The numba backend; queries may be fewer than keys (they are the last ``Tq`` keys).
blockrank_attention = numba_backend(_forward, recompute=blockrank_call, same_tokens=False)
