"""A retrieval-head-aware KV-cache policy.

The paper finds that only the few retrieval heads copy from far back in the context, and
suggests keeping full KV only where they read. Here a query head ``h`` of a GQA model reads KV
head ``h // group_size``; every KV head serving at least one retrieval head of its layer keeps
its whole history (or ``budget`` tokens), every other KV head keeps the ``n_sink`` first tokens
and the ``window`` most recent ones. Kept keys keep their original positions (no re-rotation).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch

from attnkit.cache.params import resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, compact
from attnkit_retrieval_heads.params import RetrievalCacheParams
from attnkit_retrieval_heads.score import load_scores

__all__ = ["RetrievalHeadsPolicy", "build", "retrieval_kv_heads", "select_heads"]


def retrieval_kv_heads(heads: Iterable[tuple[int, int]], group_size: int) -> dict[int, set[int]]:
    """``{layer: {kv_head, ...}}`` served by the query ``heads`` ``(layer, head)``."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    out: dict[int, set[int]] = {}
    for layer, head in heads:
        out.setdefault(int(layer), set()).add(int(head) // group_size)
    return out


def select_heads(params: RetrievalCacheParams) -> list[tuple[int, int]]:
    """The retrieval query heads ``params`` name (explicit ``heads``, else from ``scores``)."""
    if params.heads or params.scores is None:
        return list(params.heads)
    scores = load_scores(params.scores)
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    if params.top_k is not None:
        return [head for head, _ in ranked[: params.top_k]]
    return [head for head, score in ranked if score > params.threshold]


class RetrievalHeadsPolicy(CachePolicy):
    """Full KV for the KV heads of retrieval heads, sinks + window for the rest.

    :param heads: retrieval query heads ``(layer, head)``.
    :param group_size: query heads per KV head.
    :param window: recent tokens a non-retrieval KV head keeps.
    :param n_sink: leading tokens every KV head keeps.
    :param budget: the most tokens any KV head keeps (``None``: retrieval KV heads keep all;
        int, or ratio of the prompt length); both kinds of head keep the sinks first.
    """

    name: ClassVar[str] = "retrieval_heads_cache"

    def __init__(
        self,
        heads: Iterable[tuple[int, int]] = (),
        group_size: int = 1,
        window: int = 64,
        n_sink: int = 4,
        budget: int | float | None = None,
    ) -> None:
        heads = [(int(layer), int(h)) for layer, h in heads]
        RetrievalCacheParams(heads=tuple(heads), group_size=group_size, window=window, n_sink=n_sink, budget=budget)
        super().__init__(budget)
        self.heads = heads
        self.group_size, self.window, self.n_sink = group_size, window, n_sink
        self.kv_heads = retrieval_kv_heads(heads, group_size)

    def __repr__(self) -> str:
        return (
            f"RetrievalHeadsPolicy({len(self.heads)} heads, group_size={self.group_size}, window={self.window}, "
            f"n_sink={self.n_sink}, budget={self.budget!r})"
        )

    def resolve_budget(self, prompt_length: int) -> int | None:
        if self.budget is None:
            return None
        budget = resolve_budget(self.budget, prompt_length)
        if budget <= self.n_sink:
            raise ValueError(
                f"budget {self.budget!r} resolves to {budget} tokens for a {prompt_length}-token prompt, which must exceed n_sink ({self.n_sink})"
            )
        return budget

    def _layer_of(self, state: LayerState) -> int:
        for idx, s in self.layers.items():
            if s is state:
                return idx
        raise KeyError("layer state not held by this policy")

    def head_budgets(self, state: LayerState) -> torch.Tensor:
        layer = self._layer_of(state)
        hkv = state.keys.shape[1]
        serving = self.kv_heads.get(layer, set())
        bad = sorted(h for h in serving if h >= hkv)
        if bad:
            raise ValueError(
                f"retrieval heads of layer {layer} map to KV heads {bad} but the layer has {hkv} KV heads "
                f"(group_size={self.group_size}); group_size must be num_attention_heads // num_key_value_heads"
            )
        cap = state.budget
        other = self.n_sink + self.window if cap is None else min(cap, self.n_sink + self.window)
        full = state.seen if cap is None else cap
        budgets = torch.full((hkv,), other, dtype=torch.int64, device=state.keys.device)
        for h in serving:
            budgets[h] = full
        return budgets

    def forced(self, state: LayerState) -> torch.Tensor | None:
        return (state.positions >= 0) & (state.positions < self.n_sink)

    def evict(self, layer_idx: int) -> None:
        # The base class skips eviction without a budget; here budget=None still evicts the
        # non-retrieval heads down to sinks + window.
        state = self.layers[layer_idx]
        state.pending = False
        keep = self.select(state)
        if keep is not None:
            compact(state, keep)

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        """Positions every KV head keeps: the sinks and the recent window (within the budget)."""
        per_head = self.n_sink + self.window if budget is None else min(budget, self.n_sink + self.window)
        sinks = set(range(min(self.n_sink, length)))
        return sorted(sinks | set(range(max(0, length - (per_head - len(sinks))), length)))


def build(params: RetrievalCacheParams | None = None) -> RetrievalHeadsPolicy:
    """Factory of the ``retrieval_heads_cache`` spec."""
    params = params or RetrievalCacheParams()
    if not isinstance(params, RetrievalCacheParams):
        raise TypeError(f"params must be a RetrievalCacheParams, got {type(params).__name__}")
    return RetrievalHeadsPolicy(
        select_heads(params),
        group_size=params.group_size,
        window=params.window,
        n_sink=params.n_sink,
        budget=params.budget,
    )
