"""Implementations behind the built-in ``dense`` spec (imported on first use)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

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
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)
    if allowed is not None:
        # Rows with no allowed key: SDPA's math path gives NaN there; the contract is zeros.
        any_key = allowed.any(dim=-1, keepdim=True)
        out = torch.where(any_key, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


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
