"""Dense attention in plain torch: masks, causal, GQA without copying k/v, LSE, LSE merge.

Works in float32, or float64 for float64 inputs (like FlexAttention's ``math_attention``),
and casts the output back to the input dtype. Differentiable. A query row with nothing to
attend to gives zeros and ``lse = -inf``, never NaN, in the forward and the backward pass.

Shape legend: ``B`` batch, ``Hq``/``Hkv`` heads (``G = Hq // Hkv``), ``Tq``/``Tk`` tokens,
``D``/``Dv`` head dims.
"""

from __future__ import annotations

import torch

__all__ = ["attention", "causal_mask", "merge_attention", "softmax_rows", "work_dtype"]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the reference computes in for inputs of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def causal_mask(q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(Tq, Tk)`` bool mask, bottom-right aligned: query ``i`` sees keys ``j <= i + Tk - Tq``.

    With ``Tq == Tk`` this is the usual lower triangle; with ``Tq < Tk`` (decoding after a
    cache) the queries are the last ``Tq`` positions.
    """
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    return j <= i + (kv_len - q_len)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference softmax attention.

    :param q: ``(B, Hq, Tq, D)``.
    :param k: ``(B, Hkv, Tk, D)``, ``Hq % Hkv == 0``; never expanded to ``Hq`` heads.
    :param v: ``(B, Hkv, Tk, Dv)``.
    :param mask: bool, True = may attend, broadcastable to ``(B, Hq, Tq, Tk)``.
    :param is_causal: AND a bottom-right aligned causal mask (see :func:`causal_mask`).
    :param scale: logit scale, default ``D ** -0.5``.
    :param return_lse: also return the natural-log sum of exp of the scaled, masked logits,
        ``(B, Hq, Tq)`` in the working dtype (``-inf`` for rows with no allowed key).
    :returns: ``(B, Hq, Tq, Dv)`` in ``q.dtype`` (and the LSE).
    """
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    wd = work_dtype(q.dtype)
    if scale is None:
        scale = d**-0.5
    # (B, Hkv, G, Tq, D) against (B, Hkv, 1, Tk, D): broadcasting, not copying, shares k/v.
    qg = q.to(wd).reshape(b, hkv, g, tq, d)
    kg = k.to(wd).unsqueeze(2)
    vg = v.to(wd).unsqueeze(2)
    scores = torch.matmul(qg, kg.transpose(-1, -2)) * scale
    allowed = None
    if mask is not None:
        m = mask
        while m.dim() < 4:
            m = m.unsqueeze(0)
        # (B|1, Hq|1, Tq, Tk) -> (B|1, Hkv|1, G|1, Tq, Tk)
        if m.shape[1] == 1:
            m = m.unsqueeze(2)
        else:
            m = m.reshape(m.shape[0], hkv, g, m.shape[2], m.shape[3])
        allowed = m
    if is_causal:
        c = causal_mask(tq, tk, device=q.device)
        allowed = c if allowed is None else allowed & c
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs, lse = softmax_rows(scores)
    out = torch.matmul(probs, vg).reshape(b, hq, tq, v.shape[-1]).to(q.dtype)
    if not return_lse:
        return out
    return out, lse.reshape(b, hq, tq)


def softmax_rows(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis of masked logits, safe for rows with no allowed key.

    Masked entries are ``-inf``. A row that is all ``-inf`` gets probabilities 0 (so the
    attention output is zeros) and ``lse = -inf``, in the forward and the backward pass,
    where ``torch.softmax`` would give NaN. NaN logits give NaN probabilities. Traceable by
    ``torch.export`` (no data-dependent branch), so ONNX formulations use it too.

    :param scores: ``(..., K)`` scaled, masked logits.
    :returns: ``probs (..., K)`` and ``lse (...)``.
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    finite = torch.isfinite(row_max)
    row_max = torch.where(finite, row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - row_max)
    denom = e.sum(dim=-1, keepdim=True)
    has_any = denom > 0
    safe = torch.where(has_any, denom, torch.ones_like(denom))
    lse = torch.where(has_any, row_max + torch.log(safe), torch.full_like(denom, float("-inf")))
    return e / safe, lse.squeeze(-1)


def merge_attention(
    outs: list[torch.Tensor] | tuple[torch.Tensor, ...],
    lses: list[torch.Tensor] | tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge attention computed over disjoint key sets into attention over their union.

    :param outs: partial outputs, each ``(B, H, T, Dv)``.
    :param lses: their log-sum-exps, each ``(B, H, T)`` (``-inf`` where a part saw no key).
    :returns: ``(out, lse)``; rows where every part is empty stay zeros with ``lse = -inf``.
    """
    if len(outs) != len(lses) or not outs:
        raise ValueError(f"merge_attention needs as many outputs as LSEs (>= 1); got {len(outs)} and {len(lses)}")
    for i, (o, s) in enumerate(zip(outs, lses)):
        if o.shape[:-1] != s.shape:
            raise ValueError(f"outs[{i}] {tuple(o.shape)} does not match lses[{i}] {tuple(s.shape)}")
    wd = work_dtype(outs[0].dtype)
    stacked = torch.stack([s.to(wd) for s in lses])  # (P, B, H, T)
    top = stacked.amax(dim=0)
    top_safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    weights = torch.exp(stacked - top_safe)  # -inf parts -> 0
    total = weights.sum(dim=0)
    has_any = total > 0
    total_safe = torch.where(has_any, total, torch.ones_like(total))
    out = sum(w.unsqueeze(-1) * o.to(wd) for w, o in zip(weights, outs)) / total_safe.unsqueeze(-1)
    lse = torch.where(has_any, top_safe + torch.log(total_safe), torch.full_like(total, float("-inf")))
    return out.to(outs[0].dtype), lse
