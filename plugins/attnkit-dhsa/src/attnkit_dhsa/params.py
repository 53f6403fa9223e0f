"""Parameters of the ``dhsa`` spec and the sets the contract suite runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_INT_FIELDS = ("block_size", "chunk_size", "top_k", "sink_tokens", "local_tokens")
_MIN = {"block_size": 1, "chunk_size": 1, "top_k": 0, "sink_tokens": 0, "local_tokens": 0}


@dataclass(frozen=True)
class DhsaParams:
    """Parameters of :data:`attnkit_dhsa.DHSA` (prefill, training-free).

    Queries are grouped into blocks of ``block_size`` consecutive positions; keys into
    uniform chunks of ``chunk_size``. Each query block keeps, without scoring, the
    ``sink_tokens`` first keys, its own block and ``local_tokens`` keys before it (and after
    it when not causal), and adds the ``top_k`` other keys whose chunk scores highest against
    the block. A query then attends to its block's keys (causal: those at or before it).

    Paper defaults (legacy DHSA, budget ``N_b = 1024`` at ``b = 128`` with 128 local and 128
    sink slots): ``block_size=128, chunk_size=16, sink_tokens=128, local_tokens=0,
    top_k=768`` (the block itself is the paper's 128 local tokens).

    :param block_size: query block length ``b`` (``>= 1``).
    :param chunk_size: key chunk length (uniform boundaries; ``>= 1``).
    :param top_k: keys chosen by chunk score per query block, beyond the kept ones (``>= 0``).
    :param sink_tokens: the first keys, always kept (attention sinks; ``>= 0``).
    :param local_tokens: keys next to the block, always kept (``>= 0``).
    :param share_heads: one selection for all heads (mean over heads, the legacy paper) or
        one per key/value head (its query heads averaged; the newer code's per-head choice).
    """

    # "min" tells the contract suite's bad-input check which values must be refused.
    block_size: int = field(default=128, metadata={"min": 1})
    chunk_size: int = field(default=16, metadata={"min": 1})
    top_k: int = field(default=768, metadata={"min": 0})
    sink_tokens: int = field(default=128, metadata={"min": 0})
    local_tokens: int = field(default=0, metadata={"min": 0})
    share_heads: bool = True

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
            if value < _MIN[name]:
                raise ValueError(f"{name} must be >= {_MIN[name]}, got {value}")
        if not isinstance(self.share_heads, bool):
            raise TypeError(f"share_heads must be a bool, got {type(self.share_heads).__name__} ({self.share_heads!r})")

    def max_keys(self, is_causal: bool) -> int:
        """An upper bound on the keys one query block keeps (``K`` before clipping to ``Tk``)."""
        local = self.local_tokens * (1 if is_causal else 2)
        return self.sink_tokens + self.block_size + local + self.top_k


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets valid at sequence length ``seq_len`` for the contract suite: both are
    genuinely sparse at the contract's lengths (about 9 to 40 tokens)."""
    return [
        {"block_size": 4, "chunk_size": 2, "top_k": 2, "sink_tokens": 1, "local_tokens": 1},
        {"block_size": 3, "chunk_size": 3, "top_k": 3, "sink_tokens": 0, "local_tokens": 0, "share_heads": False},
    ]
