"""LongHeads' selection step: which key chunks each query and head attends, in plain torch.

LongHeads (arXiv:2402.10685; code: LuLuLuyi/LongHeads ``modeling_llama.py``), prefill path:

1. keys are split into chunks of ``w = chunk_size`` (the last one may be short; query ``i``
   sits at key position ``p = i + Tk - Tq``, in chunk ``c = p // w``);
2. each chunk gets a key ``c_k`` per head: ``"attention"`` (the paper) runs bidirectional
   attention inside the chunk, ``c_v`` is the mean output and
   ``c_k = softmax(c_v K_chunk^T / sqrt(D)) K_chunk`` (a convex combination of the chunk's
   keys); ``"mean"`` takes the mean key;
3. score ``s_g = q · c_k[g]``; with ``rope_theta`` the query is un-rotated and the chunk's keys
   carry chunk-local RoPE (position ``j mod w``), as in the paper;
4. forced: chunk 0, chunk ``c - 1`` and chunk ``c``; causal: chunks after ``c`` are not
   allowed; then the best allowed chunks by score (ties: lower chunk first) until ``chunks``
   are held. The chosen ids are returned in ascending order.

Each query head selects on its own (per head, as the paper; with GQA a head's keys are its
KV head's). Computed in float64 without gradients whatever the input dtype (every backend
selects what the float64 oracle selects); non-finite q / k / v rows count as zeros here.
Traceable by ``torch.export`` (no branch on a value; the chunk axis is padded by ``chunks``
so the top-k width is static).

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``G = Hq // Hkv``, ``n`` chunks,
``C = chunks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attnkit.kernels.selection import stable_topk, zero_non_finite_rows
from attnkit_longheads.params import LongheadsParams
from attnkit_longheads.rope import rotate

__all__ = ["Selection", "chunk_keys", "chunk_scores", "select"]


@dataclass(frozen=True)
class Selection:
    """The chunks each query and head attends.

    :param ids: int64 ``(B, Hq, Tq, C)``: chosen chunk ids ascending, then padding slots
        (chunk 0, not valid).
    :param valid: bool ``(B, Hq, Tq, C)``: False on padding slots.
    :param shift: int64 ``(B, Hq, Tq, C)``: for ``rope_theta``, how many positions closer the
        slot's keys are to the query under compact positions than under the original ones
        (``e = (p - p_compact) - (j - j_compact)``, a multiple of ``w``, ``>= 0`` causal).
    :param offset: ``Tk - Tq``.
    :param chunk_size: ``w``.
    """

    ids: torch.Tensor
    valid: torch.Tensor
    shift: torch.Tensor
    offset: Any
    chunk_size: int

    def n_valid(self) -> torch.Tensor:
        """int64 ``(B, Hq, Tq)``: chosen chunks per query (they come first in ``ids``)."""
        return self.valid.sum(-1)

    def key_index(self, kv_len: Any, is_causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, valid)``, both ``(B, Hq, Tq, C * w)``: the key positions of the chosen
        chunks, in ascending order, and whether each is attended (in range, chosen slot,
        causal: at or before the query). Invalid slots hold an in-range index."""
        w = self.chunk_size
        t = torch.arange(w, device=self.ids.device)
        index = (self.ids[..., None] * w + t).flatten(-2)
        valid = self.valid[..., None].expand(*self.valid.shape, w).flatten(-2) & (index < kv_len)
        if is_causal:
            pos = torch.arange(self.ids.shape[2], device=index.device) + self.offset
            valid = valid & (index <= pos[:, None])
        return index.clamp(max=kv_len - 1), valid

    def dense(self, kv_len: Any, is_causal: bool) -> torch.Tensor:
        """bool ``(B, Hq, Tq, Tk)``, True where the query attends the key (``O(Tq Tk)``)."""
        index, valid = self.key_index(kv_len, is_causal)
        # Invalid slots go to an extra column (their clamped index may repeat a valid one).
        out = torch.zeros((*index.shape[:3], kv_len + 1), dtype=torch.bool, device=index.device)
        return out.scatter(-1, torch.where(valid, index, kv_len), valid)[..., :kv_len]


def _chunked(x: torch.Tensor, w: int, n: Any) -> torch.Tensor:
    """``(B, H, T, D)`` zero-padded to ``n * w`` rows and viewed as ``(B, H, n, w, D)``."""
    b, h, t, d = x.shape
    return F.pad(x, (0, 0, 0, n * w - t)).reshape(b, h, n, w, d)


def chunk_keys(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: LongheadsParams, scale: float
) -> torch.Tensor:
    """float64 chunk keys ``(B, Hq|Hkv, n, D)`` (``"attention"``: per query head; ``"mean"``:
    per KV head), from float64 inputs (see the module docstring)."""
    w = params.chunk_size
    b, hkv, tk, d = k.shape
    n = (tk + w - 1) // w
    pos = torch.arange(tk, device=k.device)
    real = _chunked(torch.ones(1, 1, tk, 1, dtype=k.dtype, device=k.device), w, n)[..., 0] > 0  # (1, 1, n, w)
    k_local = rotate(k, -(pos // w) * w, params.rope_theta) if params.rope_theta is not None else k
    kc = _chunked(k_local, w, n)  # (B, Hkv, n, w, D)
    if params.representation == "mean":
        return kc.sum(3) / real.sum(-1, keepdim=True).to(k.dtype)
    hq = q.shape[1]
    g = hq // hkv
    qc = _chunked(q, w, n).reshape(b, hkv, g, n, w, d)
    kraw = _chunked(k, w, n)[:, :, None]  # in-chunk logits: a common rotation cancels
    vc = _chunked(v, w, n)[:, :, None]
    logits = torch.matmul(qc, kraw.transpose(-1, -2)) * scale  # (B, Hkv, G, n, w, w)
    logits = logits.masked_fill(~real[:, :, None, :, None, :], float("-inf"))
    out = torch.matmul(torch.softmax(logits, dim=-1), vc)  # (B, Hkv, G, n, w, Dv)
    c_v = (out * real[:, :, None, :, :, None]).sum(4) / real.sum(-1)[:, :, None, :, None].to(k.dtype)
    att = torch.matmul(c_v[..., None, :], kc[:, :, None].transpose(-1, -2))[..., 0, :] * d**-0.5  # (B,Hkv,G,n,w)
    att = att.masked_fill(~real[:, :, None], float("-inf"))
    c_k = torch.matmul(torch.softmax(att, dim=-1)[..., None, :], kc[:, :, None])[..., 0, :]
    return c_k.reshape(b, hq, n, d)


def chunk_scores(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: LongheadsParams, scale: float
) -> torch.Tensor:
    """float64 ``(B, Hq, Tq, n)``: ``q · c_k[g]`` for every query, head and chunk."""
    if params.representation == "attention" and q.shape[2] != k.shape[2]:
        raise ValueError(
            "representation='attention' builds chunk keys from the chunks' own queries, so q and k need "
            f"the same length: got q_len {q.shape[2]} and kv_len {k.shape[2]} (use representation='mean')"
        )
    if params.representation == "attention" and q.shape[-1] != v.shape[-1]:
        raise ValueError(
            f"representation='attention' scores the mean value against keys: value dim {v.shape[-1]} "
            f"must equal head dim {q.shape[-1]}"
        )
    qf, kf, vf = (zero_non_finite_rows(x.detach().to(torch.float64)) for x in (q, k, v))
    tq, tk = q.shape[2], k.shape[2]
    c_k = chunk_keys(qf, kf, vf, params, scale)  # in-chunk attention: rotated q and k (relative)
    if params.rope_theta is not None:  # the score takes the un-rotated query
        qf = rotate(qf, -(torch.arange(tq, device=q.device) + (tk - tq)), params.rope_theta)
    if c_k.shape[1] != q.shape[1]:
        c_k = c_k.repeat_interleave(q.shape[1] // c_k.shape[1], dim=1)
    return torch.matmul(qf, c_k.transpose(-1, -2))


def select(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: LongheadsParams, is_causal: bool, scale: float
) -> Selection:
    """The chunks every query and head attends (see the module docstring)."""
    w, cap = params.chunk_size, params.chunks
    tq, tk = q.shape[2], k.shape[2]
    offset = tk - tq
    dev = q.device
    with torch.no_grad():
        scores = torch.nan_to_num(chunk_scores(q, k, v, params, scale), nan=0.0, posinf=1e300, neginf=-1e300)
        n = scores.shape[-1]
        scores = F.pad(scores, (0, cap))  # (B, Hq, Tq, n + C): the extra columns are never allowed
        g = torch.arange(n + cap, device=dev)
        cur = torch.div(torch.arange(tq, device=dev) + offset, w, rounding_mode="floor")[:, None]  # (Tq, 1)
        allowed = (g < n) & ((g <= cur) if is_causal else True)
        forced = allowed & ((g == 0) | (g == cur) | (g == cur - 1))
        key = torch.where(forced, torch.inf, torch.where(allowed, scores, -torch.inf))
        top = stable_topk(key, cap)  # (B, Hq, Tq, C) best first
        chosen = torch.zeros(key.shape, dtype=torch.bool, device=dev).scatter(
            -1, top, allowed.expand(key.shape).gather(-1, top)
        )
        ids = stable_topk(chosen.to(torch.float32), cap)  # chosen ids ascending, then the rest
        valid = chosen.gather(-1, ids)
        ids = torch.where(valid, ids, 0)
        # Compact positions: slot r starts at r * w; the query sits in its own chunk's slot.
        slot = torch.arange(cap, device=dev)
        r_cur = ((ids < cur) & valid).sum(-1, keepdim=True)  # chosen chunks before the query's own
        shift = ((cur - r_cur) - (ids - slot)) * w
    return Selection(ids=ids, valid=valid, shift=torch.where(valid, shift, 0), offset=offset, chunk_size=w)
