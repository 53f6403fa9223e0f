"""LazyEviction (Zhang et al. 2025, arXiv:2506.15969) as an attnkit KV-cache policy.

State, per sequence, layer and KV head, one entry per cached token (policy-owned
``LayerState.extra`` buffers, reused in place with the slots):

* ``last``: the step the token last *recurred* at, i.e. got attention ``>= alpha``;
* ``mri``: its maximum recurrence interval, the largest gap between two recurrences.

The clock is the token position: the query at position ``t`` is step ``t``. A token stored at
position ``p`` starts with ``last = p - 1`` and ``mri = 0`` (the official
``TempCache.record_recurrence`` pads a new token with ``current_decoding_step - 1`` and 0), so
recurring at its own step gives ``mri = 1``. Each query ``t`` with aggregated attention
``a >= alpha`` on a token sets ``mri = max(mri, t - last)`` then ``last = t``; the attention of a
KV head is the ``mean`` or ``max`` (``aggregation``) of its query heads' probabilities. Steps
are counted in positions rather than decode steps: only differences enter the score, so the
two clocks agree.

Eviction is lagged: it runs at the decode steps that are multiples of ``W`` (``window``; steps
counted from 1 after the prefill, as the official ``observation_counter``), for every row that
then holds more than its budget, after the step's attention has used every stored key. It keeps
the ``min(W, budget)`` newest tokens and the best of the others by the MRI-centric score at the
current step ``s``::

    bonus = 0 if mri == 0 else 2 / (1 + exp(mri - 1))
    score = 2 / (1 + exp(1 + (s - last) / (mri + 1e-5))) + bonus

(ties to the earlier token), so the row holds ``budget`` tokens again. In between it grows by
one slot per decoded token: up to ``budget + W - 1`` between forwards, ``budget + W`` in the
attention of an eviction step. A forward of several tokens advances the step count by all of
them (an eviction is due when the steps it covers contain a multiple of ``W``).

The storage holds ``budget + W`` slots, not the base class's ``budget + 1``: after an eviction
the ``LayerState.limit`` the base class sizes its buffers to is set to ``budget + W - 1``, so
it grows in blocks up to ``budget + W`` slots during the first window; from then on an eviction
only marks the evicted slots empty and the next ``W`` tokens are written into them (no copy).
Evictions that drop more than ``W`` tokens of a row (the prompt) rebuild the buffers
(:func:`attnkit.cache.policy.compact`).

Prompt (``prefill``): ``"compress"`` (default) observes the prompt's queries like decode steps
(the query at position ``t`` is step ``t``) and evicts a prompt longer than the budget down to
it at the prefill, step 0 counting as a multiple of ``W``; ``"keep"`` is the paper's: the
prompt is stored whole and its queries are not observed, every prompt token starts with
``last`` at the prompt's end (the official code's 0) and ``mri = 0``, and the first eviction is
at decode step ``W``.

Departures from the official code: the cache is per KV head with an explicit GQA
``aggregation`` (the official code stores keys after ``repeat_kv``, one copy per query head);
state is per policy instance, layer and sequence (the official ``TempCache`` is global and
bsz-1); attention probabilities are recomputed from the queries (no eager attention), and when
the model runs dense attention the policy returns the attention output it computed anyway
(:meth:`CachePolicy.on_attend`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attnkit.cache.params import resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, compact, step_probabilities
from attnkit_lazyeviction.params import LazyEvictionParams

__all__ = ["LAST", "MRI", "LazyEvictionPolicy", "build", "mri_score", "update_recurrence"]

#: ``LayerState.extra`` keys: ``(B, Hkv, C)`` int64, the last recurrence (a position) and the MRI.
LAST = "lazy_last"
MRI = "lazy_mri"
#: ``LayerState.meta`` keys: decode steps since the prefill, the count before the last forward,
#: and the ``(B, 1, 1)`` newest tokens always kept (``min(W, row budget)``).
_STEP = "lazy_step"
_PREV = "lazy_prev"
_RECENT = "lazy_recent"
_NEVER = torch.iinfo(torch.int64).min


def mri_score(last: torch.Tensor, mri: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """The MRI-centric eviction score (higher is kept), in float64.

    :param last: step of each token's last recurrence (any integer or float tensor).
    :param mri: its maximum recurrence interval, same shape; 0 for a token that never recurred.
    :param step: the current step (the official ``obs_count``), broadcastable.
    :returns: ``2 / (1 + exp(1 + (step - last) / (mri + 1e-5))) + bonus`` with ``bonus = 0``
        where ``mri == 0`` and ``2 / (1 + exp(mri - 1))`` elsewhere.
    """
    m = mri.to(torch.float64)
    since = torch.as_tensor(step, dtype=torch.float64, device=m.device) - last.to(torch.float64)
    bonus = torch.where(m == 0, torch.zeros_like(m), 2.0 / (1.0 + torch.exp(m - 1.0)))
    return 2.0 / (1.0 + torch.exp(1.0 + since / (m + 1e-5))) + bonus


def update_recurrence(
    last: torch.Tensor, mri: torch.Tensor, important: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Recurrence-interval tracking over several consecutive steps at once.

    Equivalent to, for each step ``t`` in order: ``mri = max(mri, t - last)`` and ``last = t``
    where ``important[t]``.

    :param last: ``(..., K)`` int64 last recurrence of each of ``K`` tokens.
    :param mri: ``(..., K)`` int64 maximum recurrence interval.
    :param important: ``(..., n, K)`` bool, whether token ``k`` recurs at the ``i``-th step.
    :param steps: ``(n,)`` int64 the steps, strictly increasing, each greater than every ``last``
        it applies to.
    :returns: the new ``(last, mri)``.
    """
    n = important.shape[-2]
    if steps.shape != (n,):
        raise ValueError(f"steps must be ({n},) to match important {tuple(important.shape)}, got {tuple(steps.shape)}")
    t = steps.to(torch.int64).view(n, 1)
    if n == 1:
        imp = important[..., 0, :]
        gap = torch.where(imp, t[0] - last, torch.zeros_like(last))
        return torch.where(imp, t[0].expand_as(last), last), torch.maximum(mri, gap)
    at = torch.where(important, t, torch.full_like(t, _NEVER))  # (..., n, K)
    run = at.cummax(dim=-2).values  # last recurrence within the block, up to and including step i
    before = torch.cat([torch.full_like(run[..., :1, :], _NEVER), run[..., :-1, :]], dim=-2)
    prev = torch.maximum(before, last.unsqueeze(-2))  # the recurrence before step i
    gap = torch.where(important, t - prev, torch.zeros_like(prev)).amax(dim=-2)
    return torch.maximum(last, run[..., -1, :]), torch.maximum(mri, gap)


class LazyEvictionPolicy(CachePolicy):
    """The LazyEviction policy; see the module docstring.

    :param budget: tokens per sequence, layer and KV head right after an eviction: int >= 1,
        or a ratio in (0, 1] of each row's real prompt tokens.
    :param window: ``W``: evict every ``W`` decode steps, always keeping the ``W`` newest tokens.
    :param alpha: attention threshold of a recurrence.
    :param aggregation: ``"mean"`` or ``"max"`` over the query heads of a KV head.
    :param prefill: ``"compress"`` or ``"keep"`` (the paper's), see the module docstring.
    :param chunk: queries per chunk when recomputing the prompt's attention.
    """

    name: ClassVar[str] = "lazyeviction"
    needs_queries: ClassVar[bool] = True

    def __init__(
        self,
        budget: int | float = 1492,
        window: int = 101,
        alpha: float = 1e-4,
        aggregation: str = "mean",
        prefill: str = "compress",
        chunk: int = 128,
    ) -> None:
        LazyEvictionParams(
            budget=budget, window=window, alpha=alpha, aggregation=aggregation, prefill=prefill, chunk=chunk
        )
        super().__init__(budget, aggregation=aggregation)
        self.window = window
        self.alpha = float(alpha)
        self.prefill = prefill
        self.chunk = chunk

    def __repr__(self) -> str:
        return (
            f"LazyEvictionPolicy(budget={self.budget!r}, window={self.window}, alpha={self.alpha!r}, "
            f"aggregation={self.aggregation!r}, prefill={self.prefill!r})"
        )

    # ------------------------------------------------------------------ budgets
    def resolve_budget(self, prompt_length: int) -> int | None:
        return resolve_budget(self.budget, prompt_length)  # type: ignore[arg-type]

    def recent(self, budget: int) -> int:
        """Newest tokens always kept for a resolved ``budget``: ``min(window, budget)``."""
        return min(self.window, budget)

    def on_resolve(self, state: LayerState) -> None:
        assert state.row_budget is not None
        state.meta[_RECENT] = state.row_budget.clamp(max=self.window).view(-1, 1, 1)

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        if budget is None:
            return list(range(length))
        return list(range(max(0, length - self.recent(budget)), length))

    def forced(self, state: LayerState) -> torch.Tensor | None:
        return state.positions >= state.seen - state.meta[_RECENT]

    # ------------------------------------------------------------------ tracking
    def on_append(self, state: LayerState, n_new: int) -> None:
        if LAST not in state.extra:  # the prefill: create the buffers
            pos = state.pbuf
            if self.prefill == "keep":
                last = torch.full_like(pos, state.seen - 1)
            else:
                last = pos - 1
            state.extra[LAST] = last.clone()
            state.extra[MRI] = torch.zeros_like(pos)
            state.meta[_STEP], state.meta[_PREV] = 0, -1
            return
        slots = state.new_slots()
        state.extra[LAST].scatter_(2, slots, state.pbuf.gather(2, slots) - 1)
        state.extra[MRI].scatter_(2, slots, 0)
        state.meta[_PREV] = state.meta[_STEP]
        state.meta[_STEP] += n_new

    def _prompt_only(self, state: LayerState) -> bool:
        """The prefill of ``prefill="keep"``: its queries are not observed."""
        return self.prefill == "keep" and state.meta[_STEP] == 0

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        if not self._prompt_only(state):
            self._scan(state, query, scaling, want_output=False)

    def on_attend(self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
        if self._prompt_only(state):
            return None  # the caller's kernel runs
        return self._scan(state, query, scaling, want_output=True)

    def _scan(self, state: LayerState, query: torch.Tensor, scaling: float, want_output: bool) -> torch.Tensor | None:
        """Track recurrences of this forward's queries; the attention output if ``want_output``.

        One new token may sit in any slot and sees every stored key; several new tokens are the
        last slots, in order (a chunk of queries sees the keys up to its last query, causally
        among the new ones)."""
        b, hq, tq, _ = query.shape
        work = torch.float64 if state.kbuf.dtype == torch.float64 else torch.float32
        last, mri = state.extra_view(LAST), state.extra_view(MRI)
        outs: list[torch.Tensor] = []
        for start, stop, kend, probs, out in step_probabilities(
            state, query, scaling, dtype=work, chunk=self.chunk, want_output=want_output
        ):
            imp = self._aggregate(probs.transpose(2, 3)) >= self.alpha  # (B, Hkv, n, kend)
            steps = torch.arange(state.seen - tq + start, state.seen - tq + stop, device=query.device)
            new_last, new_mri = update_recurrence(last[..., :kend], mri[..., :kend], imp, steps)
            last[..., :kend] = new_last
            mri[..., :kend] = new_mri
            if out is not None:
                outs.append(out)
        if not want_output:
            return None
        merged = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
        return merged.reshape(b, hq, tq, -1).to(query.dtype)

    def _aggregate(self, probs: torch.Tensor) -> torch.Tensor:
        """``(B, Hkv, ..., G, K)`` -> ``(B, Hkv, ..., K)``: the GQA group's probability."""
        return probs.mean(dim=-2) if self.aggregation == "mean" else probs.amax(dim=-2)

    def scores(self, state: LayerState) -> torch.Tensor:
        """``(B, Hkv, hi)`` float64 MRI-centric score at the current step (the newest token's)."""
        return mri_score(state.extra_view(LAST), state.extra_view(MRI), state.seen - 1)

    def budget_slack(self) -> int:
        """``window - 1``: right after an eviction a row holds ``budget`` tokens and it grows by
        one per decode step until the next eviction, ``window`` steps later (the paper's lag)."""
        return self.window - 1

    # ------------------------------------------------------------------ eviction
    def eviction_due(self, state: LayerState) -> bool:
        """Whether the steps of the last forward contain a multiple of ``window`` (the prefill,
        step 0, does under ``prefill="compress"``)."""
        if self._prompt_only(state):
            return False
        return state.meta[_STEP] // self.window > state.meta[_PREV] // self.window

    def evict(self, layer_idx: int) -> None:
        """Lagged eviction: at a due step, every row over its budget keeps its ``min(W, budget)``
        newest tokens and the best-scored others, ``budget`` in all."""
        state = self.layers[layer_idx]
        state.pending = False
        if state.frozen:
            return
        if self.compress == "prompt" and state.resolved_once:
            # the context was compressed by the previous eviction: keep everything from now on
            state.frozen, state.limit, state.free_slots, state.ring_full = True, None, None, False
            return
        budget = self.resolved_budget(layer_idx)
        if budget is None:
            return
        state.resolved_once = True
        valid = state.valid
        if self.eviction_due(state):
            keep = self.select(state)
            if keep is not None:
                drop = valid & ~keep
                most = int(drop.sum(-1).max())
                if most > self.window or not state.owned or state.capacity > budget + self.window:
                    compact(state, keep, spare=1)
                elif most > 0:
                    # mark the slots empty; the next tokens are written into them
                    if state.hi < state.capacity:  # spare slots after the used ones
                        drop = torch.nn.functional.pad(drop, (0, state.capacity - state.hi))
                    state.pbuf = state.pbuf.masked_fill(drop, -1)  # not in place: this step's view stays
                    state.has_holes = True
                    state.free_slots, state.ring_full = None, False
                valid = state.valid
        held = int(valid.sum(-1).max()) if valid.numel() else 0
        # the base class grows its buffers up to `limit + 1` slots: what the next due step's
        # attention holds (budget + W in the steady state)
        until_due = self.window - state.meta[_STEP] % self.window
        state.limit = max(budget, held + until_due - 1)

    # ------------------------------------------------------------------ inspection
    def recurrence(self, layer_idx: int) -> dict[str, torch.Tensor]:
        """Layer ``layer_idx``'s tracking state, slot by slot (``(B, Hkv, hi)`` each):
        ``positions`` (-1: empty slot), ``last`` (position of the last recurrence), ``mri``,
        and ``score`` (:func:`mri_score` at the newest token's step)."""
        state = self.layers.get(layer_idx)
        if state is None:
            raise ValueError(f"layer {layer_idx} has no keys yet; layers so far: {sorted(self.layers)}")
        return {
            "positions": state.positions.clone(),
            "last": state.extra_view(LAST).clone(),
            "mri": state.extra_view(MRI).clone(),
            "score": self.scores(state),
        }

    def decode_steps(self, layer_idx: int = 0) -> int:
        """Tokens appended to layer ``layer_idx`` since its prefill (the official ``obs_count``)."""
        state = self.layers.get(layer_idx)
        return 0 if state is None else int(state.meta[_STEP])


def build(params: Any = None) -> LazyEvictionPolicy:
    """The spec factory: a :class:`LazyEvictionPolicy` from :class:`LazyEvictionParams`."""
    if params is None:
        params = LazyEvictionParams()
    if not isinstance(params, LazyEvictionParams):
        raise TypeError(f"params must be a LazyEvictionParams, got {type(params).__name__}")
    return LazyEvictionPolicy(
        params.budget,
        window=params.window,
        alpha=params.alpha,
        aggregation=params.aggregation,
        prefill=params.prefill,
        chunk=params.chunk,
    )
