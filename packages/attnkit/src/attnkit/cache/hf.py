"""A transformers ``Cache`` that stores keys and values through a :class:`CachePolicy`.

Usable wherever transformers 5.x takes a cache::

    cache = AttnkitCache(policy, config=model.config)
    model.generate(input_ids, past_key_values=cache, max_new_tokens=32)
    model(input_ids, past_key_values=cache, use_cache=True)

How it keeps positions and masks right after eviction (transformers 5.24):

* ``get_seq_length()`` returns the tokens *seen*, not kept: ``generate()`` slices the new
  ``input_ids`` and ``position_ids`` by it and ``LlamaModel`` builds ``position_ids`` from it,
  so RoPE positions of new tokens stay true.
* ``get_mask_sizes(q_len, layer)`` returns ``(kept + q_len, seen - kept)``: the causal mask
  builder gives the new keys their true positions, so the mask's last ``q_len`` columns are
  exact (causal among several new tokens, and their padding). Its first columns stand for the
  kept keys at made-up indices, and transformers builds one mask for all layers from layer 0's
  sizes while ragged layers hold more slots: cache-aware attention therefore reads only the
  last ``q_len`` columns and masks the kept keys with :meth:`AttnkitCache.key_padding_mask`
  (:func:`attnkit.cache.attention.cache_attention_mask`). Before the kept columns are dropped,
  :meth:`AttnkitCache.observe` learns from the new columns which tokens are padding, so a
  left-padded batch keeps what each sequence would keep alone.
* Slots are reused in place, so the returned keys are not in token order; several new tokens
  are always the last ``q_len`` slots, in order (bottom-right causal alignment holds).
* The attention function must call :meth:`AttnkitCache.observe` after ``update`` (every policy
  evicts there) and AND the cache's mask in (see
  :func:`attnkit.cache.attention.reference_cache_attention`).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from attnkit.cache.policy import CachePolicy

__all__ = ["AttnkitCache", "active_cache"]

_active = threading.local()


def active_cache(key: torch.Tensor | None = None) -> tuple[AttnkitCache, int] | None:
    """The :class:`AttnkitCache` whose ``update`` ran last in this thread and its layer index.

    transformers' attention modules call ``cache.update`` and then the attention function
    without passing it the cache; this is how the attention function finds it. With ``key``,
    only a cache whose last ``update`` returned that very tensor is returned, so a model run
    with another cache (or none) never picks up a stale one.
    """
    value = getattr(_active, "value", None)
    if value is None:
        return None
    cache_ref, layer_idx, key_ref = value
    cache = cache_ref()
    if cache is None or (key is not None and key_ref() is not key):
        return None
    return cache, layer_idx


class _PolicyLayer(CacheLayerMixin):
    """One layer's view of the policy, for code that walks ``cache.layers``."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, policy: CachePolicy, layer_idx: int) -> None:
        super().__init__()
        self.policy = policy
        self.layer_idx = layer_idx

    @property
    def keys(self) -> torch.Tensor | None:
        state = self.policy.layers.get(self.layer_idx)
        return None if state is None else state.keys

    @keys.setter
    def keys(self, value: Any) -> None:  # the base __init__ assigns None
        pass

    @property
    def values(self) -> torch.Tensor | None:
        state = self.policy.layers.get(self.layer_idx)
        return None if state is None else state.values

    @values.setter
    def values(self, value: Any) -> None:
        pass

    @property
    def is_initialized(self) -> bool:
        return self.layer_idx in self.policy.layers

    @is_initialized.setter
    def is_initialized(self, value: bool) -> None:
        pass

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.device = key_states.device
        return self.policy.append(self.layer_idx, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = self.policy.stored_length(self.layer_idx)
        return kept + query_length, self.policy.seen(self.layer_idx) - kept

    def get_seq_length(self) -> int:
        return self.policy.seen(self.layer_idx)

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.policy.layers.pop(self.layer_idx, None)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.policy.reorder_layer(self.layer_idx, beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        state = self.policy.layers.get(self.layer_idx)
        if state is not None:
            index = torch.arange(state.kbuf.shape[0], device=state.kbuf.device).repeat_interleave(repeats)
            self.reorder_cache(index)  # type: ignore[arg-type]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        state = self.policy.layers.get(self.layer_idx)
        if state is not None:
            self.reorder_cache(torch.as_tensor(indices, device=state.kbuf.device).view(-1))  # type: ignore[arg-type]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError(
                "an AttnkitCache cannot be cropped (evicted tokens cannot be restored); tokens_to_remove must be 0"
            )


def _rope_of(text: Any, required: bool) -> tuple[float, int] | None:
    """``(rope_theta, rotary_dim)`` of a config's plain RoPE; ``None`` when it has none (an
    error instead when the policy re-rotates, which needs it)."""
    from attnkit.hf.modelconfig import rope_theta

    try:
        theta = rope_theta(text)
    except ValueError as exc:
        if required:
            raise ValueError(f"rerotate=True: {exc}") from None
        return None
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    factor = float(getattr(text, "partial_rotary_factor", 1.0) or 1.0)
    return theta, int(head_dim * factor)


class AttnkitCache(Cache):
    """A transformers cache whose every layer stores through one :class:`CachePolicy`.

    :param policy: the policy (its per-layer state is this cache's storage).
    :param config: the model config; gives the number of layers up front (otherwise layers
        are added as ``update`` first sees them) and tells the policy the model's geometry
        (:meth:`CachePolicy.bind_model`).
    :param num_layers: the number of layers, instead of ``config``.
    """

    def __init__(self, policy: CachePolicy, config: Any = None, *, num_layers: int | None = None) -> None:
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"policy must be an attnkit.cache.CachePolicy, got {type(policy).__name__}")
        heads: dict[str, int] = {}
        rope: tuple[float, int] | None = None
        if config is not None:
            text = config.get_text_config(decoder=True)
            if num_layers is None:
                num_layers = int(text.num_hidden_layers)
            for name in ("num_attention_heads", "num_key_value_heads"):
                if getattr(text, name, None) is not None:
                    heads[name] = int(getattr(text, name))
            rope = _rope_of(text, policy.rerotate)
        if num_layers is not None and num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        policy.bind_model(num_layers=num_layers, rope=rope, **heads)
        # the attention function's observe() brings the padding: evict only then
        policy.defer_eviction = True
        self.policy = policy
        super().__init__(layers=[_PolicyLayer(policy, i) for i in range(num_layers or 0)])

    def __repr__(self) -> str:
        return f"AttnkitCache({self.policy!r}, layers={len(self.layers)})"

    def _grow(self, layer_idx: int) -> None:
        while len(self.layers) <= layer_idx:
            self.layers.append(_PolicyLayer(self.policy, len(self.layers)))

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``(B, Hkv, Tn, D)`` keys/values and return the ``(B, Hkv, Tk, D)`` ones
        attention must use (kept + new, not expanded to query heads)."""
        self._grow(layer_idx)
        out = self.policy.append(layer_idx, key_states, value_states)
        _active.value = (weakref.ref(self), layer_idx, weakref.ref(out[0]))
        return out

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens seen (not kept): positions of new tokens start here."""
        return self.policy.seen(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        kept = self.policy.stored_length(layer_idx)
        return kept + query_length, self.policy.seen(layer_idx) - kept

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def needs_queries(self) -> bool:
        return self.policy.needs_queries

    def observe(
        self,
        layer_idx: int,
        query: torch.Tensor,
        scaling: float,
        mask: torch.Tensor | None = None,
        *,
        attend: bool = False,
    ) -> torch.Tensor | None:
        """Give the policy this layer's ``(B, Hq, Tq, D)`` queries and the model's mask (call
        after ``update``, before attention, for every policy: padding is read from the mask's
        last ``Tq`` columns and eviction happens here). With ``attend=True`` (the caller runs
        dense attention next) a scoring policy may return the ``(B, Hq, Tq, Dv)`` attention
        output it computed anyway (:meth:`CachePolicy.observe`)."""
        return self.policy.observe(layer_idx, query, scaling, mask, attend=attend)

    def key_padding_mask(self, layer_idx: int) -> torch.Tensor | None:
        """``(B, Hkv, Tk)`` bool over the keys the last ``update`` returned, True = real key
        (padding and empty slots are False); ``None`` when all are real."""
        return self.policy.key_padding_mask(layer_idx)

    def key_positions(self, layer_idx: int) -> torch.Tensor:
        return self.policy.key_positions(layer_idx)

    def nbytes(self) -> int:
        """Bytes of keys and values held."""
        return self.policy.nbytes()

    def reset(self) -> None:
        """Forget everything; the next forward is a new prefill."""
        self.policy.reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.policy.reorder(beam_idx)

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return len(self.policy.layers) > 0
