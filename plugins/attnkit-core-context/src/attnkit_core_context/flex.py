"""FlexAttention backend of ``core_context``: the fused softmax over ``[core tokens ; tokens]``
as a ``mask_mod`` over that concatenated key axis (the spec's section 3(d)).

The core tokens are pooled in torch (:func:`attnkit_core_context.pooling.core_tokens`), one
per complete group and query head, and put before the raw keys; compiled FlexAttention then
attends under the visibility rule of :func:`attnkit_core_context.pooling.fused_mask`, stated
as a ``mask_mod`` so that the BlockMask skips the tiles no query sees (raw keys before each
query block's local window, core tokens not yet complete). With importance pooling and GQA
every query head has its own core tokens, so the raw keys are repeated per query head, as in
the reference; mean pooling gives the heads of a group the same core tokens and keeps the KV
heads (FlexAttention's ``enable_gqa``). Inference only on CPU; the ``can_run`` reasons and the
compile-once BlockMask cache are :mod:`attnkit.kernels.flex`'s.

Shape legend: ``q (B, Hq, L, D)``, ``k/v (B, Hkv, L, D|Dv)``, ``m = L // g`` core tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.flex import MaskRule, backend
from attnkit_core_context.pooling import core_tokens, per_query_head, visible

__all__ = ["core_context_attention", "mask_mod", "mask_rule"]


def mask_mod(m: int, group_size: int, window: int, device: torch.device | str = "cpu") -> Any:
    """``mask_mod(b, h, q_idx, kv_idx)`` over ``[core tokens (m) ; raw tokens]``: core token
    ``i`` once its group and ``window`` more tokens have passed, raw tokens from the start of
    the query's window group up to the query (:func:`~attnkit_core_context.pooling.fused_mask`)."""

    def cca(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return visible(q_idx, kv_idx, m, group_size, window)

    return cca


def mask_rule(call: KernelCall) -> MaskRule:
    """The rule of a fused call: its keys are the ``m = kv_len - q_len`` core tokens, then the
    ``q_len`` raw keys."""
    p = call.params
    return MaskRule(mask_mod, (int(call.kv_len - call.q_len), int(p.group_size), int(p.window)))


_fused = backend(mask_rule)


def core_context_call(call: KernelCall) -> torch.Tensor:
    """``out (B, Hq, L, Dv)``: compiled flex over the concatenated keys."""
    kc, vc = core_tokens(call)  # (B, Hq, m, D|Dv), working dtype
    dtype = call.q.dtype
    if call.group > 1 and call.params.pool == "mean":
        # every query head of a group has the same core tokens: keep the KV heads
        kc, vc = kc[:, :: call.group], vc[:, :: call.group]
        k, v = call.k, call.v
    elif call.group > 1:
        k, v = per_query_head(call.k, call.group), per_query_head(call.v, call.group)
    else:
        k, v = call.k, call.v
    keys = torch.cat([kc.to(dtype), k], dim=2)
    values = torch.cat([vc.to(dtype), v], dim=2)
    return _fused.kernel_fn(call.replace(k=keys, v=values))


#: The flex backend (see :func:`attnkit.kernels.kernel` for the calling convention).
core_context_attention = kernel(core_context_call)
