"""A dense GQA attention function for transformers' ``AttentionInterface`` that honours an
:class:`~attnkit.cache.AttnkitCache`: it lets query-observing policies see the queries and
applies the per-head key-padding mask of ragged policies.

The order it follows is the contract for any attention function used with an AttnkitCache
(the HF adapter reuses :func:`cache_attention_mask` for it):

1. the model has already called ``cache.update`` (it returned kept + new keys/values);
2. ``cache.observe(layer_idx, query, scaling, mask)`` for every policy: the policy learns from
   the mask which new tokens are padding, scores with the queries if it needs them, and evicts
   (its storage shrinks; the keys returned in 1. stay valid for this step);
3. "may attend" = :func:`cache_attention_mask`: the kept keys are all in the past, so only the
   cache's validity masks them; the new tokens (the last ``Tq`` keys) take the model's mask's
   last ``Tq`` columns (causal among themselves, their padding);
4. dense softmax attention over the ``Hkv`` heads, each shared by its query group.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "REFERENCE_NAME",
    "cache_attention_mask",
    "cache_key_mask",
    "reference_cache_attention",
    "register_reference_attention",
]

#: The name :func:`register_reference_attention` registers under.
REFERENCE_NAME = "attnkit_cache_reference"


def _cache_for(module: torch.nn.Module, key: torch.Tensor, kwargs: dict[str, Any]) -> tuple[Any, int] | None:
    from attnkit.cache.hf import AttnkitCache, active_cache

    layer_idx = getattr(module, "layer_idx", None)
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if isinstance(cache, AttnkitCache) and layer_idx is not None:
        return cache, int(layer_idx)
    found = active_cache(key)
    if found is not None and (layer_idx is None or found[1] == layer_idx):
        return found
    return None


def _as_bool(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def cache_attention_mask(
    cache: Any,
    layer_idx: int,
    q_len: int,
    key_len: int,
    attention_mask: torch.Tensor | None,
    *,
    q_heads: int | None = None,
    materialize: bool = False,
) -> torch.Tensor | None:
    """The "may attend" mask over the keys ``cache.update`` returned for this step, as bool
    ``(B|1, 1|Hq, Tq, Tk)``, or ``None`` when every key is real and plain bottom-right causal
    alignment (or, for one query, nothing) is all that is needed.

    Kept keys (all before every new query) are masked only by
    :meth:`~attnkit.cache.AttnkitCache.key_padding_mask`; the new tokens, the last ``Tq`` keys,
    take the last ``Tq`` columns of the model's ``attention_mask`` (the only columns that are
    right whatever was evicted, and the same on every layer). With one query the model's mask
    is not read at all (its padding was absorbed by ``observe``; the new key may sit in any
    slot).

    :param cache: an :class:`~attnkit.cache.AttnkitCache` (``observe`` already called).
    :param q_len: ``Tq``.
    :param key_len: ``Tk``, the keys returned by ``update``.
    :param attention_mask: the model's 4-D mask (bool or additive float) or ``None``.
    :param q_heads: ``Hq``; the key-padding mask (per KV head) is repeated to it.
    :param materialize: never return ``None`` (for attention that would otherwise apply a
        top-left aligned causal mask of its own).
    """
    valid = cache.key_padding_mask(layer_idx)  # (B, Hkv, Tk) or None
    allowed: torch.Tensor | None = None
    if q_len > 1 and (attention_mask is not None or materialize):
        if attention_mask is not None:
            new = _as_bool(attention_mask[..., -q_len:])
        else:
            new = torch.ones(q_len, q_len, dtype=torch.bool, device=_cache_device(cache, layer_idx)).tril()
            new = new.view(1, 1, q_len, q_len)
        if key_len > q_len:
            old = torch.ones(*new.shape[:-1], key_len - q_len, dtype=torch.bool, device=new.device)
            new = torch.cat([old, new], dim=-1)
        allowed = new
    if valid is not None:
        hkv = valid.shape[1]
        g = 1 if q_heads is None else q_heads // hkv
        km = valid.repeat_interleave(g, dim=1)[:, :, None, :] if g > 1 else valid[:, :, None, :]
        allowed = km if allowed is None else allowed & km
    if allowed is None and materialize:
        allowed = torch.ones(1, 1, q_len, key_len, dtype=torch.bool, device=_cache_device(cache, layer_idx))
    return allowed


def _cache_device(cache: Any, layer_idx: int) -> torch.device:
    return cache.key_positions(layer_idx).device


def cache_key_mask(
    cache: Any, layer_idx: int, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """The "may attend" mask as bool ``(B, Hkv, G, Tq, Tk)`` (G = query heads per KV head), or
    ``None`` when every key is allowed.

    With a ``cache`` (may be ``None``): :func:`cache_attention_mask` made causal (bottom-right).
    Without one: the model's 4-D mask (bool, or additive float; ``None`` means causal aligned
    to the last key).

    :param query: ``(B, Hq, Tq, D)``.
    :param key: ``(B, Hkv, Tk, D)``.
    """
    b, hq, tq, _ = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    allowed: torch.Tensor | None
    if cache is not None:
        allowed = cache_attention_mask(cache, layer_idx, tq, tk, attention_mask, q_heads=hq, materialize=tq > 1)
    elif attention_mask is not None:
        if attention_mask.dim() != 4:
            raise ValueError(
                f"attention_mask must be a 4-D mask (B, 1|Hq, Tq, Tk), got shape {tuple(attention_mask.shape)}; register a mask "
                "function in transformers' AttentionMaskInterface under the same name (register_reference_attention does)"
            )
        allowed = _as_bool(attention_mask[..., -tk:])
    elif tq > 1:
        # no mask: causal with the queries aligned to the last keys (the usual cached layout)
        qi = torch.arange(tq, device=query.device).view(-1, 1) + (tk - tq)
        allowed = (torch.arange(tk, device=query.device).view(1, -1) <= qi).view(1, 1, tq, tk)
    else:
        allowed = None
    if allowed is None:
        return None
    return allowed.expand(b, hq, tq, tk).reshape(b, hkv, hq // hkv, tq, tk)


def reference_cache_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Dense GQA attention for transformers models, cache-policy aware.

    :param query: ``(B, Hq, Tq, D)``.
    :param key: ``(B, Hkv, Tk, D)`` as returned by ``cache.update``.
    :param value: ``(B, Hkv, Tk, Dv)``.
    :param attention_mask: 4-D ``(B, 1|Hq, Tq, Tk)`` bool or additive mask, or ``None``.
    :returns: ``(out, None)`` with ``out`` ``(B, Tq, Hq, Dv)``, transformers' layout. Math in
        float32 (float64 inputs stay float64); rows with no allowed key give zeros.
    """
    if dropout:
        raise ValueError(f"reference_cache_attention has no dropout, got dropout={dropout}")
    b, hq, tq, d = query.shape
    hkv = key.shape[1]
    if hq % hkv != 0 or key.shape[0] != b or value.shape[:3] != key.shape[:3]:
        raise ValueError(
            f"query (B, Hq, Tq, D) = {tuple(query.shape)}, key {tuple(key.shape)} and value {tuple(value.shape)} do not fit: "
            "need equal B, Hq a multiple of Hkv and equal (B, Hkv, Tk) for key and value"
        )
    scale = d**-0.5 if scaling is None else float(scaling)
    found = _cache_for(module, key, kwargs)
    cache, layer_idx = found if found is not None else (None, -1)
    if attention_mask is not None and attention_mask.dim() != 4:
        raise ValueError(
            f"attention_mask must be a 4-D mask (B, 1|Hq, Tq, Tk), got shape {tuple(attention_mask.shape)}; register a mask "
            "function in transformers' AttentionMaskInterface under the same name (register_reference_attention does)"
        )
    if cache is not None:
        fused = cache.observe(layer_idx, query, scale, attention_mask, attend=True)
        if fused is not None:  # the policy computed this very attention while scoring
            return fused.transpose(1, 2).contiguous(), None
    g = hq // hkv
    work = torch.float64 if query.dtype == torch.float64 else torch.float32
    q = query.to(work).reshape(b, hkv, g, tq, d)
    logits = torch.einsum("bhgqd,bhkd->bhgqk", q, key.to(work)) * scale
    allowed = cache_key_mask(cache, layer_idx, query, key, attention_mask)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    out = torch.einsum("bhgqk,bhkd->bhgqd", probs, value.to(work))
    out = out.reshape(b, hq, tq, -1).transpose(1, 2).contiguous().to(query.dtype)
    return out, None


def _bool_causal_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    from transformers.masking_utils import sdpa_mask

    # always materialise: the attention function has no is_causal shortcut
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register_reference_attention(name: str = REFERENCE_NAME) -> str:
    """Register :func:`reference_cache_attention` with transformers' ``AttentionInterface`` and
    a materialised boolean causal mask with ``AttentionMaskInterface``, both as ``name``
    (without the mask registration transformers passes no causal mask at all). Returns the name,
    for ``model.set_attn_implementation(name)`` / ``config._attn_implementation``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, reference_cache_attention)
    AttentionMaskInterface.register(name, _bool_causal_mask)
    return name
