"""DHSA's selection step: which keys each query attends to, in plain torch.

Dynamic Hierarchical Sparse Attention (arXiv:2510.24606), legacy algorithm (see the README):

1. queries are grouped into blocks of ``block_size`` consecutive positions (query ``i`` sits at
   key position ``p = i + Tk - Tq``, so blocks are aligned with the keys), keys into uniform
   chunks of ``chunk_size``;
2. length-normalised representations: ``q̄ = mean(q over block and heads) * sqrt(n)`` and
   ``k̄ = mean(k over chunk and heads) * sqrt(|chunk|)`` (between a mean and a sum);
3. chunk similarity ``S = q̄ k̄^T`` (no ``1/sqrt(D)``), upsampled to tokens: every key gets its
   chunk's score;
4. per query block, always kept: the ``sink_tokens`` first keys, the block's own positions and
   ``local_tokens`` keys before it (and after it when not causal); then the ``top_k`` other
   allowed keys of highest score (causal: keys at or before the block's last position), ties
   broken by position (lower first);
5. a query attends to its block's keys; causal: only those at or before its own position.

Deterministic, computed in float64 whatever the input dtype (so every backend, at any dtype,
selects exactly the keys the float64 oracle selects), without gradients (the selection is
discrete), and traceable by ``torch.export`` (no branch on a value). Non-finite ``q`` / ``k``
rows count as zeros here, so a NaN key cannot take every query's budget; the attention
then applies attnkit's non-finite rule to the keys that were selected.

Shape legend: ``q (B, Hq, Tq, D)``, ``k (B, Hkv, Tk, D)``, ``G = Hq // Hkv``; ``Hs`` is 1
with ``share_heads`` else ``Hkv``; ``nb`` query blocks; ``K`` kept keys per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from attnkit.kernels.selection import stable_topk, zero_non_finite_rows
from attnkit_dhsa.params import DhsaParams

__all__ = ["Selection", "chunk_scores", "select"]


@dataclass(frozen=True)
class Selection:
    """The keys each query block keeps.

    :param index: int64 ``(B, Hs, nb, K)``: kept key positions in ascending order, then
        padding slots (an unkept, in-range key each).
    :param valid: bool ``(B, Hs, nb, K)``: False on padding slots.
    :param offset: ``Tk - Tq``, the position of query 0 among the keys.
    :param first_block: the block of query 0 (``offset // block_size``).
    :param block_size: ``b``.
    :param causal: whether a query drops its block's keys after its own position.
    """

    index: torch.Tensor
    valid: torch.Tensor
    offset: Any
    first_block: Any
    block_size: int
    causal: bool

    def query_rows(self, q_len: Any) -> torch.Tensor:
        """``(Tq,)`` int64: the block row of each query."""
        pos = torch.arange(q_len, device=self.index.device) + self.offset
        return torch.div(pos, self.block_size, rounding_mode="floor") - self.first_block

    def per_query(self, q_len: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, valid)``, both ``(B, Hs, Tq, K)``: each query's keys, with the causal
        limit folded into ``valid``."""
        rows = self.query_rows(q_len)
        index = self.index.index_select(2, rows)
        valid = self.valid.index_select(2, rows)
        if self.causal:
            pos = torch.arange(q_len, device=index.device) + self.offset
            valid = valid & (index <= pos[:, None])
        return index, valid

    def dense(self, q_len: Any, kv_len: Any) -> torch.Tensor:
        """bool ``(B, Hs, Tq, Tk)``, True where the query attends the key (``O(Tq Tk)``)."""
        index, valid = self.per_query(q_len)
        out = torch.zeros((*index.shape[:3], kv_len), dtype=torch.bool, device=index.device)
        return out.scatter(-1, index, valid)  # the indices of a row are distinct


def _block_sums(x: torch.Tensor, front: Any, blocks: Any, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of ``x (B, H, T, D)`` over consecutive blocks of ``size`` rows after ``front``
    padding rows, and the real rows per block ``(blocks,)``."""
    b, h, t, d = x.shape
    back = blocks * size - front - t
    sums = F.pad(x, (0, 0, front, back)).reshape(b, h, blocks, size, d).sum(3)
    ones = torch.ones(1, 1, t, 1, dtype=x.dtype, device=x.device)
    counts = F.pad(ones, (0, 0, front, back)).reshape(blocks, size).sum(1)
    return sums, counts


def _finite_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its non-finite rows (last axis) set to zeros, in ``x``'s dtype (the float64
    cast that follows keeps finite values and zeros as they are, so this equals zeroing after
    it). Eager: a row is finite exactly when ``max |x|`` is (``amax`` propagates NaN), one
    cheap reduction instead of an elementwise test. While exporting: the core's rule, whose
    ops have the same meaning in ONNX."""
    if torch.compiler.is_exporting():
        return zero_non_finite_rows(x)
    return x.masked_fill(~x.abs().amax(-1, keepdim=True).isfinite(), 0.0)


def chunk_scores(q: torch.Tensor, k: torch.Tensor, params: DhsaParams) -> torch.Tensor:
    """float64 ``(B, Hs, nb, chunks)``: ``q̄_block · k̄_chunk`` of the length-normalised
    representations (query blocks aligned with the keys, see the module docstring)."""
    b, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    bs, cs = params.block_size, params.chunk_size
    offset = tk - tq
    first = offset // bs
    blocks = (tk - 1) // bs - first + 1
    chunks = (tk + cs - 1) // cs
    qf = _finite_rows(q.detach()).to(torch.float64)
    kf = _finite_rows(k.detach()).to(torch.float64)
    if params.share_heads:
        qh, kh = qf.mean(1, keepdim=True), kf.mean(1, keepdim=True)
    else:
        qh, kh = qf.reshape(b, hkv, hq // hkv, tq, d).mean(2), kf
    q_sum, q_n = _block_sums(qh, offset - first * bs, blocks, bs)
    k_sum, k_n = _block_sums(kh, 0, chunks, cs)
    # mean * sqrt(n) = sum / sqrt(n): length-normalised aggregation
    q_bar = q_sum / q_n.sqrt()[:, None]
    k_bar = k_sum / k_n.sqrt()[:, None]
    return torch.matmul(q_bar, k_bar.transpose(-1, -2))


def select(q: torch.Tensor, k: torch.Tensor, params: DhsaParams, is_causal: bool) -> Selection:
    """The keys every query block keeps (see the module docstring)."""
    tq, tk = q.shape[2], k.shape[2]
    bs, cs = params.block_size, params.chunk_size
    offset = tk - tq
    first = offset // bs
    blocks = (tk - 1) // bs - first + 1
    dev = q.device
    with torch.no_grad():
        scores = chunk_scores(q, k, params)  # (B, Hs, nb, chunks)
        j = torch.arange(tk, device=dev)
        token_scores = scores.index_select(-1, torch.div(j, cs, rounding_mode="floor"))  # (B, Hs, nb, Tk)
        token_scores = torch.nan_to_num(token_scores, nan=float("-inf"))

        start = (torch.arange(blocks, device=dev) + first) * bs  # (nb,)
        end = torch.clamp(start + bs - 1, max=tk - 1)
        local = params.local_tokens
        sink = (j < params.sink_tokens)[None, :]
        if is_causal:
            allowed = j[None, :] <= end[:, None]
            near = (j[None, :] >= start[:, None] - local) & allowed
        else:
            allowed = torch.ones(1, 1, dtype=torch.bool, device=dev)
            near = (j[None, :] >= start[:, None] - local) & (j[None, :] <= end[:, None] + local)
        kept = (sink | near) & allowed  # (nb, Tk)
        candidate = (allowed & ~kept).expand(token_scores.shape)
        # Highest score first, lower position first among equal scores (stable sort).
        order = stable_topk(torch.where(candidate, -token_scores, float("inf")), tk, largest=False)
        cand_sorted = candidate.gather(-1, order)
        take_sorted = cand_sorted & (torch.cumsum(cand_sorted.to(torch.int64), dim=-1) <= params.top_k)
        taken = torch.zeros_like(candidate).scatter(-1, order, take_sorted)
        chosen = taken | kept
        width = min(params.max_keys(is_causal), tk)
        slots = stable_topk(chosen.to(torch.float32), width)
        valid = chosen.gather(-1, slots)
    return Selection(index=slots, valid=valid, offset=offset, first_block=first, block_size=bs, causal=bool(is_causal))
