"""The allowed keys of every query, by brute force: the oracle the contract suite checks
every backend against. Ring attention *is* dense attention over the whole sequence, only
computed in pieces: every key is allowed, and with ``is_causal`` only the keys at or before
the query's position ``p = i + Tk - Tq`` (bottom-right alignment, as attnkit's causal masks).
Python loops straight from the definition, sharing no code with the backends.
"""

from __future__ import annotations

from typing import Any

import torch


def brute_force_mask(params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: bool) -> torch.Tensor:
    """``(Tq, Tk)`` bool mask, True where the query may attend, for ``q (B, H, Tq, D)``."""
    tq, tk = q_shape[2], kv_shape[2]
    mask = torch.zeros(tq, tk, dtype=torch.bool)
    for i in range(tq):
        p = i + tk - tq
        for j in range(tk):
            mask[i, j] = not is_causal or j <= p
    return mask
