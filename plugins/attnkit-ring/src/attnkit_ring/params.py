"""Parameters of the ``ring`` spec and the sets the contract suite runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: How the key/value blocks travel between ranks.
ROTATE_METHODS = ("p2p", "allgather")


@dataclass(frozen=True)
class RingParams:
    """Parameters of :data:`attnkit_ring.RING`.

    :param rotate: how key/value blocks reach every rank when ``torch.distributed`` is
        initialised with more than one process. ``"p2p"`` (default) is the ring: ``W - 1``
        steps of ``batch_isend_irecv`` to the next rank and from the previous one, each
        overlapped with the attention of the block in hand; it holds two key/value blocks
        per rank, forward only (no gradients). ``"allgather"`` gathers every block at once
        with the differentiable ``torch.distributed.nn.functional.all_gather`` (``W`` blocks
        in memory; gradients flow back to each rank's shard). Without ``torch.distributed``
        (or with one process) the attention is computed locally and ``rotate`` is unused.
    """

    rotate: str = field(default="p2p", metadata={"contract_invalid": ["ring", "all_gather", ""]})

    def __post_init__(self) -> None:
        if not isinstance(self.rotate, str):
            raise TypeError(f"rotate must be a str, one of {ROTATE_METHODS}, got {type(self.rotate).__name__}")
        if self.rotate not in ROTATE_METHODS:
            raise ValueError(f"rotate must be one of {ROTATE_METHODS}, got {self.rotate!r}")


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets valid at sequence length ``seq_len`` for the contract suite (which runs
    in one process, where both methods compute the same local attention)."""
    return [{}]
