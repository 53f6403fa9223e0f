"""Landmark tokens in a token sequence (the paper's ``add_mem_tokens``): a landmark after every
``block_size - 1`` regular tokens, so block ``j`` is positions ``[j * block_size, (j + 1) *
block_size)`` with its landmark last; a trailing partial block gets none."""

from __future__ import annotations

import torch

__all__ = ["insert_landmarks", "landmark_positions"]


def insert_landmarks(ids: torch.Tensor, block_size: int, landmark_id: int) -> torch.Tensor:
    """``ids (B, T)`` with ``landmark_id`` inserted after every ``block_size - 1`` tokens:
    ``(B, T + T // (block_size - 1))``."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise ValueError(f"ids must be a (B, T) tensor, got {getattr(ids, 'shape', type(ids).__name__)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise ValueError(f"block_size must be an int >= 2, got {block_size!r}")
    b, t = ids.shape
    mem = block_size - 1
    n_lm = t // mem
    full = ids[:, : n_lm * mem].reshape(b, n_lm, mem)
    marks = torch.full((b, n_lm, 1), landmark_id, dtype=ids.dtype, device=ids.device)
    body = torch.cat([full, marks], dim=-1).reshape(b, n_lm * block_size)
    return torch.cat([body, ids[:, n_lm * mem :]], dim=1)


def landmark_positions(length: int, block_size: int) -> torch.Tensor:
    """The landmark positions of a sequence of ``length`` positions."""
    return torch.arange(block_size - 1, length, block_size)
