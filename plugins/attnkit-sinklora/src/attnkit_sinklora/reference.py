"""Reference SF-Attn / S²-Attn in plain torch, in the blockwise form the paper describes.

Tokens are cut into groups of ``G`` (after a front pad of ``shift`` tokens for shifted heads,
so group ``j`` holds positions ``[j*G - shift, (j+1)*G - shift)``); each group attends to its
own ``G`` keys plus the sink keys, concatenated in front of them. A sink key that lies in the
query's own group is masked in the sink part so it is not counted twice. Cost is
``O(T * (G + n_sink) * D)``, not ``O(T^2)``.

Differentiable and float64-capable (computes in float32, float64 for float64 inputs); GQA
without copying k/v to ``Hq`` heads: q is viewed as ``(B, Hkv, Hq/Hkv, T, D)``.

Non-finite input follows attnkit's rule (:mod:`attnkit.reference.dense`): non-finite rows are
zeroed before the products, and a query whose own row, or the ``k``/``v`` row of a key it may
attend to, was not finite, or whose logits overflow, is NaN (``lse`` too); other queries never
see them (a zeroed row only ever meets a probability of 0 where it is masked).

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from attnkit.kernels import KernelCall, kernel
from attnkit.reference.dense import poison_rows, work_dtype
from attnkit.tensors import non_finite_rows
from attnkit_sinklora.params import group_size, shift_of_head

__all__ = ["sf_attention", "sf_attention_call", "sf_attention_shift"]


def sf_attention_shift(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    g: int,
    shift: int,
    n_sink: int,
    causal: bool,
    scale: float,
    bad_kv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise attention for one shift, every head: ``(out, lse)`` in ``q``'s dtype.

    :param q: ``(B, Hkv, R, T, D)`` (``R = Hq / Hkv`` query heads per kv head).
    :param k: ``(B, Hkv, T, D)``; ``v`` ``(B, Hkv, T, Dv)``; all finite.
    :param bad_kv: ``(B, Hkv, T)`` bool, keys whose (zeroed) ``k``/``v`` row was not finite:
        the queries that may attend to one come out NaN; ``None`` when there is none.
    :returns: ``out (B, Hkv, R, T, Dv)``, ``lse (B, Hkv, R, T)``.
    """
    t = q.shape[-2]
    n_groups = -(-(t + shift) // g)
    back = n_groups * g - t - shift
    dev = q.device
    # The scale multiplies q before the products, so it applies before the logits can overflow.
    q = q * scale
    # (B, Hkv, [R,] nG, G, D) views of the padded sequences
    qb = F.pad(q, (0, 0, shift, back)).unflatten(-2, (n_groups, g))
    kb = F.pad(k, (0, 0, shift, back)).unflatten(-2, (n_groups, g)).unsqueeze(2)
    vb = F.pad(v, (0, 0, shift, back)).unflatten(-2, (n_groups, g)).unsqueeze(2)
    pos = (torch.arange(n_groups * g, device=dev) - shift).view(n_groups, g)
    real = (pos >= 0) & (pos < t)
    local_ok = real[:, None, :].expand(n_groups, g, g)
    if causal:
        local_ok = local_ok & torch.ones(g, g, dtype=torch.bool, device=dev).tril()
    # Padded query rows are discarded; letting them see every key keeps their softmax finite,
    # so no NaN reaches the backward pass.
    local_ok = local_ok | ~real[:, :, None]
    scores = torch.matmul(qb, kb.transpose(-1, -2))  # (B, Hkv, R, nG, G, G)
    scores = scores.masked_fill(~local_ok, float("-inf"))
    sees_bad = None
    if bad_kv is not None:
        bad_b = F.pad(bad_kv, (shift, back)).unflatten(-1, (n_groups, g))  # (B, Hkv, nG, G)
        sees_bad = (local_ok & bad_b[:, :, None, :, None, :]).any(dim=-1)  # (B, Hkv, 1, nG, G)
    ns = min(n_sink, t)
    if ns > 0:
        sink_group = (torch.arange(ns, device=dev) + shift) // g
        blk = torch.arange(n_groups, device=dev)[:, None]
        # Causal: a sink outside the query's group precedes it iff its group comes first.
        sink_ok = sink_group[None, :] < blk if causal else sink_group[None, :] != blk
        sink_ok = sink_ok[:, None, :] & real[:, :, None]
        ks, vs = k[..., :ns, :].unsqueeze(2), v[..., :ns, :].unsqueeze(2)  # (B, Hkv, 1, ns, D)
        s_sink = torch.matmul(qb.flatten(-3, -2), ks.transpose(-1, -2)).unflatten(-2, (n_groups, g))
        s_sink = s_sink.masked_fill(~sink_ok, float("-inf"))
        scores = torch.cat([s_sink, scores], dim=-1)
        if bad_kv is not None and sees_bad is not None:
            sees_bad = sees_bad | (sink_ok & bad_kv[:, :, None, None, None, :ns]).any(dim=-1)
    # Every real query sees itself, so a maximum that is not finite means overflowed logits.
    poisoned = ~torch.isfinite(scores.amax(dim=-1))  # (B, Hkv, R, nG, G)
    if sees_bad is not None:
        poisoned = poisoned | sees_bad
    # Poisoned rows are softmaxed over zeros (finite forward and backward), then set to NaN.
    scores = scores.masked_fill(poisoned.unsqueeze(-1), 0.0)
    lse = torch.logsumexp(scores, dim=-1)  # every real query sees itself: never empty
    probs = torch.exp(scores - lse[..., None])
    out = torch.matmul(probs[..., ns:], vb)
    if ns > 0:
        out = out + torch.matmul(probs[..., :ns].flatten(-3, -2), vs).unflatten(-2, (n_groups, g))
    out, lse = poison_rows(out, lse, poisoned)
    out = out.flatten(-3, -2)[..., shift : shift + t, :]
    lse = lse.flatten(-2, -1)[..., shift : shift + t]
    return out, lse


def sf_attention_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """SF-Attn (or S²-Attn with ``params.shifted``) of a flattened call, blockwise in plain
    torch: ``out (B, Hq, T, Dv)`` and ``lse (B, Hq, T)`` in the working dtype (float32, or
    float64 for float64 inputs)."""
    b, hq, t = call.batch, call.q_heads, call.q_len
    hkv, r = call.kv_heads, call.group
    wd = work_dtype(call.dtype)
    g = group_size(call.params, t)
    qf = call.grouped_q().to(wd)
    kf, vf = call.k.to(wd), call.v.to(wd)
    # Non-finite rows: zeroed here, their queries set to NaN (every query sees itself).
    bad_q = non_finite_rows(qf)  # (B, Hkv, R, T)
    bad_kv = non_finite_rows(kf) | non_finite_rows(vf)  # (B, Hkv, T)
    qf = qf.masked_fill(bad_q.unsqueeze(-1), 0.0)
    kf = kf.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    vf = vf.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    kw: dict[str, Any] = {
        "g": g,
        "n_sink": call.params.n_sink,
        "causal": call.is_causal,
        "scale": call.scale,
        "bad_kv": bad_kv,
    }
    out, lse = sf_attention_shift(qf, kf, vf, shift=0, **kw)
    shifts = [shift_of_head(call.params, h, hq, g) for h in range(hq)]
    if any(shifts):
        # Heads split between two shifts: compute the shifted layout too and pick per head.
        out_s, lse_s = sf_attention_shift(qf, kf, vf, shift=max(shifts), **kw)
        pick = torch.tensor(shifts, device=call.device).ne(0).view(hkv, r)
        out = torch.where(pick[..., None, None], out_s, out)
        lse = torch.where(pick[..., None], lse_s, lse)
    out, lse = poison_rows(out, lse, bad_q)
    return out.reshape(b, hq, t, -1), lse.reshape(b, hq, t)


#: The reference backend: ``q (B, Hq, T, D)``, ``k/v (B, Hkv, T, D|Dv)`` -> ``out (B, Hq, T,
#: Dv)`` in ``q.dtype`` (and ``lse (B, Hq, T)``, float32 or float64). Differentiable.
sf_attention = kernel(sf_attention_call)
