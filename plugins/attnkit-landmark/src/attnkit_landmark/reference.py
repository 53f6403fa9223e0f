"""Reference backend of ``landmark`` and ``landmark.retrieval``: the grouped softmax as one
softmax over rewritten logits, in plain torch.

The paper's grouped softmax (spec S5; ``landmark_grouped_softmax`` in epfml/landmark-attention)
for a query at position ``t`` in block ``b`` with logits ``s = q . k * scale``:

* the *current section* ``C(t)``: the regular (non-landmark) keys of block ``b`` (causal:
  those at or before ``t``; a landmark query's own landmark is masked);
* the *gated blocks*: every complete block ``j`` before ``b`` (causal; every other complete
  block when not causal), or, for retrieval, the ``top_k`` of them with the largest
  landmark logit ``s_{L_j}``;
* outer softmax over ``{s_c : c in C(t)} U {s_{L_j} : j gated}``; inner softmax over the
  regular keys ``u`` of each gated block; weight ``p_c`` for ``c in C(t)``,
  ``p_{L_j} * p_{u|j}`` for ``u`` in block ``j`` and 0 for the landmarks themselves.

Rewritten (spec S5 (d), algebraically exact): with ``s'_u = s_u - lse_j + s_{L_j}`` for the
regular keys of a gated block (``lse_j`` the log-sum-exp of its regular logits), ``s'_c = s_c``
in the current section and landmarks masked, one softmax over ``s'`` gives the same weights,
because ``sum_{u in j} exp(s'_u) = exp(s_{L_j})``. Its LSE is the outer softmax's LSE.

Differentiable (gradients flow through ``lse_j`` and ``s_{L_j}``: the paper trains through
the gates), float64-capable, ``O(Tq Tk)`` memory, and traceable by ``torch.export`` (index
arithmetic on ``arange`` of the sizes): it is ``landmark``'s ONNX export path
(``landmark.retrieval`` exports through :mod:`attnkit_landmark.onnx`, ``torch.topk`` instead
of the stable sort ONNX lacks). The numba backend recomputes it for its gradients.

Non-finite input (attnkit's rule, :mod:`attnkit.reference.dense`): a row is poisoned when its
``q`` row, or the ``k`` / ``v`` row of any key whose logit it uses (its current section, its
gated blocks' regular keys and landmarks, and for retrieval every landmark it ranks), is not
finite, or its logits overflow.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``, ``G = Hq // Hkv``; ``nb`` blocks
of the padded key axis. Query ``i`` sits at key position ``i + Tk - Tq``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.reference.dense import poison_rows, softmax_rows, work_dtype
from attnkit.tensors import non_finite_rows

__all__ = [
    "grouped_call",
    "grouped_logits",
    "landmark_attention",
    "landmark_call",
    "retrieval_attention",
    "retrieval_call",
]


def grouped_logits(
    scores: torch.Tensor,
    block_size: int,
    is_causal: bool,
    top_k: int | None = None,
    *,
    select: str = "sort",
    offset: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The single-softmax logits of the grouped softmax.

    :param scores: scaled logits ``(..., Tq, Tk)`` (finite).
    :param top_k: ``None`` for ``landmark``; else the blocks each query keeps.
    :param select: how the retrieval ranks blocks: ``"sort"``, a stable sort (ties keep the
        lower block, as the numba kernel), or ``"topk"``, ``torch.topk`` over logits padded with
        ``top_k`` columns of ``-inf`` (what ONNX exports; ties are measure zero for real logits).
    :param offset: key position of the first query (default ``Tk - Tq``, bottom-right aligned).
    :returns: ``logits (..., Tq, Tk)`` (``-inf`` where the weight is 0), ``uses (..., Tq, Tk)``
        bool (the keys whose logit the row uses: what a non-finite key poisons) and
        ``gated (..., Tq, nb)`` bool (the blocks each row gates).
    """
    n, m = scores.shape[-2], scores.shape[-1]
    bs = block_size
    dev = scores.device
    pos = torch.arange(n, device=dev) + ((m - n) if offset is None else offset)  # (Tq,)
    key = torch.arange(m, device=dev)
    kb = torch.div(key, bs, rounding_mode="floor")  # (Tk,) block of each key
    is_lm = (key % bs) == (bs - 1)
    qb = torch.div(pos, bs, rounding_mode="floor")  # (Tq,) block of each query (a landmark shares its block's id)
    n_full = m // bs  # complete blocks (with a landmark)
    own = kb[None, :] == qb[:, None]
    cur = own & ~is_lm[None, :] & (pos[:, None] >= 0)
    if is_causal:
        cur = cur & (key[None, :] <= pos[:, None])

    # Per-(query, block) LSE of the regular keys and the landmark logit, on a padded block grid.
    padded = torch.nn.functional.pad(scores, (0, (-m) % bs))  # zeros: finite, never used
    blocks = padded.reshape(*scores.shape[:-1], -1, bs)  # (..., Tq, nb, bs)
    lse_blk = torch.logsumexp(blocks[..., : bs - 1], dim=-1)  # (..., Tq, nb)
    s_lm = blocks[..., bs - 1]  # (..., Tq, nb)
    blk = torch.arange(blocks.shape[-2], device=dev)
    eligible = (blk[None, :] < n_full) & (pos[:, None] >= 0)
    eligible = eligible & ((blk[None, :] < qb[:, None]) if is_causal else (blk[None, :] != qb[:, None]))
    eligible = eligible.expand(s_lm.shape)
    gated = eligible
    if top_k is not None:
        ranked = s_lm.masked_fill(~eligible, float("-inf"))
        if select == "topk":
            ranked = torch.nn.functional.pad(ranked, (0, top_k), value=float("-inf"))
            order = torch.topk(ranked, top_k, dim=-1).indices
        else:
            order = torch.sort(ranked, dim=-1, descending=True, stable=True).indices[..., :top_k]
            ranked = torch.nn.functional.pad(ranked, (0, top_k), value=float("-inf"))
        chosen = torch.zeros_like(ranked, dtype=torch.bool).scatter(-1, order, torch.ones_like(order, dtype=torch.bool))
        chosen = chosen[..., : eligible.shape[-1]]
        gated = eligible & chosen
    gated_k = gated.index_select(-1, kb)  # (..., Tq, Tk) the key's block is gated
    other = gated_k & ~is_lm
    adj = (s_lm - lse_blk).index_select(-1, kb)
    neg = torch.full_like(scores, float("-inf"))
    logits = torch.where(cur, scores, torch.where(other, scores + adj, neg))
    uses = cur | gated_k
    if top_k is not None:  # every landmark the row ranks
        uses = uses | (eligible.index_select(-1, kb) & is_lm)
    return logits, uses, gated


def grouped_call(call: KernelCall, top_k: int | None, select: str = "sort") -> tuple[torch.Tensor, torch.Tensor]:
    """The grouped softmax of ``call`` (see :func:`grouped_logits`): ``out (B, Hq, Tq, Dv)``
    and ``lse (B, Hq, Tq)`` in the working dtype, under attnkit's non-finite rule."""
    b, hkv, g, n = call.batch, call.kv_heads, call.group, call.q_len
    wd = work_dtype(call.dtype)
    qf = call.grouped_q().to(wd)
    kf, vf = call.k.to(wd), call.v.to(wd)
    bad_q = non_finite_rows(qf)  # (B, Hkv, G, N)
    bad_kv = (non_finite_rows(kf) | non_finite_rows(vf))[:, :, None, None, :]  # (B, Hkv, 1, 1, M)
    qf = qf.masked_fill(bad_q.unsqueeze(-1), 0.0)
    kf = kf.masked_fill(bad_kv[:, :, 0, 0, :, None], 0.0)
    vf = vf.masked_fill(bad_kv[:, :, 0, 0, :, None], 0.0)
    scale = torch.tensor(call.scale, dtype=wd, device=call.device)
    scores = torch.matmul(qf * scale, kf.unsqueeze(2).transpose(-1, -2))  # (B, Hkv, G, N, M)
    logits, uses, _ = grouped_logits(scores, call.params.block_size, call.is_causal, top_k, select=select)
    has_key = uses.any(dim=-1)
    overflow = ~torch.isfinite(logits.amax(dim=-1))
    poisoned = has_key & (bad_q | (uses & bad_kv).any(dim=-1) | overflow)
    logits = logits.masked_fill(poisoned.unsqueeze(-1), 0.0)
    probs, lse = softmax_rows(logits)
    out = torch.matmul(probs, vf.unsqueeze(2))
    out, lse = poison_rows(out, lse, poisoned)
    return out.reshape(b, g * hkv, n, -1), lse.reshape(b, g * hkv, n)


def landmark_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype (float32, or
    float64 for float64 inputs)."""
    return grouped_call(call, None)


def retrieval_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`landmark_call`, gating only each query's ``top_k`` blocks by landmark logit."""
    return grouped_call(call, call.params.top_k)


#: The reference backends (see :func:`attnkit.kernels.kernel` for the calling convention).
landmark_attention = kernel(landmark_call)
retrieval_attention = kernel(retrieval_call)
