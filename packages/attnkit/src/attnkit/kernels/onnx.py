"""Traceable attention formulations for ONNX export backends.

``torch.onnx.export(..., dynamo=True)`` traces a backend with symbolic batch and token sizes,
so an export backend may not branch on a size or read a tensor's values. Two formulations
cover the sparse kernels so far:

* dense attention under a mask built from index arithmetic on ``torch.arange`` of the
  symbolic lengths: :func:`attnkit.reference.attention` with ``mask=`` is already traceable
  (GQA without copying k/v, empty rows give zeros), so a plugin's ``onnx.py`` only builds the
  mask and calls it (:func:`masked_attention` does both for a :class:`~attnkit.kernels.KernelCall`);
* :func:`gathered_attention`: every query attends to its own list of ``K`` keys given as
  indices (windows, top-k blocks, selected chunks), gathered with one ``Gather`` per k / v,
  so memory is ``O(N * K * D)`` instead of ``O(N * M)``.

Both compute in float32 (float64 for float64 inputs) and return the LSE in that dtype, and
both follow the non-finite rule of :mod:`attnkit.reference.dense` (a row that may attend to a
non-finite query, key or value, or whose logits overflow, is NaN with ``lse = NaN``; no other
row is touched by them) with traceable ops only.

Shape legend: as in :mod:`attnkit.kernels.call`; ``K`` keys per query.
"""

from __future__ import annotations

import torch

from attnkit.kernels.call import KernelCall
from attnkit.reference.dense import attention, poison_rows, softmax_rows, work_dtype
from attnkit.tensors import non_finite_rows

__all__ = ["gathered_attention", "masked_attention"]


def masked_attention(call: KernelCall, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention of ``call`` under ``allowed``, bool ``(Hq|1, N, M)`` or broadcastable
    to ``(B, Hq, N, M)``; returns ``(out (B, Hq, N, Dv), lse (B, Hq, N))``."""
    if allowed.dim() == 3:
        allowed = allowed.unsqueeze(0)
    out, lse = attention(call.q, call.k, call.v, mask=allowed, scale=call.scale, return_lse=True)
    return out, lse


def gathered_attention(
    call: KernelCall, index: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query over its own ``K`` keys.

    :param call: the flattened call (``q (B, Hq, N, D)``, ``k/v (B, Hkv, M, D)``).
    :param index: int64 key indices, ``(N, K)`` shared by every batch entry and head, or
        ``(B, Hkv, N, K)`` per key/value head (the query heads of a group share it).
    :param valid: bool of ``index``'s shape, False for padding slots (their index must still
        be in range); ``None`` when every slot is a real key. A query with no valid slot
        gets zeros and ``lse = -inf``.
    :returns: ``out (B, Hq, N, Dv)`` in the working dtype and ``lse (B, Hq, N)``.
    """
    b, hkv, g, n = call.batch, call.kv_heads, call.group, call.q_len
    d, dv = call.head_dim, call.value_dim
    wd = work_dtype(call.dtype)
    kf, vf = call.k.to(wd), call.v.to(wd)
    qf = call.grouped_q().to(wd)  # (B, Hkv, G, N, D)
    # Non-finite rows are zeroed and their query rows set to NaN at the end, so they never
    # reach a query that may not attend to them.
    bad_q = non_finite_rows(qf)  # (B, Hkv, G, N)
    bad_kv = non_finite_rows(kf) | non_finite_rows(vf)  # (B, Hkv, M)
    qf = qf.masked_fill(bad_q.unsqueeze(-1), 0.0)
    kf = kf.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    vf = vf.masked_fill(bad_kv.unsqueeze(-1), 0.0)
    kk = index.shape[-1]
    if index.dim() == 2:
        flat = index.reshape(-1)
        kw = torch.index_select(kf, 2, flat).reshape(b, hkv, 1, n, kk, d)
        vw = torch.index_select(vf, 2, flat).reshape(b, hkv, 1, n, kk, dv)
        bad_w = torch.index_select(bad_kv, 2, flat).reshape(b, hkv, 1, n, kk)
    else:
        flat = index.reshape(b, hkv, -1, 1)
        kw = torch.gather(kf, 2, flat.expand(-1, -1, -1, d)).reshape(b, hkv, 1, n, kk, d)
        vw = torch.gather(vf, 2, flat.expand(-1, -1, -1, dv)).reshape(b, hkv, 1, n, kk, dv)
        bad_w = torch.gather(bad_kv, 2, flat.squeeze(-1)).reshape(b, hkv, 1, n, kk)
    qg = qf.unsqueeze(-2)  # (B, Hkv, G, N, 1, D)
    # A tensor, not a Python float: the exporter would store a float scalar as float32.
    scale = torch.tensor(call.scale, dtype=wd, device=call.device)
    # The scale multiplies q before the product, so it applies before the logits can overflow.
    scores = torch.matmul(qg * scale, kw.transpose(-1, -2))  # (B, Hkv, G, N, 1, K)
    if valid is not None:
        v_mask = valid.reshape((n, kk) if valid.dim() == 2 else (b, hkv, 1, n, kk))
        scores = scores.masked_fill(~v_mask.unsqueeze(-2), float("-inf"))
        has_key = v_mask.any(dim=-1)
        sees_bad = (bad_w & v_mask).any(dim=-1)
    else:
        has_key = torch.ones((), dtype=torch.bool, device=call.device)
        sees_bad = bad_w.any(dim=-1)
    overflow = ~torch.isfinite(scores.amax(dim=-1).squeeze(-1))  # NaN / +inf, or -inf with keys
    poisoned = has_key & (bad_q | sees_bad | overflow)  # (B, Hkv, G, N)
    scores = scores.masked_fill(poisoned[..., None, None], 0.0)
    probs, lse = softmax_rows(scores)
    out = torch.matmul(probs, vw).squeeze(-2)  # (B, Hkv, G, N, Dv)
    out, lse = poison_rows(out, lse.squeeze(-1), poisoned)
    return out.reshape(b, g * hkv, n, dv), lse.reshape(b, g * hkv, n)
