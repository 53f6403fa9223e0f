"""Parameters of the ``longheads`` spec and the sets the contract suite runs with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

REPRESENTATIONS = ("attention", "mean")


@dataclass(frozen=True)
class LongheadsParams:
    """Parameters of :data:`attnkit_longheads.LONGHEADS` (training-free, inference).

    Keys are split into chunks of ``chunk_size``; each query and head keeps the first chunk,
    the previous and its own chunk (the local chunks), and the best other chunks by
    query-chunk correlation until it holds ``chunks`` chunks, then attends to their keys
    (causal: those at or before it).

    Paper defaults (README of LuLuLuyi/LongHeads): ``window_size = 256`` and
    ``atten_length = 4096``, i.e. ``chunk_size=256, chunks=16``.

    :param chunk_size: chunk length ``w`` (``>= 1``).
    :param chunks: chunks attended per query and head, the forced ones included
        (``atten_chunk_num``; ``>= 3``: first, previous and current chunk).
    :param representation: ``"attention"`` (the paper: bidirectional attention inside the
        chunk, ``c_v`` the mean output, ``c_k = softmax(c_v K^T / sqrt(D)) K``; needs the
        chunk's queries, so ``Tq == Tk``) or ``"mean"`` (mean of the chunk's keys).
    :param rope_theta: ``None``: q and k are used as given. A float: q and k arrive rotated
        (HF ``rotate_half`` RoPE with this base) at positions ``0..Tk-1`` (query ``i`` at
        ``i + Tk - Tq``); selection then scores the un-rotated query against chunk keys
        with chunk-local RoPE, and attention uses the compact positions of the chosen keys
        (see :mod:`attnkit_longheads.positions`), as the paper re-rotates.
    """

    # "min" tells the contract suite's bad-input check which values must be refused.
    chunk_size: int = field(default=256, metadata={"min": 1})
    chunks: int = field(default=16, metadata={"min": 3})
    representation: str = "attention"
    rope_theta: float | None = None

    def __post_init__(self) -> None:
        for name, low in (("chunk_size", 1), ("chunks", 3)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if not isinstance(self.representation, str):
            raise TypeError(f"representation must be a str, got {type(self.representation).__name__}")
        if self.representation not in REPRESENTATIONS:
            raise ValueError(f"representation must be one of {REPRESENTATIONS}, got {self.representation!r}")
        theta = self.rope_theta
        if theta is not None:
            if isinstance(theta, bool) or not isinstance(theta, (int, float)):
                raise TypeError(f"rope_theta must be a float or None, got {type(theta).__name__} ({theta!r})")
            if not math.isfinite(theta) or theta <= 1:
                raise ValueError(f"rope_theta must be a finite number > 1, got {theta}")

    @property
    def attended_length(self) -> int:
        """``chunks * chunk_size``: the most keys one query attends (the paper's ``atten_length``)."""
        return self.chunks * self.chunk_size


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets valid at sequence length ``seq_len`` for the contract suite: sparse at
    the contract's lengths (about 9 to 40 tokens)."""
    return [
        {"chunk_size": 2, "chunks": 3, "representation": "attention"},
        {"chunk_size": 3, "chunks": 4, "representation": "mean"},
    ]


def validate(params: LongheadsParams, q: Any, k: Any, v: Any, is_causal: Any) -> None:
    """Shape rules of ``representation="attention"`` before any backend runs, so that
    :func:`attnkit.hf.adapter.decode_reason` sees them: its chunk keys come from the chunks'
    own queries, so ``q (B, Hq, Tq, D)`` must be as long as ``k (B, Hkv, Tk, D)`` (no decode
    step), and it scores mean values against keys, so ``v``'s last dimension must equal ``D``.

    :raises ValueError: naming ``representation`` and the sizes seen.
    """
    if params.representation != "attention" or q.dim() != 4:
        return
    tq, tk = q.shape[2], k.shape[2]
    if isinstance(tq, int) and isinstance(tk, int) and tq != tk:
        raise ValueError(
            "representation='attention' builds chunk keys from the chunks' own queries, so q and k need "
            f"the same length: got q_len {tq} and kv_len {tk} (use representation='mean')"
        )
    if q.shape[-1] != v.shape[-1]:
        raise ValueError(
            f"representation='attention' scores the mean value against keys: value dim {v.shape[-1]} "
            f"must equal head dim {q.shape[-1]}"
        )
