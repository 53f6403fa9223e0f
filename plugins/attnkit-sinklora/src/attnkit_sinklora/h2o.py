"""H2O (Heavy-Hitter Oracle, Zhang et al. 2023) as an attnkit KV-cache policy.

Score of a key = the attention probability it has received from every query so far (prompt
rows during prefill, each decoded token after), per sequence and per KV head: a step adds
``agg_g(Σ_q A[b, g, q, k])`` over the query heads ``g`` of the KV head's group (``mean`` or
``max``). Nothing is summed over the batch (the official ``H2OKVCache_LayerWise`` sums over it
and so is bsz = 1 only). After each step the cache keeps the ``recent`` newest tokens plus the
``heavy`` older ones with the largest scores (ties to the earlier token); evicted tokens'
scores are dropped with them.

Eviction is in place: a decode step adds one token and drops the lowest-scored older token
(one ``argmin`` over the slots, no sort), whose slot the next token takes. The probabilities
are recomputed from the queries (:meth:`CachePolicy.observe`) in float32 (float64 for float64
inputs), chunked over queries, so no eager attention is needed; when the model runs dense
attention, the policy returns the attention output it gets from those probabilities
(:meth:`CachePolicy.on_attend`) and the attention kernel is skipped, so scoring costs about
one matmul more than plain attention, not a second attention. Keys keep their original RoPE
positions (the real-drop script's position shift is not reproduced). Scores are cumulative,
not normalised by how many queries saw a key, as in the paper, so earlier tokens are favoured.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnkit.cache.params import resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, step_probabilities
from attnkit_sinklora.h2o_params import H2OParams, split_budget

__all__ = ["SCORE", "H2OPolicy", "build"]

#: Key of the accumulated scores in :attr:`LayerState.extra`, ``(B, Hkv, C)`` float32
#: (float64 for float64 keys); :meth:`LayerState.extra_view` gives the slots in use.
SCORE = "h2o_score"
_RECENT = "h2o_recent"


class H2OPolicy(CachePolicy):
    """The H2O policy; see the module docstring.

    :param budget: int >= 1 or ratio in (0, 1] of the prompt length (of each row's real tokens).
    :param heavy_ratio: share of the budget for heavy hitters (``floor``), the rest recent.
    :param aggregation: ``"mean"`` or ``"max"`` over a KV head's query group.
    :param chunk: queries per chunk when recomputing attention (bounds memory in prefill).
    """

    name: ClassVar[str] = "h2o"
    needs_queries: ClassVar[bool] = True

    def __init__(
        self, budget: int | float = 0.2, heavy_ratio: float = 0.5, aggregation: str = "mean", chunk: int = 128
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

    def on_resolve(self, state: LayerState) -> None:
        assert state.row_budget is not None
        recent = [self.split(int(b))[1] for b in state.row_budget.tolist()]
        state.meta[_RECENT] = torch.tensor(recent, dtype=torch.int64, device=state.pbuf.device).view(-1, 1, 1)

    def on_append(self, state: LayerState, n_new: int) -> None:
        buf = state.extra.get(SCORE)
        if buf is None:
            b, h, c = state.pbuf.shape
            dtype = torch.float64 if state.kbuf.dtype == torch.float64 else torch.float32
            state.extra[SCORE] = torch.zeros(b, h, c, dtype=dtype, device=state.pbuf.device)
        else:
            buf.scatter_(2, state.new_slots(), 0.0)

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        self._scan(state, query, scaling, want_output=False)

    def on_attend(self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
        # the probabilities are computed anyway: the output costs one more matmul, and the
        # attention kernel is skipped (prefill would otherwise pay attention twice)
        return self._scan(state, query, scaling, want_output=True)

    def _scan(self, state: LayerState, query: torch.Tensor, scaling: float, want_output: bool) -> torch.Tensor | None:
        """Add this step's attention to the scores; the attention output if ``want_output``.

        Uses the storage layout: one new token may sit in any slot (it sees every stored key);
        several new tokens are the last slots, in order, so a chunk of queries needs the keys up
        to its last query only and a causal triangle on its own columns."""
        b, hq, tq, _ = query.shape
        hkv = state.kbuf.shape[1]
        score = state.extra_view(SCORE)
        colsum = torch.zeros(b, hkv, hq // hkv, state.hi, dtype=score.dtype, device=query.device)
        outs: list[torch.Tensor] = []
        for _, _, kend, probs, out in step_probabilities(
            state, query, scaling, dtype=score.dtype, chunk=self.chunk, want_output=want_output
        ):
            # (B, Hkv, G, Tk): attention each key got from this chunk's queries, per query head
            colsum[..., :kend] += probs.sum(dim=3)
            if out is not None:
                outs.append(out)
        # the group is aggregated after summing over the step's queries, so "max" is the
        # largest per-query-head total of this step
        score.add_(colsum.mean(dim=2) if self.aggregation == "mean" else colsum.amax(dim=2))
        if not want_output:
            return None
        merged = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
        return merged.reshape(b, hq, tq, -1).to(query.dtype)

    def scores(self, state: LayerState) -> torch.Tensor:
        return state.extra_view(SCORE)

    def forced(self, state: LayerState) -> torch.Tensor | None:
        # the `recent` newest tokens of each row
        newest = (state.seen - state.meta[_RECENT]).clamp(min=0)
        return state.positions >= newest

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
