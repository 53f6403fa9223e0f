"""Globality pooling: one core token per complete group of ``g`` tokens, and the visibility
rule of the fused attention (the paper's Eq. for ``K' = [K^G ; K]``), in plain torch.

Every backend pools here (the pooling is ``O(L * D)``, the attention ``O(L * (L/g + s) * D)``)
and then attends over the ``m = L // g`` core tokens and the raw tokens with its own kernel.

Core token ``i`` of query head ``h`` (official code: ``fast_calculate_fusion_weights``):
``w_i = softmax_j(q_{(i+1)g-1} . k_j * scale)`` over the group's tokens ``j`` (the query of the
group's *last* token scores its keys; with GQA each query head has its own weights over the
shared keys), ``K^G_i = sum_j w_ij k_j`` and ``V^G_i = sum_j w_ij v_j``. ``pool="mean"``
uses ``w_ij = 1/g``.

Which keys query ``t`` (0-based) sees, with ``rs = max(t + 1 - s, 0)`` and ``n = rs // g``:
core tokens ``i < n`` and raw tokens ``n * g <= j <= t``. A core token becomes visible only
once its whole group plus ``s`` tokens have passed, so no query reads its future.

Everything here is index arithmetic and reshapes on the symbolic length, so it traces for
ONNX export. Shape legend: ``q (B, Hq, L, D)``, ``k/v (B, Hkv, L, D|Dv)``, ``m = L // g``.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall
from attnkit.reference.dense import work_dtype

__all__ = ["core_tokens", "fused_mask", "per_query_head", "visible"]


def core_tokens(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kc (B, Hq, m, D), vc (B, Hq, m, Dv))`` in the working dtype (float32, float64 for
    float64 input): the core token of every complete group, per query head."""
    g, pool = call.params.group_size, call.params.pool
    b, hkv, grp, n = call.batch, call.kv_heads, call.group, call.q_len
    d, dv = call.head_dim, call.value_dim
    m = n // g
    wd = work_dtype(call.dtype)
    # index_select, not a slice: a slice [: m * g] is contiguous only when g divides L, and
    # torch.export would fix that branch (the graph then refuses lengths g does not divide)
    grouped = torch.arange(m * g, device=call.device)
    kg = call.k.index_select(2, grouped).to(wd).reshape(b, hkv, 1, m, g, d)
    vg = call.v.index_select(2, grouped).to(wd).reshape(b, hkv, 1, m, g, dv)
    if pool == "mean":
        kc = kg.mean(dim=-2).expand(b, hkv, grp, m, d)
        vc = vg.mean(dim=-2).expand(b, hkv, grp, m, dv)
    else:
        last = torch.arange(m, device=call.device) * g + (g - 1)  # each group's last token
        q_last = call.grouped_q().index_select(3, last).to(wd).unsqueeze(-2)  # (B, Hkv, G, m, 1, D)
        scale = torch.tensor(call.scale, dtype=wd, device=call.device)
        logits = torch.matmul(q_last * scale, kg.transpose(-1, -2))  # (B, Hkv, G, m, 1, g)
        w = torch.softmax(logits, dim=-1)
        kc = torch.matmul(w, kg).squeeze(-2)  # (B, Hkv, G, m, D)
        vc = torch.matmul(w, vg).squeeze(-2)
    return kc.reshape(b, hkv * grp, m, d), vc.reshape(b, hkv * grp, m, dv)


def per_query_head(t: torch.Tensor, group: int) -> torch.Tensor:
    """``(B, Hkv, L, D)`` -> ``(B, Hkv * group, L, D)``: each KV head's tokens repeated for the
    query heads of its group (importance-pooled core tokens differ per query head, so the raw
    keys they are concatenated with must be per query head too)."""
    b, hkv, n, d = t.shape
    return t[:, :, None].expand(b, hkv, group, n, d).reshape(b, hkv * group, n, d)


def visible(q_idx: torch.Tensor, kv_idx: torch.Tensor, m: Any, group_size: int, window: int) -> torch.Tensor:
    """Whether query ``q_idx`` sees position ``kv_idx`` of ``[core tokens (m) ; raw tokens]``
    (broadcasting int tensors): core token ``i`` once its group and ``window`` more tokens have
    passed, raw tokens from the start of the query's window group up to the query. The one
    statement of the rule: :func:`fused_mask` and the flex backend's ``mask_mod`` both call it."""
    # where and a remainder, not clamp and floor division: the compiled create_block_mask
    # (long sequences, attnkit.kernels.flex) fails on the latter in torch 2.13 (inductor:
    # "vr must not be None for symbol q0")
    shifted = q_idx + 1 - window
    rs = torch.where(shifted > 0, shifted, 0)
    core = (kv_idx < m) & ((kv_idx + 1) * group_size <= rs)
    j = kv_idx - m
    raw = (kv_idx >= m) & (j >= rs - rs % group_size) & (j <= q_idx)
    return core | raw


def fused_mask(n: int, group_size: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """``(L, m + L)`` bool: which of ``[core tokens (m) ; raw tokens (L)]`` query ``t`` sees."""
    m = n // group_size
    t = torch.arange(n, device=device)[:, None]
    return visible(t, torch.arange(m + n, device=device)[None, :], m, group_size, window)
