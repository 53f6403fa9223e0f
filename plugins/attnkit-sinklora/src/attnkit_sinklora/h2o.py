"""H2O (Heavy-Hitter Oracle, Zhang et al. 2023) as an attnkit KV-cache policy.

Score of a key = the attention probability it has received from every query so far (prompt
rows during prefill, each decoded token after), per sequence and per KV head: a step adds
``agg_g(Σ_q A[b, g, q, k])`` over the query heads ``g`` of the KV head's group (``mean`` or
``max``). Nothing is summed over the batch (the official ``H2OKVCache_LayerWise`` sums over it
and so is bsz = 1 only). After each step the cache keeps the ``recent`` newest tokens plus the
``heavy`` older ones with the largest scores (ties to the earlier token), in position order;
evicted tokens' scores are dropped with them.

The probabilities are recomputed from the queries (:meth:`CachePolicy.observe`) in float32
(float64 for float64 inputs), chunked over queries, so no eager attention is needed. Keys keep
their original RoPE positions (the real-drop script's position shift is not reproduced).
Scores are cumulative, not normalised by how many queries saw a key, as in the paper, so
earlier tokens are favoured.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnkit.cache.params import resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, query_probabilities
from attnkit_sinklora.h2o_params import H2OParams, split_budget

__all__ = ["SCORE", "H2OPolicy", "build"]

#: Key of the accumulated scores in :attr:`LayerState.extra`, ``(B, Hkv, T)`` float64.
SCORE = "h2o_score"


class H2OPolicy(CachePolicy):
    """The H2O policy; see the module docstring.

    :param budget: int >= 1 or ratio in (0, 1] of the prompt length.
    :param heavy_ratio: share of the budget for heavy hitters (``floor``), the rest recent.
    :param aggregation: ``"mean"`` or ``"max"`` over a KV head's query group.
    :param chunk: queries per chunk when recomputing attention (bounds memory in prefill).
    """

    name: ClassVar[str] = "h2o"
    needs_queries: ClassVar[bool] = True

    def __init__(
        self, budget: int | float = 0.2, heavy_ratio: float = 0.5, aggregation: str = "mean", chunk: int = 256
    ) -> None:
        H2OParams(budget=budget, heavy_ratio=heavy_ratio, aggregation=aggregation)
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
        super().__init__(budget, aggregation=aggregation)
        self.heavy_ratio = heavy_ratio
        self.chunk = chunk

    def __repr__(self) -> str:
        return f"H2OPolicy(budget={self.budget!r}, heavy_ratio={self.heavy_ratio!r}, aggregation={self.aggregation!r})"

    def split(self, budget: int) -> tuple[int, int]:
        """``(heavy, recent)`` for a resolved budget."""
        return split_budget(budget, self.heavy_ratio)

    def resolve_budget(self, prompt_length: int) -> int | None:
        return resolve_budget(self.budget, prompt_length)  # type: ignore[arg-type]

    def on_append(self, state: LayerState, n_new: int) -> None:
        b, h = state.keys.shape[:2]
        zeros = torch.zeros(b, h, n_new, dtype=torch.float64, device=state.keys.device)
        old = state.extra.get(SCORE)
        state.extra[SCORE] = zeros if old is None else torch.cat([old, zeros], dim=-1)

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        tq = query.shape[2]
        qpos = torch.arange(state.seen - tq, state.seen, device=query.device)
        work = torch.float64 if query.dtype == torch.float64 else torch.float32
        group_sum: torch.Tensor | None = None
        for _start, probs in query_probabilities(
            query, state.keys, state.positions, qpos, scaling, mask=mask, chunk=self.chunk, dtype=work
        ):
            # (B, Hkv, G, Tk): attention each key got from this chunk's queries, per query head
            part = probs.sum(dim=3)
            group_sum = part if group_sum is None else group_sum + part
        assert group_sum is not None
        # the group is aggregated after summing over the step's queries, so "max" is the
        # largest per-query-head total of this step
        step = group_sum.mean(dim=2) if self.aggregation == "mean" else group_sum.amax(dim=2)
        state.extra[SCORE] = state.extra[SCORE] + step.to(torch.float64)

    def scores(self, state: LayerState) -> torch.Tensor:
        return state.extra[SCORE]

    def forced(self, state: LayerState) -> torch.Tensor | None:
        assert state.budget is not None
        _, recent = self.split(state.budget)
        # the `recent` newest real tokens: positions above the row's (recent+1)-th largest
        newest = state.seen - recent
        return state.positions >= max(newest, 0)

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        if budget is None:
            return list(range(length))
        _, recent = self.split(budget)
        return list(range(max(0, length - recent), length))


def build(params: Any = None) -> H2OPolicy:
    """The spec factory: an :class:`H2OPolicy` from :class:`H2OParams`."""
    if params is None:
        params = H2OParams()
    if not isinstance(params, H2OParams):
        raise TypeError(f"params must be an H2OParams, got {type(params).__name__}")
    return H2OPolicy(params.budget, heavy_ratio=params.heavy_ratio, aggregation=params.aggregation)
