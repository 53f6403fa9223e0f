"""Parameters of the ``landmark`` and ``landmark.retrieval`` specs, and the sets the contract
suite runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnkit.paramcheck import check_int as _check_int


@dataclass(frozen=True)
class LandmarkParams:
    """Parameters of :data:`attnkit_landmark.LANDMARK` (training-time grouped softmax).

    The key axis is cut into blocks of ``block_size`` positions; the last position of every
    complete block is its landmark (the paper inserts a landmark token after every
    ``mem_freq = block_size - 1`` regular tokens, see :func:`attnkit_landmark.tokens.insert_landmarks`).
    A trailing partial block has no landmark.

    Paper settings: ``mem_freq=50`` (``block_size=51``) for the GPT models on PG19 / arXiv,
    ``mem_freq=63`` (``block_size=64``, the Triton kernel's block) for LLaMA-7B.

    :param block_size: positions per block including its landmark (``>= 2``).
    """

    # "min" tells the contract suite's bad-input check which values must be refused.
    block_size: int = field(default=64, metadata={"min": 2})

    def __post_init__(self) -> None:
        _check_int("block_size", self.block_size, 2)


@dataclass(frozen=True)
class RetrievalParams:
    """Parameters of :data:`attnkit_landmark.RETRIEVAL` (inference-time block retrieval).

    Each query (per query head: the paper's ``per_token_and_head``) ranks the complete blocks
    it may gate (causal: the blocks before its own) by their landmark logit, keeps the
    ``top_k`` best, and runs the grouped softmax over those blocks and its own block.
    ``top_k`` at least the number of blocks reproduces ``landmark`` exactly.

    Paper settings: ``cache_topk`` in ``{2, 3, 4}`` (PG19 / arXiv), ``5`` (LLaMA demo).

    :param block_size: positions per block including its landmark (``>= 2``).
    :param top_k: blocks retrieved per query and head (``>= 1``).
    """

    block_size: int = field(default=64, metadata={"min": 2})
    top_k: int = field(default=4, metadata={"min": 1})

    def __post_init__(self) -> None:
        _check_int("block_size", self.block_size, 2)
        _check_int("top_k", self.top_k, 1)


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets valid at ``seq_len`` for the contract: several landmarks at its lengths,
    and a trailing partial block."""
    return [{"block_size": 3}, {"block_size": 4}]


def retrieval_contract_params(seq_len: int) -> list[dict[str, Any]]:
    """``landmark.retrieval`` sets for the contract: genuinely sparse (fewer blocks kept than
    exist) at its lengths."""
    return [{"block_size": 3, "top_k": 1}, {"block_size": 4, "top_k": 2}]
