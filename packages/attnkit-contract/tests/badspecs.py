"""Deliberately wrong attention kernels, each breaking one rule, wrapped as specs.

Every spec here declares the dense brute-force mask, so the contract's oracle is dense
attention and the wrong kernel is the backend ``bad``; ``reference`` is the correct one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from attnkit import AttentionSpec, Backend
from attnkit.reference import attention, causal_mask

MASK = "attnkit.default_plugins.dense_impl:brute_force_mask"


def good(q, k, v, *, params: Any, is_causal: bool, scale: float, return_lse: bool, mask=None):  # type: ignore[no-untyped-def]
    return attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale, return_lse=return_lse)


def peeks_at_future(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    if not is_causal:
        return good(q, k, v, params=params, is_causal=False, scale=scale, return_lse=return_lse)
    t = q.shape[-2]
    sees_next = causal_mask(t, t + 1, device=q.device)[:, :-1]  # query i sees keys <= i + 1
    return attention(q, k, v, mask=sees_next, scale=scale, return_lse=return_lse)


def wrong_scale(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    return good(q, k, v, params=params, is_causal=is_causal, scale=scale * 1.1, return_lse=return_lse, mask=mask)


def nan_on_masked_rows(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    scores = torch.matmul(q, k.repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2)) * scale
    allowed = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    if mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(scores.to(torch.float64 if q.dtype == torch.float64 else torch.float32), -1)
    out = torch.softmax(scores, -1) @ v.repeat_interleave(q.shape[1] // k.shape[1], 1)  # NaN where all -inf
    return (out, lse) if return_lse else out


def ignores_gqa(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    # Query head h reads kv head h % Hkv (interleaved) instead of h // G (grouped).
    g = q.shape[1] // k.shape[1]
    return good(
        q,
        k.repeat(1, g, 1, 1),
        v.repeat(1, g, 1, 1),
        params=params,
        is_causal=is_causal,
        scale=scale,
        return_lse=return_lse,
        mask=mask,
    )


_CALLS = itertools.count()


def noisy(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    out = good(q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)
    # One or two ulps of drift, different each call (an unordered atomic sum does this).
    o = out[0] if return_lse else out
    jitter = 1 + torch.finfo(o.dtype).eps * (1 + next(_CALLS) % 2)
    return (out[0] * jitter, out[1]) if return_lse else out * jitter


def overflows(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    # softmax without subtracting the row maximum: exp(1e4) is inf.
    scores = (
        torch.matmul(q.double(), k.double().repeat_interleave(q.shape[1] // k.shape[1], 1).transpose(-1, -2)) * scale
    )
    if is_causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], device=q.device), float("-inf"))
    e = torch.exp(scores)
    out = ((e / e.sum(-1, keepdim=True)) @ v.double().repeat_interleave(q.shape[1] // k.shape[1], 1)).to(q.dtype)
    lse = torch.log(e.sum(-1)).to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    return (out, lse) if return_lse else out


def nan_to_finite(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    # Reads NaN and infinities as 0 / the largest float: poisoned rows come out finite.
    q, k, v = (torch.nan_to_num(x, nan=0.0) for x in (q, k, v))
    return good(q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)


def spreads_nan(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    # Right, except that every value is multiplied by the probability of every query, 0 where
    # it is masked: 0 * NaN = NaN reaches rows that may not attend to a NaN value.
    res = good(q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)
    g = q.shape[1] // k.shape[1]
    zero_probs = torch.zeros((*q.shape[:-1], k.shape[-2]), dtype=v.dtype, device=v.device)
    leak = torch.matmul(zero_probs, v.repeat_interleave(g, 1))
    return (res[0] + leak, res[1]) if return_lse else res + leak


def log2_lse(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    res = good(q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)
    return (res[0], res[1] / torch.log(torch.tensor(2.0, dtype=res[1].dtype))) if return_lse else res


def mixes_batch(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    # Keys of batch entry 0 leak into every entry.
    k = k + 0.1 * k[:1]
    return good(q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)


def ignores_strides(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    # Reads the underlying storage as if every input were contiguous.
    q, k, v = (torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset()) for x in (q, k, v))
    return good(q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)


@dataclass(frozen=True)
class UncheckedParams:
    """A parameter set that forgets to validate its ``window``."""

    window: int = 4


def make_spec(
    kernel: Any, *, name: str = "bad", supports_mask: bool = True, params: type | None = None, **spec_kw: Any
) -> AttentionSpec:
    """A spec whose backend ``bad`` is ``kernel`` and whose ``reference`` is correct."""
    kw: dict[str, Any] = {"params": params} if params is not None else {}
    return AttentionSpec(
        name=name,
        backends=(
            Backend(name="bad", impl=kernel, supports_mask=supports_mask, traceable=True),
            Backend(name="reference", impl=good, supports_mask=True, traceable=True),
        ),
        mask=MASK,
        **kw,
        **spec_kw,
    )
