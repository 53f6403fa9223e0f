"""Which keys each query sees, by brute force: the independent oracle for tests.

Written with Python loops straight from the [inferred] definition of SF-Attn (see the README),
sharing no code with the backends except the two parameter helpers (the group size and which
heads are shifted):

    allowed(h, q, k) = (not causal or k <= q) and (group_h(q) == group_h(k) or k < n_sink)

with ``group_h(p) = (p + shift_h) // G``; ``shift_h = G - G // 2`` for shifted heads of the S²
variant (groups start at ``G // 2 + j * G``, as after LongLoRA's ``roll(-G // 2)``), 0 otherwise. Causality is ANDed with the sink rule too: the paper's adjacency lets
the sink rows see every column, which in a causal LM would let them read the future.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit_sinklora.params import group_size, shift_of_head


def allowed_keys(params: Any, q_pos: int, head: int, n_heads: int, seq_len: int, causal: bool) -> list[int]:
    """Key positions query ``q_pos`` of head ``head`` may attend to, ascending."""
    g = group_size(params, seq_len)
    shift = shift_of_head(params, head, n_heads, g)
    keys = []
    for k_pos in range(seq_len):
        if causal and k_pos > q_pos:
            continue
        same_group = (q_pos + shift) // g == (k_pos + shift) // g
        if same_group or k_pos < params.n_sink:
            keys.append(k_pos)
    return keys


def brute_force_mask(
    params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: bool | tuple[bool, ...]
) -> torch.Tensor:
    """Bool mask, True where the query may attend: ``(T, T)``, or ``(Hq, T, T)`` for the
    shifted variant, whose groups depend on the head."""
    t, n_heads = q_shape[2], q_shape[1]
    causal = bool(is_causal[0]) if isinstance(is_causal, tuple) else bool(is_causal)
    heads = range(n_heads) if params.shifted else range(1)
    mask = torch.zeros(len(heads), t, kv_shape[2], dtype=torch.bool)
    for h in heads:
        for i in range(t):
            for j in allowed_keys(params, i, h, n_heads, t, causal):
                mask[h, i, j] = True
    return mask if params.shifted else mask[0]
