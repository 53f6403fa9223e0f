"""Parameters of the ``thinking_sparks`` analysis.

Imported by the entry-point module, so it must not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["ThinkingSparksParams"]


def _int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _bad(*values: object) -> dict[str, list[object]]:
    return {"contract_invalid": list(values)}


@dataclass(frozen=True)
class ThinkingSparksParams:
    """Parameters of :data:`attnkit_thinking_sparks.THINKING_SPARKS`.

    Tiny GPT (``--model tiny-gpt``, the default):

    :param n_layers: blocks of the tiny GPT.
    :param d_model: its width (``n_heads`` heads of ``d_model // n_heads``).
    :param n_heads: query heads per block (as many KV heads).
    :param base_steps: pretraining steps (next byte of Python's documentation).
    :param sft_steps: post-training steps (written-out addition).
    :param n_checkpoints: post-training checkpoints scanned, evenly spaced, the last one at
        ``sft_steps``; the base model is scanned too.
    :param replay_every: every ``replay_every``-th post-training step is a documentation batch
        (replay keeps some of the base skill, as post-training recipes mix general data);
        0: pure SFT.
    :param digits: operand digits of the addition task.
    :param batch_size: training batch.
    :param lr: peak learning rate (both stages).
    :param top_k: circuit size (heads per checkpoint's circuit); 0: a quarter of the heads.
    :param n_random: random head sets drawn for each control.

    Both models:

    :param n_eval: addition problems the tiny GPT's importance is measured on.

    SmolLM2 (``--model smollm2``):

    :param smol_n_eval: few-shot questions the importance is measured on (each of the 270
        heads costs one forward over them; the controls use as many fresh questions).
    :param smol_shots: worked examples before each SmolLM2 question.

    ``--quick`` shrinks training, ``n_eval`` and the SmolLM2 scan (three layers).
    """

    n_layers: int = field(default=3, metadata=_bad(0, 9, "3"))
    d_model: int = field(default=64, metadata=_bad(0, 8, 63))
    n_heads: int = field(default=4, metadata=_bad(0, 3.0))
    base_steps: int = field(default=300, metadata=_bad(0, -1))
    sft_steps: int = field(default=500, metadata=_bad(0, -1))
    n_checkpoints: int = field(default=3, metadata=_bad(0, -1))
    replay_every: int = field(default=4, metadata=_bad(-1, 1))
    digits: int = field(default=2, metadata=_bad(0, 5))
    batch_size: int = field(default=32, metadata=_bad(0, -1))
    lr: float = field(default=3e-3, metadata=_bad(0.0, -1.0, float("nan"), 2.0))
    top_k: int = field(default=0, metadata=_bad(-1))
    n_random: int = field(default=8, metadata=_bad(0))
    n_eval: int = field(default=256, metadata=_bad(0, 1))
    smol_n_eval: int = field(default=8, metadata=_bad(0, 1))
    smol_shots: int = field(default=2, metadata=_bad(-1, 9))

    def __post_init__(self) -> None:
        _int("n_layers", self.n_layers, 1, 8)
        _int("n_heads", self.n_heads, 1, 16)
        _int("d_model", self.d_model, 16, 512)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model must be a multiple of n_heads with an even head dim, got d_model={self.d_model}, "
                f"n_heads={self.n_heads}"
            )
        _int("base_steps", self.base_steps, 1)
        _int("sft_steps", self.sft_steps, 1)
        _int("n_checkpoints", self.n_checkpoints, 1)
        if self.n_checkpoints > self.sft_steps:
            raise ValueError(f"n_checkpoints ({self.n_checkpoints}) must be <= sft_steps ({self.sft_steps})")
        _int("replay_every", self.replay_every, 0)
        if self.replay_every == 1:
            raise ValueError("replay_every must be 0 (no replay) or >= 2 (1 would leave no task step), got 1")
        _int("digits", self.digits, 1, 4)
        _int("batch_size", self.batch_size, 1)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)):
            raise TypeError(f"lr must be a float, got {type(self.lr).__name__} {self.lr!r}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise ValueError(f"lr must be in (0, 1], got {self.lr}")
        _int("top_k", self.top_k, 0)
        _int("n_random", self.n_random, 1)
        _int("n_eval", self.n_eval, 2)
        _int("smol_n_eval", self.smol_n_eval, 2)
        _int("smol_shots", self.smol_shots, 0, 8)

    def circuit_size(self, n_heads_total: int) -> int:
        """``top_k``, or a quarter of ``n_heads_total`` (at least 1) when it is 0."""
        return self.top_k or max(1, n_heads_total // 4)
