"""FlexAttention backend of ``blockrank``: the paper's mask as a ``mask_mod``.

The official code ships this mask as ``flex_blockrank_attention_mask`` (equal padded blocks);
here a key's segment is read from a captured ``(Tk,)`` tensor of segment ids, so documents may
have any lengths. The BlockMask cache, ``torch.compile`` once, dynamo's recompile limit and the
``can_run`` reasons (inference only on CPU; float32 / float16 / bfloat16) are
:mod:`attnkit.kernels.flex`'s; the benchmark's masked-SDPA peer reads the same rule.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.flex import MaskRule, backend
from attnkit_blockrank.params import segment_bounds

__all__ = ["blockrank_attention", "mask_mod", "mask_rule"]


def mask_mod(
    bounds: tuple[int, ...], kv_len: int, causal: bool, offset: int, device: torch.device | str = "cpu"
) -> Any:
    """``mask_mod(b, h, q_idx, kv_idx)``: the BlockRank rule for segment starts ``bounds``;
    query ``q_idx`` sits at key position ``q_idx + offset`` (``offset = Tk - Tq``)."""
    j = torch.arange(kv_len, device=device)
    b = torch.tensor(bounds, dtype=torch.int64, device=device)
    seg = (j[:, None] >= b[None, :]).sum(-1)  # (Tk,) segment id of each key
    query_id = len(bounds)
    off = torch.tensor(offset, device=device)

    def blockrank(b_: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        pos = q_idx + off
        sq, sk = seg[pos], seg[kv_idx]
        ok = (sq == sk) | (sk == 0) | (sq == query_id)
        return ok & (kv_idx <= pos) if causal else ok

    return blockrank


def mask_rule(call: KernelCall) -> MaskRule:
    """The BlockRank mask of ``call`` (the same for every head)."""
    return MaskRule(
        mask_mod, (segment_bounds(call.params), int(call.kv_len), call.is_causal, int(call.kv_len - call.q_len))
    )


blockrank_attention = backend(mask_rule)
