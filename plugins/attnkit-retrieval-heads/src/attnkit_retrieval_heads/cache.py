"""A retrieval-head-aware KV-cache policy.

The paper finds that only the few retrieval heads copy from far back in the context, and
suggests keeping full KV only where they read. Here a query head ``h`` of a GQA model reads KV
head ``h // group_size``; every KV head serving at least one retrieval head of its layer keeps
its whole history, every other KV head keeps the ``n_sink`` first tokens and a recent window.
Kept keys keep their original positions (no re-rotation); sinks and windows are counted from
each row's first real token.

With a ``budget`` the cache as a whole holds ``budget`` tokens per layer and KV head, like
every other policy (issue 9: it used to hold ~35% more). A layer's storage is as wide as its
widest KV head (all heads of a layer share one ``(B, Hkv, T, D)`` tensor), so the split is
sized on layers (:func:`split_budget`): the layers holding a retrieval head keep everything if
the others can still keep ``n_sink + window``, and the others then share what is left; when
they cannot, the others keep ``n_sink + window`` and the retrieval KV heads get the rest (their
oldest non-sink tokens go first). This needs the number of layers, which
:class:`~attnkit.cache.AttnkitCache` gives the policy (``bind_model``); a policy used without
it caps every KV head at ``budget`` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch

from attnkit.cache.params import resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, oldest_after_sinks, sink_slots
from attnkit_retrieval_heads.params import RetrievalCacheParams
from attnkit_retrieval_heads.score import load_scores

__all__ = ["RetrievalHeadsPolicy", "build", "retrieval_kv_heads", "select_heads", "split_budget"]


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


def split_budget(
    budget: int, prompt: int, n_layers: int, n_retrieval_layers: int, n_sink: int, window: int
) -> tuple[int, int]:
    """``(retrieval, other)``: tokens a retrieval KV head and any other KV head keep so that the
    layers, each as wide as its widest KV head, hold at most ``budget * n_layers`` slots.

    :param budget: resolved budget per layer and KV head (the average the cache may hold).
    :param prompt: real prompt tokens (a retrieval head never needs more than these).
    :param n_layers: the model's layers.
    :param n_retrieval_layers: layers with at least one retrieval KV head.
    """
    floor = min(budget, n_sink + window)
    r, n = n_retrieval_layers, n_layers
    if r == 0:
        return budget, budget
    if r >= n:
        return budget, floor
    total = budget * n
    retrieval = min(max(prompt, budget), (total - (n - r) * floor) // r)
    other = (total - r * retrieval) // (n - r)
    return retrieval, other


class RetrievalHeadsPolicy(CachePolicy):
    """Full KV for the KV heads of retrieval heads, sinks + window for the rest.

    :param heads: retrieval query heads ``(layer, head)``.
    :param group_size: query heads per KV head (checked against the model when it is known).
    :param window: recent tokens a non-retrieval KV head keeps (with a budget: at least this,
        when the budget allows).
    :param n_sink: leading tokens every KV head keeps.
    :param budget: ``None``: retrieval KV heads keep everything, the others ``n_sink + window``.
        An int, or a ratio of the prompt length: the tokens per layer and KV head the whole
        cache holds, split between retrieval and other heads by :func:`split_budget`.
    """

    name: ClassVar[str] = "retrieval_heads_cache"
    fixed_budgets: ClassVar[bool | None] = True  # per-head budgets are set once, in on_resolve

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

    def _check_model(self, layer: int, hkv: int) -> set[int]:
        serving = self.kv_heads.get(layer, set())
        bad = sorted(h for h in serving if h >= hkv)
        if bad:
            raise ValueError(
                f"retrieval heads of layer {layer} map to KV heads {bad} but the layer has {hkv} KV heads "
                f"(group_size={self.group_size}); group_size must be num_attention_heads // num_key_value_heads"
            )
        hq, n_kv = self.model.get("num_attention_heads"), self.model.get("num_key_value_heads")
        if self.heads and hq and n_kv and hq // n_kv != self.group_size:
            raise ValueError(
                f"group_size={self.group_size} but the model has {hq} query heads over {n_kv} KV heads "
                f"(group_size must be {hq // n_kv}): query head h reads KV head h // group_size"
            )
        n_layers = self.model.get("num_layers")
        if n_layers is not None:
            beyond = sorted(layer for layer in self.kv_heads if layer >= n_layers)
            if beyond:
                raise ValueError(f"retrieval heads name layers {beyond} but the model has {n_layers} layers")
        return serving

    def on_resolve(self, state: LayerState) -> None:
        layer = self._layer_of(state)
        hkv = state.pbuf.shape[1]
        serving = self._check_model(layer, hkv)
        is_retrieval = torch.zeros(hkv, dtype=torch.bool)
        is_retrieval[sorted(serving)] = True
        rows = []
        assert state.prompt_tokens is not None
        for i, prompt in enumerate(state.prompt_tokens.tolist()):
            if state.row_budget is None:
                retrieval, other = torch.iinfo(torch.int64).max, self.n_sink + self.window
            elif "num_layers" not in self.model:
                budget = int(state.row_budget[i])
                retrieval, other = budget, min(budget, self.n_sink + self.window)
            else:
                retrieval, other = split_budget(
                    int(state.row_budget[i]),
                    int(prompt),
                    self.model["num_layers"],
                    sum(1 for v in self.kv_heads.values() if v),
                    self.n_sink,
                    self.window,
                )
            rows.append(torch.where(is_retrieval, retrieval, other))
        state.meta["rh_budgets"] = torch.stack(rows).to(state.pbuf.device)

    def head_budgets(self, state: LayerState) -> torch.Tensor | None:
        return state.meta["rh_budgets"]

    def forced(self, state: LayerState) -> torch.Tensor | None:
        return sink_slots(state, self.n_sink)

    def steady_victims(self, state: LayerState) -> torch.Tensor | None:
        return oldest_after_sinks(state, self.n_sink)

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
