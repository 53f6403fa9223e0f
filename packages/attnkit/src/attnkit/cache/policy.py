"""The KV-cache policy base class: storage, budgets, eviction and query observation.

A :class:`CachePolicy` owns the key/value storage of one model run: one :class:`LayerState`
per layer, each holding every sequence of the batch and every KV head separately (nothing is
summed over the batch, the H2O trap). A transformers model reaches it through
:class:`attnkit.cache.AttnkitCache`; tests and other runtimes may drive it directly:

1. :meth:`CachePolicy.append` (``prefill`` on a layer's first call: the whole prompt; then
   usually one token per call) stores the new keys and values and returns what attention must
   use: every kept key plus the new ones, ``(B, Hkv, Tk, D)``, not expanded to query heads;
2. :meth:`CachePolicy.observe` gets that layer's queries and the model's attention mask: the
   mask tells which new tokens are padding (a left-padded batch), query-observing policies
   (:attr:`CachePolicy.needs_queries`) score with the queries, and the policy then evicts
   down to its budget. Every cache-aware attention function calls it (the reference attention
   and the HF adapter do). Inside an :class:`~attnkit.cache.AttnkitCache`
   (:attr:`CachePolicy.defer_eviction` set) every policy evicts there; a policy driven
   directly without it evicts in :meth:`append` unless it needs queries. A step nobody
   observed is evicted by the next :meth:`append`, before the new tokens are stored.

So between forward calls no layer holds more than its budget per sequence and KV head.

When the budget applies (:attr:`CachePolicy.compress`): ``"always"`` (the default) holds it
after every forward, so an appended question and the answer are evicted down to the budget
like the context; ``"prompt"`` compresses the first forward of each layer (the context) once
to the budget and keeps every token that follows (kvpress's setting: the compressed context
is reused for any question appended to it). A ratio budget is always a share of that first
forward's real tokens.

Storage (issue 9): each layer preallocates its slots, ``budget + 1`` once the prompt has been
cut down (the kept tokens plus room for the next one), and a new token is written into the
slot the last eviction freed: no per-step concatenation, sort or compaction. The slot order is
therefore *not* the token order. Attention does not care (softmax over keys is order-free once
the mask is right): :meth:`CachePolicy.key_positions` gives the token position of every slot
returned, :meth:`CachePolicy.key_padding_mask` marks the slots holding a real key, and several
new tokens at once (a chunk, an appended question) are always the last slots, in order, so
causality among them is the usual bottom-right alignment. :meth:`CachePolicy.kept_positions`
returns each row's positions sorted, the documented view of what is kept.

Positions: by default kept keys keep their original post-RoPE rotation, so a key's position is
the index (column) of its token in the sequence and new tokens get their true positions
(``AttnkitCache.get_seq_length`` counts every token seen, not the tokens kept). With
:attr:`CachePolicy.rerotate` (StreamingLLM's position shift) the kept keys are re-rotated at
every step so that they sit at contiguous positions right before the new tokens: the ``r``-th
oldest of ``S`` kept keys at ``p - S + r`` when the first new token is at ``p``. RoPE logits
depend only on position differences, so this is the cache's own positions ``0 .. S - 1`` with
the query at ``S``, whatever absolute position the model gives the query; distances never
exceed the cache's size, which is what lets a model run past ``max_position_embeddings``. A
key is rotated only when its target moves (the sinks of a sink + window cache, one step per
token; the window's keys keep theirs), by the difference, in float32 at least.

Padding: a padding token (seen as a column no query of its step may attend to) is stored as an
empty slot: it is never attended to, never counts against a budget, and a ratio budget, sinks
or a recent window are counted from each row's first real token, so a left-padded row keeps
what it would keep alone.

Kept sets may differ per sequence and per KV head, in content and in size (rows of a ratio
budget over prompts of different lengths, ragged per-head budgets): such rows leave empty
slots, which :meth:`CachePolicy.key_padding_mask` marks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from attnkit.cache.params import check_aggregation, check_budget, resolve_budget

__all__ = ["CachePolicy", "LayerState", "compact", "query_probabilities", "rotate_keys", "step_probabilities"]

_INT_MAX = torch.iinfo(torch.int64).max
#: Spare slots a growing layer gets at once when nothing bounds it (the full cache): one copy
#: per this many decode steps instead of one per step.
GROW_STEP = 64
#: When a policy's budget applies (:attr:`CachePolicy.compress`).
COMPRESS_MODES = ("always", "prompt")
#: ``LayerState.extra`` key of the position each slot's key is rotated at (:attr:`CachePolicy.rerotate`).
ROT = "_rotated_at"


@dataclass
class LayerState:
    """The storage of one layer.

    The buffers have a capacity ``C >= hi``; slots ``[0, hi)`` are what :meth:`CachePolicy.append`
    returns, slots ``[hi, C)`` are spare room that holds nothing.

    :param kbuf: ``(B, Hkv, C, D)`` key slots.
    :param vbuf: ``(B, Hkv, C, Dv)``.
    :param pbuf: ``(B, Hkv, C)`` int64, the token position (column) each slot holds; ``-1``
        marks an empty slot (evicted, padding, or not yet written).
    :param hi: slots in use (``[0, hi)``).
    :param seen: tokens (columns) seen so far by this layer, padding included.
    :param budget: resolved absolute budget (the largest of the rows), ``None`` for no eviction.
    :param row_budget: ``(B,)`` int64 resolved budget of each sequence (a ratio budget resolves
        against each row's real prompt length), ``None`` before resolution or without a budget.
    :param start: ``(B,)`` int64 column of each row's first real token (0 without left padding).
    :param prompt_tokens: ``(B,)`` int64 real (non-padding) tokens of each row's prompt.
    :param extra: policy-owned per-slot buffers shaped ``(B, Hkv, C, ...)``: the base class
        grows, gathers and reorders them with the keys; the policy writes the new slots in
        :meth:`CachePolicy.on_append` (H2O's accumulated scores live here).
    :param pending: whether keys were appended since the last eviction.
    :param resolved: whether budgets are resolved (after the prefill's mask was seen).
    :param owned: whether the buffers belong to the policy (the prefill's are the caller's
        tensors, which are never written in place).
    :param ordered: whether the real slots of every row are in position order.
    :param has_holes: whether some slot in ``[0, hi)`` may be empty (false means none is).
    """

    kbuf: torch.Tensor
    vbuf: torch.Tensor
    pbuf: torch.Tensor
    hi: int
    seen: int
    budget: int | None = None
    row_budget: torch.Tensor | None = None
    start: torch.Tensor | None = None
    prompt_tokens: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: bool = False
    resolved: bool = False
    owned: bool = False
    ordered: bool = True
    has_holes: bool = False
    #: ``(B, Hkv, Tn)`` slots the last append wrote, or ``None``: the last ``n_new`` slots.
    new_index: torch.Tensor | None = None
    n_new: int = 0
    #: ``(B, Hkv)`` the slot each row freed in the last eviction when every row freed exactly
    #: one and had no other empty slot: where the next single token goes (the ring buffer).
    free_slots: torch.Tensor | None = None
    #: the last write filled ``free_slots``: every row holds its budget plus one (the steady
    #: state of the ring; the next eviction needs no counting).
    ring_full: bool = False
    #: whether slots other than ``free_slots`` were empty when they were freed (rows of
    #: different budgets): what ``has_holes`` is once the ring write filled ``free_slots``.
    other_holes: bool = False
    #: the largest head budget at the last eviction (``None`` before): capacity is sized to it.
    limit: int | None = None
    #: per-layer quantities a policy derives once (in :meth:`CachePolicy.on_resolve`).
    meta: dict[str, Any] = field(default_factory=dict)
    #: whether one eviction has run (the first forward's, for ``compress="prompt"``).
    resolved_once: bool = False
    #: ``compress="prompt"`` after the context's eviction: nothing is evicted any more.
    frozen: bool = False

    @property
    def keys(self) -> torch.Tensor:
        """``(B, Hkv, hi, D)`` the slots in use (a view of the buffer)."""
        return self.kbuf[:, :, : self.hi]

    @property
    def values(self) -> torch.Tensor:
        return self.vbuf[:, :, : self.hi]

    @property
    def positions(self) -> torch.Tensor:
        """``(B, Hkv, hi)`` int64 position of each slot in use, ``-1`` for an empty slot."""
        return self.pbuf[:, :, : self.hi]

    @property
    def valid(self) -> torch.Tensor:
        """``(B, Hkv, hi)`` bool, True for a real key."""
        return self.positions >= 0

    @property
    def length(self) -> int:
        """Slots in use (empty ones included)."""
        return self.hi

    @property
    def capacity(self) -> int:
        """Slots allocated."""
        return int(self.kbuf.shape[2])

    def extra_view(self, name: str) -> torch.Tensor:
        """``state.extra[name]`` over the slots in use, ``(B, Hkv, hi, ...)``."""
        return self.extra[name][:, :, : self.hi]

    def new_slots(self) -> torch.Tensor:
        """``(B, Hkv, Tn)`` int64 slot indices of the tokens the last append wrote."""
        if self.new_index is not None:
            return self.new_index
        b, h = self.pbuf.shape[:2]
        idx = torch.arange(self.hi - self.n_new, self.hi, device=self.pbuf.device)
        return idx.expand(b, h, self.n_new)


class CachePolicy:
    """Base class of KV-cache eviction policies.

    Subclasses choose *what* to keep through :meth:`scores` (higher is kept first),
    :meth:`forced` (always kept) and :meth:`head_budgets`; the base class does the storage,
    the budget bookkeeping and the per-sequence, per-head eviction: one victim per row and
    step found with one reduction (``argmin``) and overwritten in place by the next token; a
    sort only when many tokens go at once (the prompt, a chunk of several tokens).

    :param budget: tokens kept per sequence, layer and KV head: an int >= 1, a ratio in
        (0, 1] of the prompt length (resolved when the prompt arrives, against each row's real
        tokens), or ``None`` for none evicted.
    :param aggregation: ``"mean"`` or ``"max"``: how scores of the query heads of one GQA group
        become the score of their KV head (used by query-observing policies).
    :param compress: ``"always"``: the budget holds after every forward; ``"prompt"``: the
        first forward (the context) is compressed once and what follows is kept. Settable on
        a built policy too (``attnkit.patch(..., cache_compress=)`` does), before its first use.
    :param rerotate: re-rotate kept keys to contiguous positions (StreamingLLM's position
        shift; see the module docstring). Needs the model's RoPE, which
        :class:`~attnkit.cache.AttnkitCache` passes to :meth:`bind_model` from the config.
        Settable before first use (``attnkit.patch(..., cache_rerotate=True)``).
    """

    #: Whether :meth:`observe` needs each layer's queries (the policy scores with them).
    needs_queries: ClassVar[bool] = False
    #: Short name for reports.
    name: ClassVar[str] = "policy"
    #: Whether :meth:`head_budgets` stays the same once a layer's budgets are resolved (the
    #: steady-state eviction then skips counting); ``None``: true unless it is overridden.
    fixed_budgets: ClassVar[bool | None] = None

    def __init__(
        self, budget: int | float | None, *, aggregation: str = "mean", compress: str = "always", rerotate: bool = False
    ) -> None:
        if budget is not None:
            check_budget(budget)
        check_aggregation(aggregation)
        self.budget = budget
        self.aggregation = aggregation
        self.compress = compress
        self.rerotate = rerotate
        #: ``(rope_theta, rotary_dim)`` of the model (:meth:`bind_model`), for :attr:`rerotate`.
        self.rope: tuple[float, int] | None = None
        #: Evict in :meth:`observe` rather than in :meth:`append` (set by
        #: :class:`~attnkit.cache.AttnkitCache`: the mask ``observe`` gets says which tokens are
        #: padding, which must be known before the prompt is cut down). Query-observing policies
        #: always evict in ``observe``.
        self.defer_eviction = False
        self.layers: dict[int, LayerState] = {}
        #: The model's geometry when known (:meth:`bind_model`): ``num_layers``,
        #: ``num_attention_heads``, ``num_key_value_heads``.
        self.model: dict[str, int] = {}
        # positions of the keys the last append() returned per layer (pre-eviction view)
        self._view_positions: dict[int, torch.Tensor] = {}
        self._view_valid: dict[int, torch.Tensor | None] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget!r}, aggregation={self.aggregation!r})"

    @property
    def compress(self) -> str:
        """``"always"`` or ``"prompt"`` (see the class docstring)."""
        return self._compress

    @property
    def rerotate(self) -> bool:
        """Whether kept keys are re-rotated to contiguous positions."""
        return self._rerotate

    @rerotate.setter
    def rerotate(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"rerotate must be a bool, got {type(value).__name__}")
        if getattr(self, "layers", None):
            raise ValueError("rerotate can only be changed before the policy's first append (or after reset())")
        self._rerotate = value

    @compress.setter
    def compress(self, value: str) -> None:
        if value not in COMPRESS_MODES:
            raise ValueError(f"compress must be one of {COMPRESS_MODES}, got {value!r}")
        if getattr(self, "layers", None):
            raise ValueError("compress can only be changed before the policy's first append (or after reset())")
        self._compress = value

    # ------------------------------------------------------------------ hooks for subclasses
    def resolve_budget(self, prompt_length: int) -> int | None:
        """The absolute budget for a prompt of ``prompt_length`` real tokens (``None``: unbounded)."""
        return None if self.budget is None else resolve_budget(self.budget, prompt_length)

    def on_resolve(self, state: LayerState) -> None:
        """Called once per layer when its budgets are resolved (``state.row_budget``,
        ``state.start``, ``state.prompt_tokens`` set): precompute per-row quantities here."""

    def head_budgets(self, state: LayerState) -> torch.Tensor | None:
        """Tokens each sequence and KV head may keep, broadcastable to ``(B, Hkv)`` int64, or
        ``None`` for no eviction; default: each row's resolved budget for every head.

        Policies keeping different amounts per head (full history for retrieval heads, a short
        window for the others) override this; their shorter rows leave empty slots."""
        if state.row_budget is None:
            return None
        return state.row_budget.view(-1, 1)

    def scores(self, state: LayerState) -> torch.Tensor:
        """``(B, Hkv, hi)`` keep-priority of each slot in use, higher kept first, ties to the
        earlier token; default: recency (the positions themselves)."""
        return state.positions

    def forced(self, state: LayerState) -> torch.Tensor | None:
        """``(B, Hkv, hi)`` bool of slots that must be kept whatever their score, or ``None``."""
        return None

    def always_kept(self, length: int, budget: int | None) -> list[int]:
        """Token positions guaranteed to be in the cache after ``length`` tokens were seen with
        resolved budget ``budget`` (the contract suite checks they survive)."""
        return []

    def steady_victims(self, state: LayerState) -> torch.Tensor | None:
        """``(B, Hkv)`` the slot each row evicts in the ring's steady state (every row holds its
        budget plus the new token, no slot is empty), or ``None`` for the generic choice (the
        lowest :meth:`scores` outside :meth:`forced`). A shortcut for policies whose choice is
        cheaper to state directly (sinks + window: the oldest token after the sinks)."""
        return None

    def on_append(self, state: LayerState, n_new: int) -> None:
        """Initialise policy-owned ``state.extra`` buffers at the ``n_new`` slots just written
        (:meth:`LayerState.new_slots`); on the prefill, create them (capacity
        ``state.capacity``)."""

    def on_observe(
        self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float, mask: torch.Tensor | None
    ) -> None:
        """Update scores from ``query`` ``(B, Hq, Tq, D)``; called by :meth:`observe` before
        eviction. ``mask`` is ``None``: the slots' positions say everything (``-1`` = empty or
        padding; a query at position ``p`` sees keys at positions ``<= p``)."""

    def on_attend(self, layer_idx: int, state: LayerState, query: torch.Tensor, scaling: float) -> torch.Tensor | None:
        """:meth:`on_observe`, and also the dense attention output ``(B, Hq, Tq, Dv)`` over the
        slots in use (causal by position, empty slots masked) when the policy computed the
        probabilities anyway; default: :meth:`on_observe`, then ``None``."""
        self.on_observe(layer_idx, state, query, scaling, None)
        return None

    def bind_model(
        self,
        *,
        num_layers: int | None = None,
        num_attention_heads: int | None = None,
        num_key_value_heads: int | None = None,
        rope: tuple[float, int] | None = None,
    ) -> None:
        """Tell the policy the model it serves (:class:`~attnkit.cache.AttnkitCache` calls this
        with the model config); policies that size per layer (the retrieval-head cache) use it.

        :param rope: ``(rope_theta, rotary_dim)`` of plain RoPE (HF ``rotate_half`` layout),
            what :attr:`rerotate` rotates with.

        .. versionadded:: 0.2
        """
        if rope is not None:
            self.rope = (float(rope[0]), int(rope[1]))
        geometry = {
            "num_layers": num_layers,
            "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads,
        }
        self.model.update({k: int(v) for k, v in geometry.items() if v is not None})

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget every layer's keys, values and scores; the next append is a new prefill."""
        self.layers.clear()
        self._view_positions.clear()
        self._view_valid.clear()

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``key``/``value`` ``(B, Hkv, Tn, D)`` of the ``Tn`` newest tokens of every
        sequence and return the keys and values attention must use, ``(B, Hkv, Tk, D)``.

        The first call for a layer is the prefill (a ratio budget resolves against it). A policy
        that needs neither queries nor the mask (:attr:`defer_eviction` unset) evicts here, on
        the storage (the returned keys stay valid for this step); otherwise :meth:`observe`
        does, and a step nobody observed is evicted here before the new tokens are stored."""
        _check_kv(key, value)
        state = self.layers.get(layer_idx)
        b, h, tn, _ = key.shape
        if state is not None and state.pending:
            if self.needs_queries and not state.frozen:
                # evicting now would use scores that never saw the previous step's queries
                raise RuntimeError(
                    f"{type(self).__name__} scores with the queries, but observe() was not called for layer "
                    f"{layer_idx}'s previous step: run the model under attnkit.patch() or with "
                    "attnkit.cache.register_reference_attention()'s attention, which call it"
                )
            # observe() was not called for the previous step: evict on what we know
            self.evict(layer_idx)
        if state is None:
            # fail on a budget that cannot fit this prompt now; rows are resolved once the
            # padding is known (observe), against their real tokens
            self.resolve_budget(tn)
            pos = torch.arange(tn, device=key.device, dtype=torch.int64).expand(b, h, tn)
            if self._rerotate and self.rope is None:
                raise ValueError(
                    "rerotate=True needs the model's RoPE (theta, rotary dim): use the policy through "
                    "attnkit.cache.AttnkitCache(policy, config=model.config), or call bind_model(rope=(theta, dim))"
                )
            state = LayerState(kbuf=key, vbuf=value, pbuf=pos, hi=tn, seen=tn, n_new=tn)
            if self._rerotate:
                state.extra[ROT] = pos.clone()
            self.layers[layer_idx] = state
            self.on_append(state, tn)
        else:
            if state.kbuf.shape[0] != b or state.kbuf.shape[1] != h or state.kbuf.shape[-1] != key.shape[-1]:
                raise ValueError(
                    f"key for layer {layer_idx} has shape {tuple(key.shape)} but the cache holds (B, Hkv, D) = "
                    f"({state.kbuf.shape[0]}, {state.kbuf.shape[1]}, {state.kbuf.shape[-1]}); call reset() for a new batch"
                )
            self._write(state, key, value)
            state.seen += tn
            if self._rerotate:
                self._shift_positions(state, tn)
            self.on_append(state, tn)
        state.pending = True
        self._set_view(layer_idx, state)
        keys, values = state.keys, state.values
        if not self.needs_queries and not self.defer_eviction:
            self.evict(layer_idx)
        return keys, values

    def observe(
        self,
        layer_idx: int,
        query: torch.Tensor,
        scaling: float,
        mask: torch.Tensor | None = None,
        *,
        attend: bool = False,
    ) -> torch.Tensor | None:
        """Give the policy this step's queries and attention mask, then evict.

        Call after :meth:`append`, before attention (every policy, not only query-observing
        ones: the mask is where padding is learnt).

        With ``attend=True`` the caller is about to run dense softmax attention over the keys
        :meth:`append` returned; a policy that computes those attention probabilities anyway
        to score (H2O) then returns the attention output ``(B, Hq, Tq, Dv)`` so the caller can
        skip its own kernel (:meth:`on_attend`); otherwise ``None``.

        :param query: ``(B, Hq, Tq, D)`` post-RoPE queries of the new tokens, ``Hq`` a multiple of
            ``Hkv``.
        :param scaling: the softmax scale the model uses.
        :param mask: the model's "may attend" mask (bool, or additive float) ``(B|1, 1|Hq, Tq,
            W)`` whose last ``Tq`` columns are the new tokens (transformers' layout), or
            ``None``. Only those columns are read: a new token no query may attend to is
            padding. The kept keys' part is the cache's business (its positions and validity).
        :param attend: see above.
        :returns: the attention output or ``None``.
        """
        state = self.layers.get(layer_idx)
        if state is None:
            raise ValueError(f"observe() for layer {layer_idx} before any append() for it")
        _check_query(query, state)
        if not state.pending:
            return None
        if mask is not None:
            self._absorb_padding(layer_idx, state, mask)
        if state.frozen:  # compress="prompt", context already compressed: nothing is scored
            state.pending = False
            return None
        if not state.resolved:
            self._resolve(state)
        out = None
        if self.needs_queries:
            if attend:
                out = self.on_attend(layer_idx, state, query, float(scaling))
            else:
                self.on_observe(layer_idx, state, query, float(scaling), None)
        self.evict(layer_idx)
        return out

    def evict(self, layer_idx: int) -> None:
        """Shrink layer ``layer_idx`` to its budgets now (idempotent)."""
        state = self.layers[layer_idx]
        state.pending = False
        if state.frozen:
            return
        if self._compress == "prompt" and state.resolved_once:
            # the context was compressed by the previous eviction: keep everything from now on
            state.frozen, state.limit, state.free_slots, state.ring_full = True, None, None, False
            return
        state.resolved_once = True
        if state.ring_full and self._budgets_fixed():
            # the ring's steady state: every row is one over its budget
            victim = None if state.has_holes else self.steady_victims(state)
            if victim is None:
                victim = self._victims(state, state.valid if state.has_holes else None)
            state.other_holes = state.has_holes
            state.pbuf = state.pbuf.scatter(2, victim.unsqueeze(-1), -1)
            state.free_slots, state.has_holes, state.ring_full = victim, True, False
            return
        if not state.resolved:
            self._resolve(state)
        budgets = self.head_budgets(state)
        if budgets is None:
            return
        b, h = state.pbuf.shape[:2]
        budgets = torch.broadcast_to(budgets.to(device=state.pbuf.device, dtype=torch.int64), (b, h))
        valid = state.valid
        over = valid.sum(-1) - budgets
        most, state.limit = (int(x) for x in torch.stack([over.max(), budgets.max()]).tolist())
        if most <= 0:
            return
        if most == 1 and state.owned and state.capacity <= state.limit + 1 and self._evict_one(state, over > 0, valid):
            return
        keep = self.select(state)
        if keep is not None:
            compact(state, keep, spare=1)

    def select(self, state: LayerState) -> torch.Tensor | None:
        """``(B, Hkv, hi)`` bool of slots to keep, or ``None`` to keep all; per row at most its
        head budget, forced slots first, then the highest :meth:`scores`, ties to the earlier
        token. Sorts; :meth:`evict` uses it only when many tokens go at once."""
        valid = state.valid
        budgets = self.head_budgets(state)
        if budgets is None:
            return None
        b, h = state.pbuf.shape[:2]
        budgets = torch.broadcast_to(budgets.to(device=valid.device, dtype=torch.int64), (b, h))
        if bool((valid.sum(-1) <= budgets).all()):
            return None if bool(valid.all()) else valid
        score = self.scores(state)
        top, bottom = _extremes(score.dtype)
        forced = self.forced(state)
        if forced is not None:
            score = score.masked_fill(forced, top)
        score = score.masked_fill(~valid, bottom)
        perm = None
        if not state.ordered:
            # ties go to the earlier token: bring slots into position order first
            perm = state.positions.masked_fill(~valid, _INT_MAX).argsort(dim=-1)
            score = score.gather(-1, perm)
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
        keep = rank < budgets.unsqueeze(-1)
        if perm is not None:
            keep = torch.zeros_like(keep).scatter(-1, perm, keep)
        return keep & valid

    def key_padding_mask(self, layer_idx: int) -> torch.Tensor | None:
        """``(B, Hkv, Tk)`` bool for the keys the last :meth:`append` returned (True = real),
        or ``None`` when all are real."""
        if layer_idx not in self._view_valid:
            valid = self.key_positions(layer_idx) >= 0
            self._view_valid[layer_idx] = None if bool(valid.all()) else valid
        return self._view_valid[layer_idx]

    def key_positions(self, layer_idx: int) -> torch.Tensor:
        """``(B, Hkv, Tk)`` token positions of the keys the last :meth:`append` returned, in
        slot order (-1: empty slot or padding)."""
        if layer_idx not in self._view_positions:
            raise ValueError(
                f"layer {layer_idx} has no keys yet; layers appended so far: {sorted(self._view_positions)}"
            )
        return self._view_positions[layer_idx]

    def kept_positions(self, layer_idx: int) -> torch.Tensor:
        """``(B, Hkv, hi)`` positions held now (after eviction), each row sorted, ``-1`` after
        the real ones."""
        pos = self.layers[layer_idx].positions
        ordered = pos.masked_fill(pos < 0, _INT_MAX).sort(dim=-1).values
        return ordered.masked_fill(ordered == _INT_MAX, -1)

    def seen(self, layer_idx: int = 0) -> int:
        state = self.layers.get(layer_idx)
        return 0 if state is None else state.seen

    def stored_length(self, layer_idx: int = 0) -> int:
        state = self.layers.get(layer_idx)
        return 0 if state is None else state.length

    def resolved_budget(self, layer_idx: int = 0) -> int | None:
        state = self.layers.get(layer_idx)
        if state is None:
            return None
        if not state.resolved:
            self._resolve(state)
        return state.budget

    def budget_slack(self) -> int:
        """Tokens a row may hold above :meth:`resolved_budget` after a forward: ``0`` (the
        budget holds after every forward) unless the policy evicts lagged, every few steps
        (LazyEviction: ``window - 1``). The cache contract and the benchmarks hold a policy to
        ``budget + budget_slack()``; a policy that overrides it documents why."""
        return 0

    def kept_counts(self, layer_idx: int) -> torch.Tensor:
        """``(B, Hkv)`` real keys held by each sequence and KV head."""
        return self.layers[layer_idx].valid.sum(-1)

    def nbytes(self) -> int:
        """Bytes of key and value slots allocated (empty and spare slots included)."""
        return sum(
            s.kbuf.numel() * s.kbuf.element_size() + s.vbuf.numel() * s.vbuf.element_size()
            for s in self.layers.values()
        )

    def reorder(self, index: torch.Tensor) -> None:
        """Select / reorder sequences of the batch (beam search, batch slicing)."""
        for layer_idx in list(self.layers):
            self.reorder_layer(layer_idx, index)

    def reorder_layer(self, layer_idx: int, index: torch.Tensor) -> None:
        """:meth:`reorder` for one layer."""
        state = self.layers.get(layer_idx)
        if state is None:
            return
        idx = index.to(state.kbuf.device)

        def sel(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.index_select(0, idx)

        state.kbuf, state.vbuf, state.pbuf = sel(state.kbuf), sel(state.vbuf), sel(state.pbuf)  # type: ignore[assignment]
        state.extra = {k: v.index_select(0, idx) for k, v in state.extra.items()}
        state.row_budget, state.start = sel(state.row_budget), sel(state.start)
        state.prompt_tokens, state.new_index = sel(state.prompt_tokens), sel(state.new_index)
        state.free_slots = None
        state.ring_full = False
        state.owned = True  # index_select copied
        if state.row_budget is not None:
            state.budget = int(state.row_budget.max())
        if state.resolved:
            self.on_resolve(state)
        if layer_idx in self._view_positions:
            self._view_positions[layer_idx] = self._view_positions[layer_idx].index_select(0, idx)
        self._view_valid.pop(layer_idx, None)

    # ------------------------------------------------------------------ internals
    def _set_view(self, layer_idx: int, state: LayerState) -> None:
        self._view_positions[layer_idx] = state.positions
        if state.has_holes:
            self._view_valid.pop(layer_idx, None)  # computed when asked
        else:
            self._view_valid[layer_idx] = None

    def _write(self, state: LayerState, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store ``Tn`` new tokens: one token into a free slot (the one the last eviction
        freed, or any empty one), several at the end of the used slots, in order."""
        tn = key.shape[2]
        b, h = state.pbuf.shape[:2]
        if key.dtype != state.kbuf.dtype:
            key = key.to(state.kbuf.dtype)
        if value.dtype != state.vbuf.dtype:
            value = value.to(state.vbuf.dtype)
        state.n_new = tn
        if tn == 1 and state.owned and (state.has_holes or state.hi < state.capacity):
            slot: torch.Tensor | None = None
            ring = state.free_slots is not None
            grows = False
            if ring:
                slot = state.free_slots
                grows = False
            elif not state.has_holes:
                slot, grows = None, True
            else:
                free = state.positions < 0
                has = free.any(-1)
                grows = not bool(has.all())
                if grows and state.hi >= state.capacity:
                    self._grow(state, 1)
                first = free.to(torch.int8).argmax(-1)
                slot = torch.where(has, first, state.hi) if grows else first
            state.free_slots = None
            state.ring_full = ring
            if slot is None:  # no empty slot anywhere: the next one in line
                end = state.hi
                state.kbuf[:, :, end : end + 1] = key
                state.vbuf[:, :, end : end + 1] = value
                state.pbuf[:, :, end] = state.seen
                state.hi += 1
                state.new_index = None
                return
            idx = slot.unsqueeze(-1)  # (B, H, 1)
            state.kbuf.scatter_(2, idx.unsqueeze(-1).expand(b, h, 1, state.kbuf.shape[-1]), key)
            state.vbuf.scatter_(2, idx.unsqueeze(-1).expand(b, h, 1, state.vbuf.shape[-1]), value)
            state.pbuf.scatter_(2, idx, state.seen)
            if grows:
                state.hi += 1
            state.new_index = idx
            state.ordered = False
            # the ring case filled the slot every row freed; other empty slots stay as they were
            state.has_holes = state.other_holes if ring else bool((state.positions < 0).any())
            return
        if not state.owned or state.hi + tn > state.capacity:
            self._grow(state, tn)
        end = state.hi
        state.kbuf[:, :, end : end + tn] = key
        state.vbuf[:, :, end : end + tn] = value
        state.pbuf[:, :, end : end + tn] = torch.arange(state.seen, state.seen + tn, device=state.pbuf.device)
        state.hi += tn
        state.new_index = None
        state.free_slots = None
        state.ring_full = False

    def _shift_positions(self, state: LayerState, tn: int) -> None:
        """Re-rotate the kept (old) keys to contiguous positions before the ``tn`` new ones."""
        assert self.rope is not None
        slots = state.new_slots()
        rot = state.extra[ROT]
        rot.scatter_(2, slots, state.pbuf.gather(2, slots))  # new keys: rotated at their column
        hi = state.hi
        pos = state.pbuf[:, :, :hi]
        old = pos >= 0
        old.scatter_(2, slots, False)
        if not bool(old.any()):
            return
        # rank of each old slot among its row's old slots, by position
        order = pos.masked_fill(~old, _INT_MAX).argsort(dim=-1)
        rank = torch.empty_like(order)
        rank.scatter_(-1, order, torch.arange(hi, device=order.device).expand_as(order))
        first_new = state.seen - tn
        target = first_new - old.sum(-1, keepdim=True) + rank
        delta = (target - rot[:, :, :hi]).masked_fill(~old, 0)
        moved = delta != 0
        if not bool(moved.any()):
            return
        keys = state.kbuf[:, :, :hi]
        keys[moved] = rotate_keys(keys[moved], delta[moved], *self.rope)
        rot[:, :, :hi] = torch.where(moved, target, rot[:, :, :hi])

    def _grow(self, state: LayerState, tn: int) -> None:
        """New buffers (owned, contiguous) with room for ``tn`` more tokens after ``hi``."""
        need = state.hi + tn
        limit = None if state.frozen else (state.limit if state.limit is not None else state.budget)
        if limit is None:
            cap = need + GROW_STEP
        else:
            cap = max(need, min(need + GROW_STEP, limit + 1))
        state.kbuf = _resized(state.kbuf, state.hi, cap, 0)
        state.vbuf = _resized(state.vbuf, state.hi, cap, 0)
        state.pbuf = _resized(state.pbuf, state.hi, cap, -1)
        state.extra = {k: _resized(v, state.hi, cap, 0) for k, v in state.extra.items()}
        state.owned = True
        state.ring_full = False

    def _budgets_fixed(self) -> bool:
        """Whether head budgets stay the same once resolved (they do unless a subclass
        overrides :meth:`head_budgets` without declaring :attr:`fixed_budgets`)."""
        if self.fixed_budgets is not None:
            return bool(self.fixed_budgets)
        return type(self).head_budgets is CachePolicy.head_budgets

    def _victims(self, state: LayerState, valid: torch.Tensor | None) -> torch.Tensor:
        """``(B, Hkv)`` the lowest-priority evictable slot of every row (``valid=None``: all
        slots hold a real key); forced slots are never chosen while another is evictable."""
        pos = state.positions
        blocked = self.forced(state)
        if valid is not None:
            blocked = ~valid if blocked is None else (blocked | ~valid)
        if type(self).scores is CachePolicy.scores:
            # recency: positions are unique, the oldest evictable slot goes
            return (pos if blocked is None else pos.masked_fill(blocked, _INT_MAX)).argmin(dim=-1)
        score = self.scores(state)
        top, _ = _extremes(score.dtype)
        key = score if blocked is None else score.masked_fill(blocked, top)
        low = key.amin(dim=-1, keepdim=True)
        # ties: evict the latest token (ties keep the earlier one)
        tie = key != low
        if blocked is not None:
            tie = tie | blocked
        return pos.masked_fill(tie, -1).argmax(dim=-1)

    def _evict_one(self, state: LayerState, rows: torch.Tensor, valid: torch.Tensor) -> bool:
        """Evict the lowest-priority slot of each row in ``rows`` ``(B, Hkv)`` in place (one
        reduction, no sort); False (nothing done) when such a row has no evictable slot."""
        forced = self.forced(state)
        evictable = valid if forced is None else valid & ~forced
        if not bool((evictable.any(-1) | ~rows).all()):
            return False
        victim = self._victims(state, valid)
        if bool(rows.all()):
            # every row freed one slot: the next token of each row goes there
            state.free_slots, state.other_holes = victim, state.has_holes
            state.pbuf = state.pbuf.scatter(2, victim.unsqueeze(-1), -1)
        else:
            slots = torch.arange(state.capacity, device=victim.device).view(1, 1, -1)
            hit = (slots == victim.unsqueeze(-1)) & rows.unsqueeze(-1)
            state.pbuf = state.pbuf.masked_fill(hit, -1)
            state.free_slots = None
        state.has_holes = True
        return True

    def _absorb_padding(self, layer_idx: int, state: LayerState, mask: torch.Tensor) -> None:
        """Mark the new tokens no query of this step may attend to as padding (empty slots)."""
        tn = state.n_new
        if mask.dim() != 4 or mask.shape[-1] < tn or mask.shape[-2] != tn:
            return
        block = mask[..., -tn:]
        allowed = block if block.dtype == torch.bool else block > torch.finfo(block.dtype).min / 2
        real = allowed.any(dim=2).any(dim=1)  # (B|1, Tn)
        if not state.resolved:
            b = state.pbuf.shape[0]
            full = real.expand(b, tn)
            state.prompt_tokens = full.sum(-1)
            state.start = torch.where(full.any(-1), full.to(torch.int8).argmax(-1), 0).to(torch.int64)
        if bool(real.all()):
            return
        b, h = state.pbuf.shape[:2]
        slots = state.new_slots()
        pad = ~real.expand(b, tn).unsqueeze(1).expand(b, h, tn)
        current = state.pbuf.gather(2, slots)
        state.pbuf = state.pbuf.scatter(2, slots, current.masked_fill(pad, -1))
        state.has_holes = True
        state.free_slots = None
        state.ring_full = False
        self._set_view(layer_idx, state)

    def _resolve(self, state: LayerState) -> None:
        b = state.pbuf.shape[0]
        device = state.pbuf.device
        if state.prompt_tokens is None:
            state.prompt_tokens = torch.full((b,), state.seen, dtype=torch.int64, device=device)
            state.start = torch.zeros(b, dtype=torch.int64, device=device)
        lengths = [max(1, int(n)) for n in state.prompt_tokens.tolist()]
        per: dict[int, int | None] = {n: self.resolve_budget(n) for n in sorted(set(lengths))}
        if any(v is None for v in per.values()):
            state.budget, state.row_budget = None, None
        else:
            budgets = [int(per[n]) for n in lengths]  # type: ignore[arg-type]
            state.row_budget = torch.tensor(budgets, dtype=torch.int64, device=device)
            state.budget = max(budgets)
        state.resolved = True
        self.on_resolve(state)


def rotate_keys(keys: torch.Tensor, delta: torch.Tensor, theta: float, rotary_dim: int) -> torch.Tensor:
    """Rotate RoPE'd ``keys`` ``(N, D)`` by ``delta`` ``(N,)`` more positions (negative: back),
    HF ``rotate_half`` layout over the first ``rotary_dim`` features; math in float32 at
    least, returned in the keys' dtype. Rotations compose: ``R(a) R(b) = R(a + b)``."""
    d = keys.shape[-1]
    if rotary_dim > d or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be even and <= the head dim {d}, got {rotary_dim}")
    work = torch.promote_types(keys.dtype, torch.float32)
    half = rotary_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, device=keys.device, dtype=torch.float64) / rotary_dim))
    angle = (delta.to(torch.float64).unsqueeze(-1) * inv_freq).to(work)  # (N, half)
    cos, sin = angle.cos(), angle.sin()
    k = keys.to(work)
    x1, x2 = k[:, :half], k[:, half:rotary_dim]
    out = k.clone()
    out[:, :half] = x1 * cos - x2 * sin
    out[:, half:rotary_dim] = x2 * cos + x1 * sin
    return out.to(keys.dtype)


def _extremes(dtype: torch.dtype) -> tuple[Any, Any]:
    if dtype.is_floating_point:
        return float("inf"), float("-inf")
    info = torch.iinfo(dtype)
    return info.max, info.min


def _resized(t: torch.Tensor, used: int, capacity: int, fill: float) -> torch.Tensor:
    """A new ``(B, Hkv, capacity, ...)`` tensor holding ``t[:, :, :used]`` then ``fill``."""
    shape = (*t.shape[:2], capacity, *t.shape[3:])
    out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    out[:, :, :used] = t[:, :, :used]
    return out


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
    b, h, _, d = state.kbuf.shape
    if query.dim() != 4 or query.shape[0] != b or query.shape[-1] != d or query.shape[1] % h != 0:
        raise ValueError(
            f"query must be (B, Hq, Tq, D) with B={b}, D={d} and Hq a multiple of Hkv={h}, got {tuple(query.shape)}"
        )


def sink_slots(state: LayerState, n_sink: int) -> torch.Tensor:
    """``(B, Hkv, S)`` bool: the slots holding each row's ``n_sink`` first real tokens (the
    attention sinks of StreamingLLM-style policies), counted from ``state.start`` under left
    padding. A policy's :meth:`CachePolicy.forced` returns this to keep them."""
    pos = state.positions
    start = state.start.view(-1, 1, 1) if state.start is not None else 0
    return (pos >= start) & (pos < start + n_sink)


def oldest_after_sinks(state: LayerState, n_sink: int) -> torch.Tensor | None:
    """``(B, Hkv)`` slot of each row's ``(n_sink + 1)``-th oldest key, the eviction victim of a
    sink + recent-window policy in its steady state (every row full of real keys, its sinks the
    ``n_sink`` oldest): one small ``topk``, no mask. ``None`` when there are no sinks or no
    key past them (the caller's generic path decides)."""
    if n_sink == 0 or state.hi <= n_sink:
        return None
    return state.positions.topk(n_sink + 1, dim=-1, largest=False).indices[..., -1]


def compact(state: LayerState, keep: torch.Tensor, *, spare: int = 0) -> None:
    """Rebuild ``state``'s buffers from the ``keep`` slots of every row, in position order.

    What :meth:`CachePolicy.evict` does when many tokens go at once; a policy that overrides
    ``evict`` calls it with its own ``keep``. Rows keeping fewer slots than the longest row get
    empty slots (position ``-1``) after their real ones.

    :param state: the layer's storage; its buffers and every ``extra`` buffer are replaced.
    :param keep: ``(B, Hkv, hi)`` bool, True for the slots to keep.
    :param spare: empty slots to allocate after the longest row (room for the next tokens).
    """
    counts = keep.sum(-1)
    width = int(counts.max()) if counts.numel() else 0
    cap = width + int(spare)
    key = state.positions.masked_fill(~keep, _INT_MAX)
    order = key.argsort(dim=-1)[..., :width]
    slot_ok = torch.arange(width, device=keep.device).view(1, 1, -1) < counts.unsqueeze(-1)

    def take(t: torch.Tensor, fill: float) -> torch.Tensor:
        idx = order.view(*order.shape, *([1] * (t.dim() - 3))).expand(*order.shape, *t.shape[3:])
        got = t.gather(2, idx)
        if cap > width:
            got = torch.cat([got, got.new_full((*got.shape[:2], cap - width, *got.shape[3:]), fill)], dim=2)
        return got

    pos = take(state.positions, -1)
    pos[:, :, :width] = pos[:, :, :width].masked_fill(~slot_ok, -1)
    state.kbuf = take(state.keys, 0)
    state.vbuf = take(state.values, 0)
    state.pbuf = pos
    state.extra = {k: take(v[:, :, : state.hi], 0) for k, v in state.extra.items()}
    state.hi = width
    state.owned = True
    state.ordered = True
    state.has_holes = not bool(slot_ok.all())
    state.free_slots = None
    state.ring_full = False
    state.new_index = None


def step_probabilities(
    state: LayerState,
    query: torch.Tensor,
    scaling: float,
    *,
    dtype: torch.dtype,
    chunk: int,
    first: int = 0,
    want_output: bool = False,
) -> Iterator[tuple[int, int, int, torch.Tensor, torch.Tensor | None]]:
    """Softmax attention of this step's queries over the slots in use, for scoring policies.

    Uses the storage layout: one new token may sit in any slot and sees every stored key;
    several new tokens are the last slots, in order, so a chunk of queries sees the slots up to
    its last query and a causal triangle on its own columns. Empty slots are never attended; a
    query that sees nothing (left padding) gets zeros.

    :param state: the layer, after :meth:`CachePolicy.append` of this step's ``Tq`` tokens.
    :param query: ``(B, Hq, Tq, D)``.
    :param dtype: the math's dtype.
    :param chunk: queries per chunk (bounds the probabilities' memory).
    :param first: skip queries ``0..first-1``.
    :param want_output: also compute each chunk's attention output.
    :returns: an iterator of ``(start, stop, kend, probs, out)``: ``probs`` ``(B, Hkv, G,
        stop - start, kend)`` for queries ``start:stop`` over slots ``0:kend``, ``out``
        ``(B, Hkv, G, stop - start, Dv)`` in ``dtype`` or ``None``.
    """
    b, hq, tq, d = query.shape
    hkv = state.kbuf.shape[1]
    g = hq // hkv
    hi = state.hi
    keys = state.keys.to(dtype)
    values = state.values.to(dtype) if want_output else None
    valid = state.valid if state.has_holes else None
    if tq == 1:  # a decode step: one query per head sees every stored key (no causal mask)
        logits = torch.matmul(query.to(dtype).reshape(b, hkv, g, d), keys.transpose(-1, -2)) * scaling
        if valid is not None:
            logits = logits.masked_fill(~valid.unsqueeze(2), float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        else:
            probs = torch.softmax(logits, dim=-1)
        out = None if values is None else torch.matmul(probs, values).unsqueeze(3)
        yield 0, 1, hi, probs.unsqueeze(3), out
        return
    vmask = valid.view(b, hkv, 1, 1, hi) if valid is not None else None
    for start in range(first, tq, chunk):
        stop = min(tq, start + chunk)
        n = stop - start
        kend = hi - tq + stop  # the slots these queries may see
        q = query[:, :, start:stop].to(dtype).reshape(b, hkv, g, n, d)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q, keys[:, :, :kend]) * scaling
        if n > 1:
            tri = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
            logits[..., kend - n :] = logits[..., kend - n :].masked_fill(~tri, float("-inf"))
        if vmask is not None:
            logits = logits.masked_fill(~vmask[..., :kend], float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        else:
            probs = torch.softmax(logits, dim=-1)
        out = None if values is None else torch.einsum("bhgqk,bhkd->bhgqd", probs, values[:, :, :kend])
        yield start, stop, kend, probs, out


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
    :param key_positions: ``(B, Hkv, Tk)``, -1 for empty slots (never attended).
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
    kpos = key_positions.view(b, hkv, 1, 1, tk)
    # a decode step sees every stored key: skip the causal mask when no key is after a query
    causal = tq > 0 and bool((key_positions > query_positions.min()).any())
    all_valid = bool((key_positions >= 0).all())
    for start in range(0, tq, chunk):
        stop = min(tq, start + chunk)
        q = query[:, :, start:stop].to(dtype).reshape(b, hkv, g, stop - start, d)
        logits = torch.einsum("bhgqd,bhkd->bhgqk", q, k) * scaling
        allowed: torch.Tensor | None = None
        if causal:
            allowed = (kpos >= 0) & (kpos <= query_positions[start:stop].view(1, 1, 1, -1, 1))
        elif not all_valid:
            allowed = kpos >= 0
        if allowed_mask is not None:
            part = allowed_mask[:, :, :, start:stop]
            allowed = part if allowed is None else allowed & part
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
        else:
            probs = torch.softmax(logits, dim=-1)
        yield start, probs
