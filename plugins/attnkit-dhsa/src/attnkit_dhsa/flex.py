"""FlexAttention backend of ``dhsa``: the selection as a ``mask_mod`` over a captured tensor.

The selection (:func:`attnkit_dhsa.selection.select`) is data-dependent, so the ``mask_mod``
reads a captured bool tensor ``kept (B, Hs, nb, Tk)`` (each query block's kept keys) at the
query's block row, plus the causal limit. Token-level selection gives FlexAttention little
block sparsity to skip (a 128x128 tile is mostly partial), and the BlockMask is rebuilt on
every call (new inputs, new selection); this backend exists as the benchmark's peer, not as a
fast path. The BlockMask cache, ``torch.compile`` once and the ``can_run`` reasons
(inference only on CPU; float32 / float16 / bfloat16) are :mod:`attnkit.kernels.flex`'s.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.flex import MaskRule, backend
from attnkit_dhsa.selection import select


def mask_mod(
    kept: torch.Tensor, offset: int, first: int, block_size: int, causal: bool, group: int,
    device: torch.device | str = "cpu",
) -> Any:  # fmt: skip
    """``mask_mod(b, h, q_idx, kv_idx)``: True where query ``q_idx``'s block keeps key
    ``kv_idx`` (and, causal, ``kv_idx <= q_idx + offset``)."""
    shared = kept.shape[1] == 1

    def dhsa(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        pos = q_idx + offset
        row = pos // block_size - first
        hs = h * 0 if shared else h // group
        ok = kept[b, hs, row, kv_idx]
        return ok & (kv_idx <= pos) if causal else ok

    return dhsa


def mask_rule(call: KernelCall) -> MaskRule:
    """The selection of ``call``'s inputs (per query head unless the heads share it)."""
    sel = select(call.q, call.k, call.params, call.is_causal)
    kept = torch.zeros((*sel.index.shape[:3], call.kv_len), dtype=torch.bool, device=call.device)
    kept = kept.scatter(-1, sel.index, sel.valid)
    heads = None if kept.shape[1] == 1 else call.q_heads
    return MaskRule(
        mask_mod, (kept, int(sel.offset), int(sel.first_block), sel.block_size, call.is_causal, call.group), heads
    )


_per_entry = backend(mask_rule)


def dhsa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> Any:
    """The flex backend, one batch entry at a time: the kit builds the BlockMask for batch
    entry 0 and broadcasts it (``B=None``), while DHSA's selection differs per entry."""
    if q.shape[0] == 1:
        return _per_entry(q, k, v, **kwargs)
    mask = kwargs.pop("mask", None)
    parts = []
    for i in range(q.shape[0]):
        m = None if mask is None else mask[i : i + 1] if mask.shape[0] > 1 else mask
        parts.append(_per_entry(q[i : i + 1], k[i : i + 1], v[i : i + 1], mask=m, **kwargs))
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p, dim=0) for p in zip(*parts))
    return torch.cat(parts, dim=0)


dhsa_attention.mask_rule = mask_rule  # type: ignore[attr-defined]
