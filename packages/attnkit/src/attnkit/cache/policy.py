"""The KV-cache policy base class: storage, budgets, eviction and query observation.

A :class:`CachePolicy` owns the key/value storage of one model run: one :class:`LayerState`
per layer, each holding every sequence of the batch and every KV head separately (nothing is
summed over the batch, the H2O trap). A transformers model reaches it through
:class:`attnkit.cache.AttnkitCache`; tests and other runtimes may drive it directly:

1. :meth:`CachePolicy.append` (``prefill`` on a layer's first call: the whole prompt; then
   ``decode``: usually one token) stores the new keys and values and returns what attention
   must use: every kept key plus the new ones, ``(B, Hkv, Tk, D)``, not expanded to query
   heads;
2. when :attr:`CachePolicy.needs_queries` is true, :meth:`CachePolicy.observe` gets that
   layer's queries (the policy recomputes the attention probabilities it scores with);
3. the policy then evicts down to its budget, so between forward calls no layer holds more
   than ``budget`` tokens per sequence and KV head.

Positions: kept keys keep their original post-RoPE rotation; nothing is re-rotated, so a key's
position is the index of its token in the sequence (:meth:`CachePolicy.key_positions`) and
new tokens get their true positions (``AttnkitCache.get_seq_length`` counts every token seen,
not the tokens kept). StreamingLLM's "position shift" is therefore not reproduced.

Kept sets may differ per sequence and per KV head, in content and in size: storage is padded to
the largest per-head count and :meth:`CachePolicy.key_padding_mask` marks the real keys.
Within every ``(sequence, head)`` row the kept keys stay in position order (sorted).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from attnkit.cache.params import check_aggregation, check_budget, resolve_budget

__all__ = ["CachePolicy", "LayerState", "compact", "query_probabilities"]


@dataclass
class LayerState:
    """The storage of one layer.

    :param keys: ``(B, Hkv, T, D)`` kept keys then any keys appended since the last eviction.
    :param values: ``(B, Hkv, T, Dv)``.
    :param positions: ``(B, Hkv, T)`` int64, the token index of each slot; ``-1`` marks an
        empty slot (padding of a row that keeps fewer keys than the longest row).
    :param seen: tokens seen so far by this layer (prompt plus decoded), per sequence.
    :param budget: resolved absolute budget, ``None`` for no eviction.
    :param extra: policy-owned per-slot tensors shaped ``(B, Hkv, T, ...)``, gathered with the
        keys on eviction (H2O's accumulated scores live here).
    :param pending: whether keys were appended since the last eviction.
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    seen: int
    budget: int | None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: bool = False

    @property
    def valid(self) -> torch.Tensor:
        """``(B, Hkv, T)`` bool, True for a real key."""
        return self.positions >= 0

    @property
    def length(self) -> int:
        """Slots held (padding included)."""
        return int(self.keys.shape[-2])


class CachePolicy:
    """Base class of KV-cache eviction policies.

    Subclasses choose *what* to keep through :meth:`scores` (higher is kept first),
    :meth:`forced` (always kept) and :meth:`head_budgets`; the base class does the storage,
    the budget bookkeeping and the sorted, per-sequence, per-head compaction.

    :param budget: tokens kept per sequence, layer and KV head: an int >= 1, a ratio in
        (0, 1] of the prompt length (resolved when the prompt arrives), or ``None`` for none
        evicted.
    :param aggregation: ``"mean"`` or ``"max"``: how scores of the query heads of one GQA group
        become the score of their KV head (used by query-observing policies).
    """

    #: Whether :meth:`observe` must be called with each layer's queries after :meth:`append`.
    needs_queries: ClassVar[bool] = False
    #: Short name for reports.
    name: ClassVar[str] = "policy"

    def __init__(self, budget: int | float | None, *, aggregation: str = "mean") -> None:
        if budget is not None:
            check_budget(budget)
        check_aggregation(aggregation)
        self.budget = budget
        self.aggregation = aggregation
        self.layers: dict[int, LayerState] = {}
        # positions of the keys the last append() returned per layer (pre-eviction view)
        self._view_positions: dict[int, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget!r}, aggregation={self.aggregation!r})"

    # ------------------------------------------------------------------ hooks for subclasses
    def resolve_budget(self, prompt_length: int) -> int | None:
        """The absolute budget for a prompt of ``prompt_length`` tokens (``None``: unbounded)."""
        return None if self.budget is None else resolve_budget(self.budget, prompt_length)

    def head_budgets(self, state: LayerState) -> torch.Tensor:
        """``(Hkv,)`` int64 tokens each KV head may keep; default: the budget for every head.

        Policies keeping different amounts per head (full history for retrieval heads, a short
        window for the others) override this; storage then pads the shorter rows."""
        assert state.budget is not None
        return torch.full((state.keys.shape[1],), state.budget, dtype=torch.int64, device=state.keys.device)

    def scores(self, state: LayerState) -> torch.Tensor:
        """``(B, Hkv, T)`` keep-priority of each slot, higher kept first; default: recency."""
        return state.positions.to(torch.float64)

    def forced(self, state: LayerState) -> torch.Tensor | None:
        """``(B, Hkv, T)`` bool of slots that must be kept whatever their score, or ``None``."""
        return None

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        """Token positions guaranteed to be in the cache after ``length`` tokens were seen with
        resolved budget ``budget`` (the contract suite checks they survive)."""
        return []

    def on_append(self, state: LayerState, n_new: int) -> None:
        """Extend policy-owned ``state.extra`` tensors for ``n_new`` appended slots."""

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        """Update scores from ``query`` ``(B, Hq, Tq, D)``; called by :meth:`observe`."""

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget every layer's keys, values and scores; the next append is a new prefill."""
        self.layers.clear()
        self._view_positions.clear()

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``key``/``value`` ``(B, Hkv, Tn, D)`` of the ``Tn`` newest tokens of every
        sequence and return the keys and values attention must use, ``(B, Hkv, Tk, D)``.

        The first call for a layer is the prefill (the budget ratio resolves against ``Tn``).
        Without :attr:`needs_queries` eviction happens before returning (on the storage, not
        on the returned tensors, which this step still attends to)."""
        _check_kv(key, value)
        state = self.layers.get(layer_idx)
        b, h, tn, _ = key.shape
        if state is not None and state.pending:
            # observe() was not called for the previous step: evict on the scores we have
            self.evict(layer_idx)
        new_pos = torch.arange(tn, device=key.device, dtype=torch.int64)
        if state is None:
            state = LayerState(
                keys=key,
                values=value,
                positions=new_pos.expand(b, h, tn).clone(),
                seen=tn,
                budget=self.resolve_budget(tn),
            )
            self.layers[layer_idx] = state
            self.on_append(state, tn)
        else:
            if state.keys.shape[0] != b or state.keys.shape[1] != h or state.keys.shape[-1] != key.shape[-1]:
                raise ValueError(
                    f"key for layer {layer_idx} has shape {tuple(key.shape)} but the cache holds (B, Hkv, D) = "
                    f"({state.keys.shape[0]}, {state.keys.shape[1]}, {state.keys.shape[-1]}); call reset() for a new batch"
                )
            state.keys = torch.cat([state.keys, key.to(state.keys.dtype)], dim=-2)
            state.values = torch.cat([state.values, value.to(state.values.dtype)], dim=-2)
            state.positions = torch.cat([state.positions, (new_pos + state.seen).expand(b, h, tn)], dim=-1)
            state.seen += tn
            self.on_append(state, tn)
        state.pending = True
        keys, values = state.keys, state.values
        self._view_positions[layer_idx] = state.positions
        if not self.needs_queries:
            self.evict(layer_idx)
        return keys, values

    def observe(self, layer_idx: int, query: torch.Tensor, scaling: float, mask: torch.Tensor | None = None) -> None:
        """Score the keys :meth:`append` just returned with this layer's queries, then evict.

        :param query: ``(B, Hq, Tq, D)`` post-RoPE queries of the new tokens, ``Hq`` a multiple of
            ``Hkv``.
        :param scaling: the softmax scale the model uses.
        :param mask: optional "may attend" mask broadcastable to ``(B, Hq, Tq, Tk)`` (bool, or
            additive float), the one the attention applies; default: causal by position over
            the real keys.
        """
        state = self.layers.get(layer_idx)
        if state is None:
            raise ValueError(f"observe() for layer {layer_idx} before any append() for it")
        _check_query(query, state)
        if self.needs_queries and state.pending:
            self.on_observe(layer_idx, state, query, float(scaling), mask)
        self.evict(layer_idx)

    def evict(self, layer_idx: int) -> None:
        """Shrink layer ``layer_idx`` to its budget now (idempotent)."""
        state = self.layers[layer_idx]
        state.pending = False
        if state.budget is None:
            return
        keep = self.select(state)
        if keep is None:
            return
        compact(state, keep)

    def select(self, state: LayerState) -> torch.Tensor | None:
        """``(B, Hkv, T)`` bool of slots to keep, or ``None`` to keep all; per row at most its
        head budget, forced slots first, then the highest :meth:`scores`, ties to the earlier
        slot."""
        valid = state.valid
        budgets = self.head_budgets(state)
        if bool((valid.sum(-1) <= budgets.view(1, -1)).all()):
            return None if bool(valid.all()) else valid
        score = self.scores(state).to(torch.float64)
        forced = self.forced(state)
        if forced is not None:
            score = score.masked_fill(forced, float("inf"))
        score = score.masked_fill(~valid, float("-inf"))
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
        return (rank < budgets.view(1, -1, 1)) & valid

    def key_padding_mask(self, layer_idx: int) -> torch.Tensor | None:
        """``(B, Hkv, Tk)`` bool for the keys the last :meth:`append` returned (True = real),
        or ``None`` when all are real."""
        valid = self.key_positions(layer_idx) >= 0
        return None if bool(valid.all()) else valid

    def key_positions(self, layer_idx: int) -> torch.Tensor:
        """``(B, Hkv, Tk)`` token positions of the keys the last :meth:`append` returned (-1: padding)."""
        if layer_idx not in self._view_positions:
            raise ValueError(
                f"layer {layer_idx} has no keys yet; layers appended so far: {sorted(self._view_positions)}"
            )
        return self._view_positions[layer_idx]

    def kept_positions(self, layer_idx: int) -> torch.Tensor:
        """``(B, Hkv, T)`` positions held now (after eviction), -1 for padding slots."""
        return self.layers[layer_idx].positions

    def seen(self, layer_idx: int = 0) -> int:
        state = self.layers.get(layer_idx)
        return 0 if state is None else state.seen

    def stored_length(self, layer_idx: int = 0) -> int:
        state = self.layers.get(layer_idx)
        return 0 if state is None else state.length

    def resolved_budget(self, layer_idx: int = 0) -> int | None:
        state = self.layers.get(layer_idx)
        return None if state is None else state.budget

    def kept_counts(self, layer_idx: int) -> torch.Tensor:
        """``(B, Hkv)`` real keys held by each sequence and KV head."""
        return self.layers[layer_idx].valid.sum(-1)

    def nbytes(self) -> int:
        """Bytes of keys and values held (padding slots included)."""
        return sum(
            s.keys.numel() * s.keys.element_size() + s.values.numel() * s.values.element_size()
            for s in self.layers.values()
        )

    def reorder(self, index: torch.Tensor) -> None:
        """Select / reorder sequences of the batch (beam search, batch slicing)."""
        for state in self.layers.values():
            state.keys = state.keys.index_select(0, index.to(state.keys.device))
            state.values = state.values.index_select(0, index.to(state.values.device))
            state.positions = state.positions.index_select(0, index.to(state.positions.device))
            state.extra = {k: v.index_select(0, index.to(v.device)) for k, v in state.extra.items()}
        for layer_idx, pos in list(self._view_positions.items()):
            self._view_positions[layer_idx] = pos.index_select(0, index.to(pos.device))


def _check_kv(key: torch.Tensor, value: torch.Tensor) -> None:
    if not isinstance(key, torch.Tensor) or not isinstance(value, torch.Tensor):
        raise TypeError(f"key and value must be tensors, got {type(key).__name__} and {type(value).__name__}")
    if key.dim() != 4 or value.dim() != 4 or key.shape[:3] != value.shape[:3]:
        raise ValueError(
            f"key and value must be (B, Hkv, T, D) with equal (B, Hkv, T), got key {tuple(key.shape)} and value {tuple(value.shape)}"
        )
    if key.shape[-2] < 1:
        raise ValueError(f"key must hold at least one token, got shape {tuple(key.shape)}")


def _check_query(query: torch.Tensor, state: LayerState) -> None:
    b, h, _, d = state.keys.shape
    if query.dim() != 4 or query.shape[0] != b or query.shape[-1] != d or query.shape[1] % h != 0:
        raise ValueError(
            f"query must be (B, Hq, Tq, D) with B={b}, D={d} and Hq a multiple of Hkv={h}, got {tuple(query.shape)}"
        )


def compact(state: LayerState, keep: torch.Tensor) -> None:
    """Shrink ``state`` in place to the ``keep`` slots of every row, in their order.

    What :meth:`CachePolicy.evict` does with :meth:`CachePolicy.select`'s answer; a policy that
    overrides ``evict`` (one that keeps a different set per KV head, say) calls it with its own
    ``keep``. Rows keeping fewer slots than the longest row are padded at the end: padding slots
    get position ``-1`` (their keys and values are left-overs and must not be attended to).

    :param state: the layer's storage; ``keys``, ``values``, ``positions`` and every ``extra``
        tensor are replaced.
    :param keep: ``(B, Hkv, T)`` bool, True for the slots to keep, ``T`` the stored length.
    """
    counts = keep.sum(-1)
    width = int(counts.max()) if counts.numel() else 0
    # a stable sort of "not kept" brings kept slots first without reordering them
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[..., :width]
    slot_ok = torch.arange(width, device=keep.device).view(1, 1, -1) < counts.unsqueeze(-1)

    def take(t: torch.Tensor) -> torch.Tensor:
        idx = order.view(*order.shape, *([1] * (t.dim() - 3))).expand(*order.shape, *t.shape[3:])
        return t.gather(2, idx)

    state.keys = take(state.keys)
    state.values = take(state.values)
    state.positions = take(state.positions).masked_fill(~slot_ok, -1)
    state.extra = {k: take(v) for k, v in state.extra.items()}


def query_probabilities(
    query: torch.Tensor,
    keys: torch.Tensor,
    key_positions: torch.Tensor,
    query_positions: torch.Tensor,
    scaling: float,
    *,
    mask: torch.Tensor | None = None,
    chunk: int = 256,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Recompute softmax(q Kᵀ · scaling) in query chunks, per KV head and query group.

    :param query: ``(B, Hq, Tq, D)``.
    :param keys: ``(B, Hkv, Tk, D)``.
    :param key_positions: ``(B, Hkv, Tk)``, -1 for padding slots (never attended).
    :param query_positions: ``(Tq,)`` token positions of the queries (causal: a query sees keys
        at positions <= its own).
    :param mask: optional "may attend" mask broadcastable to ``(B, Hq, Tq, Tk)`` (bool, or an
        additive float mask), ANDed with the causal/validity mask.
    :returns: an iterator of ``(start, probs)`` with ``probs`` ``(B, Hkv, G, tq, Tk)`` in
        ``dtype`` for queries ``start:start+tq``; rows with no allowed key are zero.
    """
    b, hq, tq, d = query.shape
    hkv, tk = keys.shape[1], keys.shape[2]
    g = hq // hkv
    k = keys.to(dtype)
    allowed_mask = None
    if mask is not None:
        allowed_mask = mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2
        allowed_mask = allowed_mask.expand(b, hq, tq, tk).reshape(b, hkv, g, tq, tk)
    for start in range(0, tq, chunk):
        stop = min(tq, start + chunk)
        q = query[:, :, start:stop].to(dtype).reshape(b, hkv, g, stop - start, d)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q, k) * scaling
        qpos = query_positions[start:stop].view(1, 1, 1, -1, 1)
        kpos = key_positions.view(b, hkv, 1, 1, tk)
        allowed = (kpos >= 0) & (kpos <= qpos)
        if allowed_mask is not None:
            allowed = allowed & allowed_mask[:, :, :, start:stop]
        logits = logits.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        yield start, probs
