"""The neighbourhood of every query, by brute force: the independent oracle for tests.

Written with Python loops straight from the rule NATTEN documents, so it shares no code with
the backends. Per axis of length ``n`` with kernel ``K`` and dilation ``d``:

* token ``i`` is in dilation group ``g = i % d`` at in-group index ``i' = i // d``; the group
  has ``n_g = ceil((n - g) / d)`` tokens; a query only sees keys of its own group;
* non-causal: ``K // 2`` keys before and ``K // 2 + K % 2 - 1`` after, window shifted inward
  at the borders so every query sees exactly ``K`` keys;
* causal: keys ``i' - K + 1 .. i'`` that exist (no shift: early queries see fewer).

Multi-axis neighbourhoods are the Cartesian product of the per-axis ones.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from attnkit_neighborhood.params import normalize


def axis_neighbours(i: int, n: int, kernel: int, dilation: int, causal: bool) -> list[int]:
    """Key indices query ``i`` sees along one axis, ascending."""
    g = i % dilation
    ii = i // dilation
    n_g = len(range(g, n, dilation))
    if causal:
        lo, hi = max(ii - kernel + 1, 0), ii
    else:
        before = kernel // 2
        after = kernel // 2 + kernel % 2 - 1
        center = min(max(ii, before), n_g - 1 - after)
        lo, hi = center - before, center + after
    return [jj * dilation + g for jj in range(lo, hi + 1)]


def brute_force_mask(
    params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: bool | tuple[bool, ...]
) -> torch.Tensor:
    """``(N, N)`` bool mask over flattened (row-major) tokens: True where query may attend."""
    spatial = tuple(q_shape[2:-1])
    ks, dl, causal = normalize(params, spatial, is_causal)
    n_tok = math.prod(spatial)
    mask = torch.zeros(n_tok, n_tok, dtype=torch.bool)
    strides = [math.prod(spatial[a + 1 :]) for a in range(len(spatial))]
    for coords in itertools.product(*(range(n) for n in spatial)):
        qi = sum(c * s for c, s in zip(coords, strides))
        per_axis = [axis_neighbours(c, n, kk, d, cz) for c, n, kk, d, cz in zip(coords, spatial, ks, dl, causal)]
        for key in itertools.product(*per_axis):
            mask[qi, sum(c * s for c, s in zip(key, strides))] = True
    return mask
