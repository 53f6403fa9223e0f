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
  builder gives kept keys the indices ``seen-kept .. seen-1`` (all before every new query, so
  all visible) and new keys their true positions (so several new tokens at once stay causal
  among themselves). A 2-D padding mask is read at those shifted indices, so left padding is
  exact only while nothing has been evicted; use equal-length prompts with eviction.
* Keys that are padding slots of a ragged policy are not in the mask: the attention function
  must AND :meth:`AttnkitCache.key_padding_mask` in, and call :meth:`AttnkitCache.observe` when
  :attr:`AttnkitCache.needs_queries` (see :func:`attnkit.cache.attention.reference_cache_attention`).
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
        state = self.policy.layers.get(self.layer_idx)
        if state is None:
            return
        index = beam_idx.to(state.keys.device)
        state.keys = state.keys.index_select(0, index)
        state.values = state.values.index_select(0, index)
        state.positions = state.positions.index_select(0, index)
        state.extra = {k: v.index_select(0, index) for k, v in state.extra.items()}

    def batch_repeat_interleave(self, repeats: int) -> None:
        state = self.policy.layers.get(self.layer_idx)
        if state is not None:
            index = torch.arange(state.keys.shape[0], device=state.keys.device).repeat_interleave(repeats)
            self.reorder_cache(index)  # type: ignore[arg-type]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        state = self.policy.layers.get(self.layer_idx)
        if state is not None:
            self.reorder_cache(torch.as_tensor(indices, device=state.keys.device).view(-1))  # type: ignore[arg-type]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError(
                "an AttnkitCache cannot be cropped (evicted tokens cannot be restored); tokens_to_remove must be 0"
            )


class AttnkitCache(Cache):
    """A transformers cache whose every layer stores through one :class:`CachePolicy`.

    :param policy: the policy (its per-layer state is this cache's storage).
    :param config: the model config; gives the number of layers up front (otherwise layers
        are added as ``update`` first sees them).
    :param num_layers: the number of layers, instead of ``config``.
    """

    def __init__(self, policy: CachePolicy, config: Any = None, *, num_layers: int | None = None) -> None:
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"policy must be an attnkit.cache.CachePolicy, got {type(policy).__name__}")
        if num_layers is None and config is not None:
            num_layers = int(config.get_text_config(decoder=True).num_hidden_layers)
        if num_layers is not None and num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
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

    def observe(self, layer_idx: int, query: torch.Tensor, scaling: float, mask: torch.Tensor | None = None) -> None:
        """Give the policy this layer's ``(B, Hq, Tq, D)`` queries (call after ``update``,
        before attention, when :attr:`needs_queries`)."""
        self.policy.observe(layer_idx, query, scaling, mask)

    def key_padding_mask(self, layer_idx: int) -> torch.Tensor | None:
        """``(B, Hkv, Tk)`` bool over the keys the last ``update`` returned, True = real key;
        ``None`` when all are real."""
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
