"""Implementations behind the built-in ``dense`` spec (imported on first use)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from attnkit import tensors
from attnkit.reference import attention, causal_mask


def reference(q, k, v, *, params: Any, is_causal: bool, scale: float, return_lse: bool, mask=None):  # type: ignore[no-untyped-def]
    return attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale, return_lse=return_lse)


def sdpa(q, k, v, *, params: Any, is_causal: bool, scale: float, return_lse: bool, mask=None):  # type: ignore[no-untyped-def]
    tq, tk = q.shape[-2], k.shape[-2]
    allowed = mask
    if is_causal:
        # SDPA's own is_causal is top-left aligned when Tq != Tk; attnkit is bottom-right.
        c = causal_mask(tq, tk, device=q.device)
        allowed = c if allowed is None else allowed & c
    enable_gqa = q.shape[1] != k.shape[1]
    if tensors.surely_in_range(q, k, v, scale):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)
    else:
        out = _guarded_sdpa(q, k, v, allowed, scale, enable_gqa)
    if allowed is not None:
        # Rows with no allowed key: SDPA's math path gives NaN there; the contract is zeros.
        any_key = allowed.any(dim=-1, keepdim=True)
        out = torch.where(any_key, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def _guarded_sdpa(q, k, v, allowed, scale: float, enable_gqa: bool):  # type: ignore[no-untyped-def]
    """SDPA under attnkit's non-finite rule (:mod:`attnkit.reference.dense`), branch-free.

    SDPA spreads a NaN key or value to rows that may not attend to it (NaN + -inf in its
    additive mask, 0 * NaN in P @ V) and zeroes some NaN rows, and returns zeros for a row
    whose logits all overflow to -inf: it gets zeroed non-finite rows, the query rows that may
    attend to one are set to NaN after, and so are the rows that could overflow (by
    :func:`attnkit.tensors.logit_bound`) and came out as zeros.
    """
    bad_q = tensors.non_finite_rows(q)
    bad_kv = tensors.non_finite_rows(k) | tensors.non_finite_rows(v)
    q = q.masked_fill(bad_q.unsqueeze(-1), 0.0)
    k = k.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    v = v.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)
    bound, limit = tensors.logit_bound(q, k, scale)
    collapsed = ~(bound < limit) & (out == 0).all(dim=-1)
    poisoned = _poisoned(bad_q, bad_kv, allowed, q.shape[1]) | collapsed
    return out.masked_fill(poisoned.unsqueeze(-1), float("nan"))


def _poisoned(bad_q: torch.Tensor, bad_kv: torch.Tensor, allowed: torch.Tensor | None, hq: int) -> torch.Tensor:
    """``(B, Hq, Tq)``: query rows whose own row or an allowed key/value row is non-finite.

    Rows with no allowed key are left to the caller (zeros). ``bad_kv (B, Hkv, Tk)`` is
    repeated over the query heads of its group here, a ``(B, Hq, Tk)`` bool, not k/v.
    """
    g = hq // bad_kv.shape[1]
    bad_k = bad_kv.repeat_interleave(g, dim=1) if g > 1 else bad_kv
    if allowed is None:
        return bad_q | bad_k.any(dim=-1, keepdim=True)
    a = allowed if allowed.dim() == 4 else allowed.reshape((1,) * (4 - allowed.dim()) + tuple(allowed.shape))
    return (bad_q & a.any(dim=-1)) | (a & bad_k.unsqueeze(-2)).any(dim=-1)


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    return [{}]


def brute_force_mask(params: Any, q_shape: tuple[int, ...], kv_shape: tuple[int, ...], is_causal: bool) -> torch.Tensor:
    tq, tk = q_shape[2], kv_shape[2]
    allowed = torch.ones(tq, tk, dtype=torch.bool)
    if is_causal:
        for i in range(tq):
            for j in range(tk):
                allowed[i, j] = j <= i + tk - tq
    return allowed
