"""FlexAttention backend of SF-Attn: ``torch.compile(flex_attention)`` with a ``mask_mod``.

The ``mask_mod`` is the [inferred] rule itself: same group (``(pos + shift_h) // G``, shift
``G - G // 2`` for the shifted heads of the S² variant) or a sink key, AND causal. The group size,
sink count and per-head shifts are captured as small tensors so one Python function serves
every parameter set; the mask is per head only when some head is shifted. The BlockMask
cache, the compiled function, dynamo's recompile limit and the ``can_run`` reasons (inference
only on CPU, float32 / float16 / bfloat16) are :mod:`attnkit.kernels.flex`'s.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.flex import MaskRule, backend
from attnkit_sinklora.params import group_size, shift_of_head

__all__ = ["mask_mod", "mask_rule", "sf_attention"]


def mask_mod(g: int, n_sink: int, shifts: tuple[int, ...], causal: bool, device: torch.device | str = "cpu") -> Any:
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``: True where the query may attend.

    :param shifts: the token shift of every query head (0 or ``g - g // 2``).
    """
    per_head = any(shifts)
    shift_t = torch.tensor(shifts, dtype=torch.int64, device=device)
    g_t = torch.tensor(g, dtype=torch.int64, device=device)
    ns_t = torch.tensor(n_sink, dtype=torch.int64, device=device)

    def sf(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        # flex_attention calls the mask_mod with every real head index even when the
        # BlockMask was built with H=None, so the per-head table is only read when it exists.
        s = shift_t[h] if per_head else 0
        ok = ((q_idx + s) // g_t == (kv_idx + s) // g_t) | (kv_idx < ns_t)
        if causal:
            ok = ok & (kv_idx <= q_idx)
        return ok

    return sf


def mask_rule(call: KernelCall) -> MaskRule:
    """The groups, sinks and per-head shifts of ``call``'s length, heads and parameters."""
    hq = call.q_heads
    g = group_size(call.params, call.q_len)
    shifts = tuple(shift_of_head(call.params, h, hq, g) for h in range(hq))
    return MaskRule(mask_mod, (g, call.params.n_sink, shifts, call.is_causal), heads=hq if any(shifts) else None)


#: The flex backend: ``q (B, Hq, T, D)``, ``k/v (B, Hkv, T, D|Dv)`` (GQA through
#: ``enable_gqa``, no copy) -> ``(B, Hq, T, Dv)``.
sf_attention = backend(mask_rule)
