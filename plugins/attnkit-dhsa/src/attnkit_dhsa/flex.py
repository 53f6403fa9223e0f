"""FlexAttention backend of ``dhsa``: the selection as a ``mask_mod`` over a captured tensor.

The selection (:func:`attnkit_dhsa.selection.select`) is data-dependent, so the ``mask_mod``
reads a captured bool tensor ``kept (B, Hs, nb, Tk)`` (each query block's kept keys) at the
query's block row, plus the causal limit. Token-level selection gives FlexAttention little
block sparsity to skip (a 128x128 tile is mostly partial), and the BlockMask is rebuilt on
every call (new inputs, new selection); this backend exists as the benchmark's peer, not as a
fast path (the rule is marked ``cache=False`` and per batch entry). ``torch.compile`` once and the ``can_run`` reasons
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
    # A selection per batch entry (the mask_mod reads b), computed from this call's inputs:
    # never asked for again, so not cached.
    return MaskRule(
        mask_mod,
        (kept, int(sel.offset), int(sel.first_block), sel.block_size, call.is_causal, call.group),
        heads,
        batch=call.batch if call.batch > 1 else None,
        cache=False,
    )


#: The flex backend (inference; a benchmark peer, see the module docstring).
dhsa_attention = backend(mask_rule)
