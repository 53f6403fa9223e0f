"""LongHeads' position re-indexing: the position ids the chosen keys and the query get.

The chosen chunks are laid side by side in ascending order, so slot ``r`` of a query's
selection holds positions ``r * w .. r * w + w - 1`` and the query sits in its own chunk's
slot at ``r_c * w + p mod w``. Every query-key distance is then below ``chunks * w`` (the
paper's ``atten_length``, chosen inside the trained length), so RoPE never sees a distance
it was not trained on. Within a chunk the distances are the original ones.

With RoPE, ``R(a)^T R(b) = R(b - a)`` makes the re-rotation a per-slot shift of the query:
``q_c · k_c = (R(-e) q) · k`` for q and k rotated at their original positions, with
``e = (p - p_c) - (j - j_c)`` (:attr:`Selection.shift`); the backends rotate the query once
per chosen chunk instead of re-rotating every key.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit_longheads.selection import Selection

__all__ = ["compact_positions"]


def compact_positions(sel: Selection, kv_len: Any, is_causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(key_positions, valid, query_positions)``: int64 ``(B, Hq, Tq, C * w)`` compact
    positions of the slots of :meth:`Selection.key_index` (with its ``valid``), and int64
    ``(B, Hq, Tq)`` the query's compact position."""
    w = sel.chunk_size
    cap = sel.ids.shape[-1]
    _, valid = sel.key_index(kv_len, is_causal)
    key_pos = torch.arange(cap * w, device=sel.ids.device).expand(valid.shape)
    pos = torch.arange(sel.ids.shape[2], device=sel.ids.device) + sel.offset
    cur = torch.div(pos, w, rounding_mode="floor")
    r_cur = ((sel.ids < cur[:, None]) & sel.valid).sum(-1)
    return key_pos, valid, r_cur * w + pos % w
