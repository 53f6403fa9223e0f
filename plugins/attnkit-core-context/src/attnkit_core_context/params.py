"""Parameters of the ``core-context`` spec, its input check and the sets the contract suite runs with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from attnkit.paramcheck import check_int as _check_int

#: How the keys of one group are merged into its core token.
POOLS = ("cca", "mean")


@dataclass(frozen=True)
class CoreContextParams:
    """Parameters of :data:`attnkit_core_context.CORE_CONTEXT` (the paper's ``g`` and ``s``).

    :param group_size: ``g``, tokens per group; each complete group is pooled into one core
        token (official code: ``p_size``, default 16). ``1`` gives causal full attention.
    :param window: ``s``, the locality-preserved window: a query always sees at least its
        last ``min(s, t + 1)`` tokens raw, and at most ``s + g - 1`` (the window is aligned to
        group boundaries; official code: ``w_size``, default 1024).
    :param pool: ``"cca"`` (the paper: weights ``softmax(q_last . k_j / sqrt(D))`` from the
        query of the group's last token) or ``"mean"`` (uniform weights, the official code's
        ``pool_func='mean'`` ablation).
    """

    # "min" / "contract_invalid" tell the contract suite's bad-input check what must be refused.
    group_size: int = field(default=16, metadata={"min": 1})
    window: int = field(default=1024, metadata={"min": 0})
    pool: str = field(default="cca", metadata={"contract_invalid": ["max", ""]})

    def __post_init__(self) -> None:
        _check_int("group_size", self.group_size, 1)
        _check_int("window", self.window, 0)
        if not isinstance(self.pool, str):
            raise TypeError(f"pool must be a str, one of {', '.join(POOLS)}; got {type(self.pool).__name__}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")

    def core_visible(self, t: int) -> int:
        """Core tokens query ``t`` (0-based) sees: groups ``0 .. n-1`` with
        ``n = max(floor((t + 1 - s) / g), 0)``."""
        r = t + 1
        return (r - self.window) // self.group_size if r > self.window else 0

    def keys_seen(self, t: int) -> int:
        """Keys query ``t`` attends to: its core tokens plus raw tokens ``n * g .. t``."""
        n = self.core_visible(t)
        return n + (t + 1 - n * self.group_size)


def validate(params: CoreContextParams, q: Any, k: Any, v: Any, is_causal: Any) -> None:
    """Core tokens are pooled with the queries of the sequence itself: self-attention only."""
    tq, tk = q.shape[2], k.shape[2]
    if tq != tk:
        raise ValueError(
            f"core-context is self-attention: q has {tq} tokens and k has {tk}; the group queries "
            "that weight each core token come from the same sequence (decoding with a cache is not yet supported)"
        )


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets valid at sequence length ``seq_len`` for the contract suite: core
    tokens visible from the third token on, and no window at all."""
    return [{"group_size": 3, "window": 2}, {"group_size": 2, "window": 0, "pool": "mean"}]
