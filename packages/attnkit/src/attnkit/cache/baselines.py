"""Baseline KV-cache policies: SnapKV, observed attention, key norm, and AdaKV's head-wise
budget allocation over any scorer.

Every policy scores each key per sequence and per KV head (nothing is summed over the batch)
and really evicts: the cache holds ``budget`` slots per KV head (plus one for the next token),
whatever the prompt length. Query heads of a GQA group are aggregated explicitly
(``aggregation="mean"``, kvpress's choice, or ``"max"``). Attention probabilities are
recomputed from the queries the cache is given (:meth:`CachePolicy.observe`), in float32
(float64 for float64 keys) and in query chunks, so no eager attention is needed; when the
caller runs dense attention and the policy computed every query's probabilities anyway, it
hands the attention output back (:meth:`CachePolicy.on_attend`) and the caller's kernel is
skipped. Kept keys keep their original RoPE positions (no re-rotation, as kvpress without
``KeyRerotationPress``).

``snapkv`` — SnapKV (Li et al. 2024, arXiv:2404.14469). At the prefill the prompt's last
``window`` queries (the observation window) attend to every key, causally; each query head's
probabilities are summed over the window, max- (or avg-) pooled along the key axis over the
keys before the window (``kernel_size``, centred; SnapKV's ``F.max_pool1d(..., padding=k//2)``),
then aggregated over the query group; the window itself is always kept and the rest of the
budget goes to the best-pooled prompt keys. SnapKV compresses once and then lets the cache grow;
here the budget holds after the prefill too, so decoding must evict. After the prefill the
``window`` newest tokens are always kept (the observation window slides with the text) and a
key's score stays its SnapKV score, where a token generated later gets, in the same way, the
attention of the ``window`` queries from its own position on (while it is inside the window);
scores are then frozen and the lowest-scored key outside the window goes. So every key is
judged by the ``window`` queries an observation window gives it, prompt keys by the prompt's.
Departures from kvpress's ``SnapKVPress``: max pooling over 15 keys by default (kvpress
averages over 5, SnapKV's LongBench runs max-pool over 7; 15 keeps whole needles on SmolLM2,
:class:`~attnkit.cache.baseline_params.SnapKVParams`); the
window is kept by forcing it, not by padding its score with the layer's maximum (which reads
scores across the batch); a prompt shorter than the window is scored with all its queries
instead of failing an assertion; ``budget <= window`` keeps the ``budget`` newest tokens (a
sliding window) instead of raising.

``observed_attention`` — the attention a key received from every query so far (prompt rows at
the prefill, every later token too), divided by the number of queries that could see it, so
that early keys are not favoured for their age (H2O's cumulative score, arXiv:2306.14048, is
not normalised). The count is exact per key and per sequence: a key at position ``p`` has been
seen by every real query at a position ``>= p`` (it is stored from its own step on, and a
query sees every stored key), padding excluded. kvpress's ``ObservedAttentionPress`` divides
by ``arange(T, 0, -1)``, the same count for one prefill (left padding sees no real key), but it
scores the prefill only, from the eager attention weights; here scores and counts go on over
decoding and multi-token steps after eviction, and the probabilities are recomputed. A step's
probabilities are summed over its queries per query head, then aggregated over the group.
``window`` newest tokens can be protected (0 by default, as kvpress).

``key_norm`` — kvpress's ``KnormPress`` (Devoto et al. 2024, arXiv:2406.11430): keep the keys
with the smallest L2 norm, ties to the earlier token; needs no queries. The norm is taken once
per key, when it is stored (post-RoPE keys, as kvpress; RoPE rotates pairs of coordinates and
so keeps the norm).

``adakv`` / ``allocation="adaptive"`` — AdaKV's head-wise budgets (Feng et al. 2024,
arXiv:2407.11550), composed with any scorer through :class:`AdaptiveAllocation`. When a
sequence first holds more than its budget in a layer (the prefill of a long prompt), its
``budget x Hkv`` slots are split over the layer's KV heads: every head keeps its always-kept
window and at least ``floor(alpha_safeguard x budget)`` best keys, and the rest goes to the
best scores of all heads jointly. A head whose attention is spread over many keys thus gets
more slots than one that looks at a few. The split is then fixed, and each head evicts within
its own share as tokens come (one new token per head and step, as kvpress applies AdaKV at the
prefill only). Unlike kvpress's ``AdaKVPress``, which keeps every key and overwrites pruned ones
with a "fake key" that no query attends to (so the cache keeps its full size), evicted keys
are gone: a head holds exactly its share. The storage is one ``(B, Hkv, C, D)`` buffer per
layer, so its width ``C`` is the largest head's share plus one and the shorter heads leave
empty slots (:meth:`CachePolicy.nbytes` counts them): the bytes held drop from the prompt's to
``Hkv x (largest share + 1)`` slots, more than a uniform budget's ``Hkv x (budget + 1)``; the
keys and values really kept (:meth:`AdaptiveAllocation.kept_nbytes`) are the layer's budget
exactly. The per-head budget of the contract (no head above ``budget``) does not hold by design;
the layer's total does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from attnkit.cache.baseline_params import (
    AdaKVParams,
    KeyNormParams,
    ObservedAttentionParams,
    SnapKVParams,
    check_allocation,
    check_alpha_safeguard,
)
from attnkit.cache.params import resolve_budget
from attnkit.cache.policy import CachePolicy, LayerState, step_probabilities

__all__ = [
    "AdaptiveAllocation",
    "KeyNormPolicy",
    "ObservedAttentionPolicy",
    "SnapKVPolicy",
    "attention_column_sums",
    "build_adakv",
    "build_key_norm",
    "build_observed_attention",
    "build_snapkv",
]

_INT_MAX = torch.iinfo(torch.int64).max
#: ``state.meta`` keys.
_ALLOC = "adakv_alloc"  # (B, Hkv) int64 head budgets
_DONE = "adakv_done"  # (B,) bool: the row's split is made
_WINDOW = "baseline_window"  # (B, 1, 1) int64 always-kept newest tokens per row
_PROMPT = "snapkv_prompt"  # columns of the prompt (the prefill), int
#: ``state.extra`` keys (per slot, ``(B, Hkv, C)``).
SNAP_SCORE = "snapkv_score"
OA_SUM = "oa_sum"
OA_COUNT = "oa_count"
KNORM = "knorm_score"


def _work_dtype(state: LayerState) -> torch.dtype:
    return torch.float64 if state.kbuf.dtype == torch.float64 else torch.float32


def _aggregate(x: torch.Tensor, how: str) -> torch.Tensor:
    """``(B, Hkv, G, ...)`` -> ``(B, Hkv, ...)`` over the query group."""
    return x.mean(dim=2) if how == "mean" else x.amax(dim=2)


def attention_column_sums(
    state: LayerState,
    query: torch.Tensor,
    scaling: float,
    *,
    first: int = 0,
    reach: int | None = None,
    chunk: int = 128,
    want_output: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention probabilities of this step's queries over the slots in use, summed over queries.

    Uses the storage layout of :class:`CachePolicy`: one new token may sit in any slot and sees
    every stored key; several new tokens are the last slots, in order (a causal triangle among
    them, every older slot visible). Empty slots are never attended; a query that sees nothing
    (left padding) contributes zeros.

    :param state: the layer, after :meth:`CachePolicy.append` of this step's ``Tq`` tokens.
    :param query: ``(B, Hq, Tq, D)``.
    :param first: only queries ``first..Tq-1`` are computed (SnapKV's observation window).
    :param reach: if given, the query at position ``t`` adds only to keys at positions
        ``> t - reach`` (keys still among its ``reach`` newest tokens); the softmax is over every
        key it sees.
    :param chunk: queries per chunk (bounds the probabilities' memory).
    :param want_output: also return the attention output ``(B, Hq, Tq - first, Dv)`` in the
        query's dtype.
    :returns: ``(sums, out)``: ``sums`` ``(B, Hkv, G, hi)`` in float32 (float64 for float64 keys).
    """
    b, hq, tq, _ = query.shape
    hkv = state.kbuf.shape[1]
    work = _work_dtype(state)
    pos = state.positions
    sums = torch.zeros(b, hkv, hq // hkv, state.hi, dtype=work, device=query.device)
    outs: list[torch.Tensor] = []
    for start, stop, kend, probs, part in step_probabilities(
        state, query, scaling, dtype=work, chunk=chunk, first=first, want_output=want_output
    ):
        if part is not None:
            outs.append(part)
        if reach is not None:
            qpos = torch.arange(state.seen - tq + start, state.seen - tq + stop, device=query.device)
            near = pos[:, :, :kend].view(b, hkv, 1, 1, kend) > (qpos - reach).view(1, 1, 1, -1, 1)
            probs = probs * near
        sums[..., :kend] += probs.sum(dim=3)
    out = None
    if want_output:
        rows = 1 if tq == 1 else tq - first
        out = (outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)).reshape(b, hq, rows, -1).to(query.dtype)
    return sums, out


class AdaptiveAllocation(CachePolicy):
    """AdaKV's head-wise budgets for any scoring policy: mix it in before the policy class.

    ``class AdaH2O(AdaptiveAllocation, H2OPolicy): pass`` splits each layer's budget over its
    KV heads by H2O's scores. The per-head budgets of the class it is mixed into (uniform by
    default) give each sequence's layer total, ``sum`` over heads; when a sequence first holds
    more than that in a layer, its heads' shares are chosen from :meth:`scores` and
    :meth:`forced` (see :mod:`attnkit.cache.baselines`) and then kept. The mixed-in class's
    budgets must stay the same once resolved (the mixin declares :attr:`fixed_budgets`).

    :cvar allocation: ``"adaptive"``; ``"uniform"`` keeps the mixed-in class's budgets.
    :cvar alpha_safeguard: share of a head's budget it keeps at least.
    """

    allocation: str = "adaptive"
    alpha_safeguard: float = 0.2
    fixed_budgets: ClassVar[bool | None] = True  # each row's split is made once, then kept

    def configure_allocation(self, allocation: str, alpha_safeguard: float) -> None:
        """Set :attr:`allocation` and :attr:`alpha_safeguard` on this policy (validated)."""
        check_allocation(allocation)
        check_alpha_safeguard(alpha_safeguard)
        self.allocation = allocation
        self.alpha_safeguard = float(alpha_safeguard)

    def head_budgets(self, state: LayerState) -> torch.Tensor | None:
        base = super().head_budgets(state)
        if base is None or self.allocation == "uniform":
            return base
        b, h = state.pbuf.shape[:2]
        device = state.pbuf.device
        alloc = state.meta.get(_ALLOC)
        if alloc is None:
            alloc = torch.broadcast_to(base.to(device=device, dtype=torch.int64), (b, h)).clone()
            state.meta[_ALLOC] = alloc
            state.meta[_DONE] = torch.zeros(b, dtype=torch.bool, device=device)
        done = state.meta[_DONE]
        if bool(done.all()):
            return alloc
        valid = state.valid
        rows = (~done) & (valid.sum(-1) > alloc).any(-1)
        if bool(rows.any()):
            idx = rows.nonzero().flatten()
            alloc[idx] = self._split(state, idx, alloc[idx], valid[idx])
            done |= rows
        return alloc

    def _split(self, state: LayerState, rows: torch.Tensor, base: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``(R, Hkv)`` head budgets of the sequences ``rows`` from their current scores."""
        r, h, hi = valid.shape
        score = self.scores(state)[rows].to(torch.float64)
        forced = self.forced(state)
        forced = forced[rows] & valid if forced is not None else torch.zeros_like(valid)
        prio = score.masked_fill(forced, float("inf")).masked_fill(~valid, float("-inf"))
        pos = state.positions[rows].masked_fill(~valid, _INT_MAX)
        # each head's ranking: forced first, then the score, ties to the earlier token
        by_pos = pos.argsort(dim=-1, stable=True)
        order = torch.sort(prio.gather(-1, by_pos), dim=-1, descending=True, stable=True).indices
        ranked = by_pos.gather(-1, order)  # slots, best first
        rank = torch.empty_like(ranked).scatter_(-1, ranked, torch.arange(hi, device=ranked.device).expand_as(ranked))
        counts = valid.sum(-1)
        floor = torch.floor(base.to(torch.float64) * self.alpha_safeguard).to(torch.int64)
        guarantee = torch.minimum(torch.maximum(floor, forced.sum(-1)), counts)
        tier = (rank < guarantee.unsqueeze(-1)) & valid
        # the layer's joint ranking: guaranteed keys, then the score, then the earlier token,
        # then the lower head (successive stable sorts, the last key first in importance)
        flat_pos = pos.reshape(r, h * hi)
        joint = flat_pos.argsort(dim=-1, stable=True)
        joint = joint.gather(
            -1, torch.sort(prio.reshape(r, -1).gather(-1, joint), dim=-1, descending=True, stable=True).indices
        )
        joint = joint.gather(
            -1,
            torch.sort(
                tier.reshape(r, -1).gather(-1, joint).to(torch.int8), dim=-1, descending=True, stable=True
            ).indices,
        )
        total = torch.minimum(base.sum(-1), counts.sum(-1))  # (R,)
        taken = torch.arange(h * hi, device=joint.device).unsqueeze(0) < total.unsqueeze(-1)
        heads = torch.div(joint, hi, rounding_mode="floor")
        return torch.zeros(r, h, dtype=torch.int64, device=joint.device).scatter_add_(1, heads, taken.to(torch.int64))

    def reorder_layer(self, layer_idx: int, index: torch.Tensor) -> None:
        state = self.layers.get(layer_idx)
        if state is not None:
            for key in (_ALLOC, _DONE):
                if key in state.meta:
                    state.meta[key] = state.meta[key].index_select(0, index.to(state.meta[key].device))
        super().reorder_layer(layer_idx, index)

    def head_allocation(self, layer_idx: int) -> torch.Tensor | None:
        """``(B, Hkv)`` int64 the budget of each sequence and KV head of a layer (its share
        once split), or ``None`` before the layer's budgets are known."""
        state = self.layers.get(layer_idx)
        if state is None or not state.resolved:
            return None
        budgets = self.head_budgets(state)
        if budgets is None:
            return None
        return torch.broadcast_to(budgets, state.pbuf.shape[:2]).clone()

    def kept_nbytes(self) -> int:
        """Bytes of the keys and values really held (empty and spare slots not counted): what a
        packed per-head layout would allocate, against :meth:`nbytes` of the padded buffers."""
        total = 0
        for state in self.layers.values():
            per_slot = (
                state.kbuf.shape[-1] * state.kbuf.element_size() + state.vbuf.shape[-1] * state.vbuf.element_size()
            )
            total += int(state.valid.sum()) * per_slot
        return total


class _Windowed(AdaptiveAllocation):
    """Shared by the baselines: a budget, the ``window`` newest tokens always kept (at most the
    row's budget), and the allocation switch."""

    def __init__(
        self, budget: int | float, *, window: int, aggregation: str, allocation: str, alpha_safeguard: float
    ) -> None:
        super().__init__(budget, aggregation=aggregation)
        self.window = window
        self.configure_allocation(allocation, alpha_safeguard)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(budget={self.budget!r}, window={self.window!r}, aggregation={self.aggregation!r}, "
            f"allocation={self.allocation!r}, alpha_safeguard={self.alpha_safeguard!r})"
        )

    def resolve_budget(self, prompt_length: int) -> int | None:
        return resolve_budget(self.budget, prompt_length)  # type: ignore[arg-type]

    def on_resolve(self, state: LayerState) -> None:
        assert state.row_budget is not None
        state.meta[_WINDOW] = state.row_budget.clamp(max=self.window).view(-1, 1, 1)

    def forced(self, state: LayerState) -> torch.Tensor | None:
        if self.window == 0 or _WINDOW not in state.meta:
            return None
        return state.positions >= state.seen - state.meta[_WINDOW]

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        if budget is None:
            return list(range(length))
        return list(range(max(0, length - min(self.window, budget)), length))

    def _new_buffer(self, state: LayerState, name: str) -> torch.Tensor:
        buf = state.extra.get(name)
        if buf is None:
            b, h, c = state.pbuf.shape
            buf = torch.zeros(b, h, c, dtype=_work_dtype(state), device=state.pbuf.device)
            state.extra[name] = buf
            return buf
        buf.scatter_(2, state.new_slots(), 0.0)
        return buf


class SnapKVPolicy(_Windowed):
    """SnapKV; see :mod:`attnkit.cache.baselines`.

    :param budget: int >= 1 or ratio in (0, 1] of each row's prompt; includes the window.
    :param window: observation window and always-kept newest tokens.
    :param kernel_size: odd pooling kernel along the keys.
    :param pooling: ``"max"`` or ``"avg"``.
    :param aggregation: ``"mean"`` or ``"max"`` over a KV head's query group.
    :param allocation: ``"uniform"`` or ``"adaptive"`` (AdaKV).
    :param alpha_safeguard: AdaKV's floor share per head.
    :param chunk: queries per chunk when recomputing attention.
    """

    name: ClassVar[str] = "snapkv"
    needs_queries: ClassVar[bool] = True

    def __init__(
        self,
        budget: int | float = 0.25,
        window: int = 32,
        kernel_size: int = 15,
        pooling: str = "max",
        aggregation: str = "mean",
        allocation: str = "uniform",
        alpha_safeguard: float = 0.2,
        chunk: int = 128,
    ) -> None:
        SnapKVParams(
            budget=budget,
            window=window,
            kernel_size=kernel_size,
            pooling=pooling,
            aggregation=aggregation,
            allocation=allocation,
            alpha_safeguard=alpha_safeguard,
        )
        _check_chunk(chunk)
        super().__init__(
            budget, window=window, aggregation=aggregation, allocation=allocation, alpha_safeguard=alpha_safeguard
        )
        self.kernel_size = kernel_size
        self.pooling = pooling
        self.chunk = chunk

    def __repr__(self) -> str:
        return (
            f"SnapKVPolicy(budget={self.budget!r}, window={self.window!r}, kernel_size={self.kernel_size!r}, "
            f"pooling={self.pooling!r}, aggregation={self.aggregation!r}, allocation={self.allocation!r}, "
            f"alpha_safeguard={self.alpha_safeguard!r})"
        )

    def on_append(self, state: LayerState, n_new: int) -> None:
        self._new_buffer(state, SNAP_SCORE)

    def scores(self, state: LayerState) -> torch.Tensor:
        return state.extra_view(SNAP_SCORE)

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        self._score(state, query, scaling, want_output=False)

    def on_attend(self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
        return self._score(state, query, scaling, want_output=True)

    def _score(self, state: LayerState, query: torch.Tensor, scaling: float, want_output: bool) -> torch.Tensor | None:
        tq = query.shape[2]
        score = state.extra_view(SNAP_SCORE)
        if _PROMPT not in state.meta:
            state.meta[_PROMPT] = state.seen - tq
            if state.seen == tq and state.ordered:
                state.meta[_PROMPT] = tq
                self._prefill(state, query, scaling)
                return None  # only the window's queries were computed: the caller attends
        sums, out = attention_column_sums(
            state, query, scaling, reach=self.window, chunk=self.chunk, want_output=want_output
        )
        score.add_(_aggregate(sums, self.aggregation))
        return out

    def _prefill(self, state: LayerState, query: torch.Tensor, scaling: float) -> None:
        """SnapKV's scores: the observation window's attention summed per query head, pooled
        over the keys before the window, aggregated over the group. Slots are the prompt's
        columns, in order."""
        tq = query.shape[2]
        w = min(self.window, tq)
        sums, _ = attention_column_sums(state, query, scaling, first=tq - w, chunk=self.chunk)
        b, hkv, g, hi = sums.shape
        before = (state.positions < tq - w) & state.valid  # (B, Hkv, hi)
        if self.kernel_size > 1 and bool(before.any()):
            fill = float("-inf") if self.pooling == "max" else 0.0
            x = sums.masked_fill(~before.unsqueeze(2), fill).reshape(b * hkv * g, 1, hi)
            pad = self.kernel_size // 2
            if self.pooling == "max":
                pooled = F.max_pool1d(x, self.kernel_size, stride=1, padding=pad)
            else:
                pooled = F.avg_pool1d(x, self.kernel_size, stride=1, padding=pad, count_include_pad=True)
            sums = torch.where(before.unsqueeze(2), pooled.reshape(b, hkv, g, hi), sums)
        state.extra_view(SNAP_SCORE).copy_(_aggregate(sums, self.aggregation))


class ObservedAttentionPolicy(_Windowed):
    """Observed attention; see :mod:`attnkit.cache.baselines`.

    :param budget: int >= 1 or ratio in (0, 1] of each row's prompt.
    :param window: newest tokens always kept (0: none).
    :param aggregation: ``"mean"`` or ``"max"`` over a KV head's query group.
    :param allocation: ``"uniform"`` or ``"adaptive"`` (AdaKV).
    :param alpha_safeguard: AdaKV's floor share per head.
    :param chunk: queries per chunk when recomputing attention.
    """

    name: ClassVar[str] = "observed_attention"
    needs_queries: ClassVar[bool] = True

    def __init__(
        self,
        budget: int | float = 0.25,
        window: int = 0,
        aggregation: str = "mean",
        allocation: str = "uniform",
        alpha_safeguard: float = 0.2,
        chunk: int = 128,
    ) -> None:
        ObservedAttentionParams(
            budget=budget,
            window=window,
            aggregation=aggregation,
            allocation=allocation,
            alpha_safeguard=alpha_safeguard,
        )
        _check_chunk(chunk)
        super().__init__(
            budget, window=window, aggregation=aggregation, allocation=allocation, alpha_safeguard=alpha_safeguard
        )
        self.chunk = chunk

    def on_append(self, state: LayerState, n_new: int) -> None:
        self._new_buffer(state, OA_SUM)
        self._new_buffer(state, OA_COUNT)

    def scores(self, state: LayerState) -> torch.Tensor:
        return state.extra_view(OA_SUM) / state.extra_view(OA_COUNT).clamp(min=1.0)

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        self._score(state, query, scaling, want_output=False)

    def on_attend(self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
        return self._score(state, query, scaling, want_output=True)

    def _score(self, state: LayerState, query: torch.Tensor, scaling: float, want_output: bool) -> torch.Tensor | None:
        tq = query.shape[2]
        sums, out = attention_column_sums(state, query, scaling, chunk=self.chunk, want_output=want_output)
        state.extra_view(OA_SUM).add_(_aggregate(sums, self.aggregation))
        count = state.extra_view(OA_COUNT)
        valid = state.valid
        if tq == 1:
            # the new token's query saw every stored key (itself included) if it is real
            real = valid.gather(2, state.new_slots()).to(count.dtype)  # (B, Hkv, 1)
            count.add_(real)
            return out
        # the new tokens are the last tq slots, in order: key j of them is seen by the real
        # new queries at or after it, every older key by all real new queries
        real = valid[..., state.hi - tq :].to(count.dtype)  # (B, Hkv, tq)
        count[..., : state.hi - tq] += real.sum(-1, keepdim=True)
        count[..., state.hi - tq :] += real.flip(-1).cumsum(-1).flip(-1)
        return out


class KeyNormPolicy(_Windowed):
    """Key norm; see :mod:`attnkit.cache.baselines`.

    :param budget: int >= 1 or ratio in (0, 1] of each row's prompt.
    :param window: newest tokens always kept (0: none).
    :param allocation: ``"uniform"`` or ``"adaptive"`` (AdaKV).
    :param alpha_safeguard: AdaKV's floor share per head.
    """

    name: ClassVar[str] = "key_norm"

    def __init__(
        self, budget: int | float = 0.25, window: int = 0, allocation: str = "uniform", alpha_safeguard: float = 0.2
    ) -> None:
        KeyNormParams(budget=budget, window=window, allocation=allocation, alpha_safeguard=alpha_safeguard)
        super().__init__(
            budget, window=window, aggregation="mean", allocation=allocation, alpha_safeguard=alpha_safeguard
        )

    def __repr__(self) -> str:
        return (
            f"KeyNormPolicy(budget={self.budget!r}, window={self.window!r}, allocation={self.allocation!r}, "
            f"alpha_safeguard={self.alpha_safeguard!r})"
        )

    def on_append(self, state: LayerState, n_new: int) -> None:
        buf = state.extra.get(KNORM)
        if buf is None:
            buf = self._new_buffer(state, KNORM)
            buf[:, :, : state.hi] = -state.keys.to(buf.dtype).norm(dim=-1)
            return
        slots = state.new_slots()
        d = state.kbuf.shape[-1]
        new_keys = state.kbuf.gather(2, slots.unsqueeze(-1).expand(*slots.shape, d))
        buf.scatter_(2, slots, -new_keys.to(buf.dtype).norm(dim=-1))

    def scores(self, state: LayerState) -> torch.Tensor:
        return state.extra_view(KNORM)


def _check_chunk(chunk: object) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")


# ---------------------------------------------------------------------------- spec factories
def build_snapkv(params: Any = None) -> SnapKVPolicy:
    """The ``snapkv`` spec's factory: a :class:`SnapKVPolicy` from :class:`SnapKVParams`."""
    params = SnapKVParams() if params is None else params
    if not isinstance(params, SnapKVParams):
        raise TypeError(f"params must be a SnapKVParams, got {type(params).__name__}")
    return SnapKVPolicy(
        params.budget,
        window=params.window,
        kernel_size=params.kernel_size,
        pooling=params.pooling,
        aggregation=params.aggregation,
        allocation=params.allocation,
        alpha_safeguard=params.alpha_safeguard,
    )


def build_observed_attention(params: Any = None) -> ObservedAttentionPolicy:
    """The ``observed_attention`` spec's factory, from :class:`ObservedAttentionParams`."""
    params = ObservedAttentionParams() if params is None else params
    if not isinstance(params, ObservedAttentionParams):
        raise TypeError(f"params must be an ObservedAttentionParams, got {type(params).__name__}")
    return ObservedAttentionPolicy(
        params.budget,
        window=params.window,
        aggregation=params.aggregation,
        allocation=params.allocation,
        alpha_safeguard=params.alpha_safeguard,
    )


def build_key_norm(params: Any = None) -> KeyNormPolicy:
    """The ``key_norm`` spec's factory, from :class:`KeyNormParams`."""
    params = KeyNormParams() if params is None else params
    if not isinstance(params, KeyNormParams):
        raise TypeError(f"params must be a KeyNormParams, got {type(params).__name__}")
    return KeyNormPolicy(
        params.budget, window=params.window, allocation=params.allocation, alpha_safeguard=params.alpha_safeguard
    )


_BUILDERS = {"snapkv": build_snapkv, "observed_attention": build_observed_attention, "key_norm": build_key_norm}


def build_adakv(params: Any = None) -> AdaptiveAllocation:
    """The ``adakv`` spec's factory: the scorer named by :class:`AdaKVParams` with
    ``allocation="adaptive"``."""
    params = AdaKVParams() if params is None else params
    if not isinstance(params, AdaKVParams):
        raise TypeError(f"params must be an AdaKVParams, got {type(params).__name__}")
    return _BUILDERS[params.scorer](params.scorer_class_params())
