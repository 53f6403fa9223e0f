"""Dense attention in plain torch: masks, causal, GQA without copying k/v, LSE, LSE merge.

Works in float32, or float64 for float64 inputs (like FlexAttention's ``math_attention``),
and casts the output back to the input dtype. Differentiable. A query row with nothing to
attend to gives zeros and ``lse = -inf``, never NaN, in the forward and the backward pass.

Non-finite input follows one rule, which every backend is held to (the contract's
``check_non_finite``; docs/user-guide.md, "Non-finite input"). A query row that may attend to
at least one key is *poisoned* when its ``q`` row, or the ``k`` or ``v`` row of a key it may
attend to, holds a NaN or an infinity, or when the largest of its logits is not finite (the
logits overflowed the working dtype: the supported range is "logits finite"). A poisoned row
is NaN in every entry, and so is its LSE; every other row is computed from finite values
only, so a non-finite key or value it may not attend to has no effect on it. A logit that
overflows to ``-inf`` next to finite ones is a probability of 0.

Shape legend: ``B`` batch, ``Hq``/``Hkv`` heads (``G = Hq // Hkv``), ``Tq``/``Tk`` tokens,
``D``/``Dv`` head dims.
"""

from __future__ import annotations

import torch

from attnkit.tensors import non_finite_rows

__all__ = ["attention", "causal_mask", "merge_attention", "poison_rows", "softmax_rows", "work_dtype"]


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
    qw, kw, vw = q.to(wd), k.to(wd), v.to(wd)
    # Non-finite rows are zeroed here and their query rows set to NaN at the end, so a NaN
    # key or value never reaches a row that may not attend to it (0 * NaN in P @ V would).
    bad_q = non_finite_rows(qw)  # (B, Hq, Tq)
    bad_kv = non_finite_rows(kw) | non_finite_rows(vw)  # (B, Hkv, Tk)
    qw = qw.masked_fill(bad_q.unsqueeze(-1), 0.0)
    kw = kw.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    vw = vw.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    bad_q = bad_q.reshape(b, hkv, g, tq)
    bad_kv = bad_kv.unsqueeze(2)  # (B, Hkv, 1, Tk)
    # (B, Hkv, G, Tq, D) against (B, Hkv, 1, Tk, D): broadcasting, not copying, shares k/v.
    # The scale multiplies q before the product, so it applies before the logits can overflow.
    qg = (qw * scale).reshape(b, hkv, g, tq, d)
    scores = torch.matmul(qg, kw.unsqueeze(2).transpose(-1, -2))
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
        has_key = allowed.any(dim=-1)
        sees_bad = (allowed & bad_kv.unsqueeze(-2)).any(dim=-1)
    else:
        has_key = torch.ones((), dtype=torch.bool, device=q.device)
        sees_bad = bad_kv.any(dim=-1, keepdim=True)
    # The largest logit a row may attend to is NaN or +inf, or -inf with keys to attend to:
    # the logits overflowed the working dtype.
    overflow = ~torch.isfinite(scores.amax(dim=-1))
    poisoned = has_key & (bad_q | sees_bad | overflow)  # (B, Hkv, G, Tq)
    # Poisoned rows are softmaxed over zeros (finite forward and backward), then set to NaN.
    scores = scores.masked_fill(poisoned.unsqueeze(-1), 0.0)
    probs, lse = softmax_rows(scores)
    out = torch.matmul(probs, vw.unsqueeze(2))
    out, lse = poison_rows(out, lse, poisoned)
    out = out.reshape(b, hq, tq, v.shape[-1]).to(q.dtype)
    if not return_lse:
        return out
    return out, lse.reshape(b, hq, tq)


def softmax_rows(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over the last axis of masked logits, safe for rows with no allowed key.

    Masked entries are ``-inf``. A row that is all ``-inf`` gets probabilities 0 (so the
    attention output is zeros) and ``lse = -inf``, in the forward and the backward pass,
    where ``torch.softmax`` would give NaN. A row holding a NaN logit, or whose largest logit
    is ``+inf``, gets NaN probabilities and ``lse = NaN``. Traceable by ``torch.export`` (no
    data-dependent branch), so ONNX formulations use it too.

    :param scores: ``(..., K)`` scaled, masked logits.
    :returns: ``probs (..., K)`` and ``lse (...)``.
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    finite = torch.isfinite(row_max)
    shift = torch.where(finite, row_max, torch.zeros_like(row_max))
    e = torch.exp(scores - shift)
    denom = e.sum(dim=-1, keepdim=True)
    empty = row_max == float("-inf")
    safe = torch.where(empty, torch.ones_like(denom), denom)
    lse = torch.where(empty, torch.full_like(denom, float("-inf")), shift + torch.log(safe))
    probs = e / safe
    broken = ~(finite | empty)  # NaN or +inf maximum
    probs = probs.masked_fill(broken, float("nan"))
    lse = lse.masked_fill(broken, float("nan"))
    return probs, lse.squeeze(-1)


def poison_rows(out: torch.Tensor, lse: torch.Tensor, poisoned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Set the rows ``poisoned (...)`` of ``out (..., Dv)`` and ``lse (...)`` to NaN.

    Gradients do not flow through the NaN rows (they are a constant), so the backward pass of
    the other rows stays finite.
    """
    nan = float("nan")
    return out.masked_fill(poisoned.unsqueeze(-1), nan), lse.masked_fill(poisoned, nan)


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
