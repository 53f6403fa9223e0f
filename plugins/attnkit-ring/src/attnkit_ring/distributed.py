"""The ``distributed`` backend of ``ring``: ring attention over ``torch.distributed``.

The sequence is split into contiguous shards across the ``W`` ranks of a process group:
rank ``r`` holds the queries, keys and values of tokens ``[offset_r, offset_r + T_r)``, with
``offset_r = T_0 + ... + T_{r-1}`` (for an even split of ``T`` tokens, ``[r*T/W, (r+1)*T/W)``;
:func:`shard_sequence` cuts a full tensor that way). Each rank keeps its query block and the
key/value blocks travel around the ring; every block's attention (attnkit's dense reference,
which returns the log-sum-exp, in query-row chunks: :func:`chunked_attention`) is merged into the running output with attnkit's LSE merge
(:func:`attnkit.reference.merge_attention`). The result on rank ``r`` is rows
``[offset_r, offset_r + T_r)`` of single-process attention over the whole sequence.

* Transport is ``torch.distributed`` only: ``batch_isend_irecv`` for the ring (``rotate="p2p"``,
  the send of the next block overlaps the attention of the current one) or
  ``torch.distributed.nn.functional.all_gather`` (``rotate="allgather"``, differentiable). gloo
  carries CPU tensors, NCCL CUDA tensors.
* Causal: a query block skips the key blocks of later ranks, applies the causal mask to its own
  block and attends fully to the blocks of earlier ranks. With contiguous shards the last rank
  does ``W`` block products and the first one (no load balancing; see the README).
* GQA: blocks carry ``Hkv`` heads; query heads are grouped against them, never expanded.
* Shards may have different lengths (one small ``all_gather`` of the sizes first); with
  ``is_causal`` each rank's query and key shards must be the same tokens (equal lengths).
* Without an initialised process group, or with one process, the same call is computed
  locally: attention over the tensors given, equal to the ``reference`` backend.

Shape legend: ``B`` batch, ``Hq`` / ``Hkv`` heads, ``T_r`` this rank's tokens, ``D`` / ``Dv``
head dims; ``q (B, Hq, T_r, D)``, ``k (B, Hkv, T_r', D)``, ``v (B, Hkv, T_r', Dv)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist

from attnkit.kernels import KernelCall, kernel
from attnkit.reference import attention, merge_attention
from attnkit.reference.dense import work_dtype

__all__ = [
    "MAX_BLOCK_LOGITS",
    "can_run",
    "chunked_attention",
    "context_parallel_attention",
    "gather_sequence",
    "is_distributed",
    "ring_attention",
    "ring_attention_shards",
    "shard_bounds",
    "shard_sequence",
]


# ---------------------------------------------------------------------------------------------
# Process-group helpers
# ---------------------------------------------------------------------------------------------


def is_distributed(group: Any = None) -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank in ``group``."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _peer(group: Any, index: int) -> int:
    """The global rank of ``group``'s rank ``index`` (what ``P2POp`` takes)."""
    if group is None or group is dist.group.WORLD:
        return index
    return dist.get_global_rank(group, index)


def shard_bounds(length: int, world_size: int, rank: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous shard of ``length`` tokens over
    ``world_size`` ranks; the first ``length % world_size`` ranks get one token more."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size); got rank={rank}, world_size={world_size}")
    base, extra = divmod(length, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_sequence(x: torch.Tensor, dim: int = 2, group: Any = None) -> torch.Tensor:
    """This rank's contiguous shard of the full tensor ``x`` along ``dim`` (the token axis,
    2 for ``(B, H, T, D)``), see :func:`shard_bounds`; ``x`` itself without a process group."""
    if not is_distributed(group):
        return x
    start, stop = shard_bounds(x.shape[dim], dist.get_world_size(group), dist.get_rank(group))
    return x.narrow(dim, start, stop - start)


def _all_sizes(local: torch.Tensor, group: Any) -> torch.Tensor:
    """``(W, n)``: the int64 vector ``local`` of every rank (a tiny all_gather)."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    return torch.stack(parts).cpu()


def gather_sequence(x: torch.Tensor, dim: int = 2, group: Any = None) -> torch.Tensor:
    """Concatenate every rank's shard of ``x`` along ``dim`` in rank order (shards may differ
    in length along ``dim``); ``x`` itself without a process group. Not differentiable."""
    if not is_distributed(group):
        return x
    x = x.contiguous()
    sizes = _all_sizes(torch.tensor([x.shape[dim]], device=x.device), group)[:, 0].tolist()
    longest = max(sizes)
    padded = _pad_to(x, dim, longest)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)


def _pad_to(x: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    if x.shape[dim] == length:
        return x.contiguous()
    shape = list(x.shape)
    shape[dim] = length - x.shape[dim]
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


# ---------------------------------------------------------------------------------------------
# Ring attention on shards
# ---------------------------------------------------------------------------------------------


def _exchange_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool, group: Any) -> list[int]:
    """Check that every rank holds compatible shards; return each rank's key/value length.

    Every rank sees the same gathered sizes, so every rank raises the same ``ValueError``
    (none is left waiting for a peer that gave up)."""
    b, hq, tq, d = q.shape
    hkv, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
    mine = torch.tensor([b, hq, hkv, d, dv, tq, tk, int(is_causal)], dtype=torch.int64, device=q.device)
    every = _all_sizes(mine, group)
    names = ("B", "Hq", "Hkv", "D", "Dv")
    for i, name in enumerate(names):
        col = every[:, i].tolist()
        if len(set(col)) != 1:
            raise ValueError(f"ring attention: every rank must have the same {name}; got {name} per rank = {col}")
    causal = every[:, 7].tolist()
    if len(set(causal)) != 1:
        raise ValueError(f"ring attention: is_causal differs between ranks: {[bool(c) for c in causal]}")
    tqs, tks = every[:, 5].tolist(), every[:, 6].tolist()
    if is_causal and tqs != tks:
        raise ValueError(
            "ring attention with is_causal=True needs each rank's query and key/value shards to be the "
            f"same tokens (equal lengths); got query lengths {tqs} and key/value lengths {tks} per rank"
        )
    return tks


#: Most logits (``B * Hq * rows * Tk`` elements) one dense product may hold at once; a larger
#: block is computed in query-row chunks (64 MiB per float32 copy of the logits; the dense
#: reference holds a few such copies). Without it one rank's block at ``T = 16384``, ``H = 8``
#: needs tens of GiB.
MAX_BLOCK_LOGITS = 1 << 24


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    max_logits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense attention with its LSE (attnkit's reference), computed in query-row chunks so that
    at most ``max_logits`` logits exist at once; rows are independent, so this is the same
    attention (and the same non-finite rule) as one call over all rows.

    With ``is_causal`` (bottom-right aligned, as the reference) a chunk of rows ``[a, b)`` only
    takes the keys ``[0, b + Tk - Tq)`` it may see, so causal chunks also skip the masked work.

    :param q: ``(B, Hq, Tq, D)``; ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``.
    :param max_logits: the logits budget, default :data:`MAX_BLOCK_LOGITS`.
    :returns: ``out (B, Hq, Tq, Dv)`` in ``q.dtype`` and ``lse (B, Hq, Tq)`` (working dtype).
    :raises ValueError: ``max_logits < 1``.
    """
    budget = MAX_BLOCK_LOGITS if max_logits is None else max_logits
    if budget < 1:
        raise ValueError(f"max_logits must be >= 1, got {max_logits}")
    b, hq, tq, _ = q.shape
    tk = k.shape[2]
    if b * hq * tq * tk <= budget or tq <= 1:
        return attention(q, k, v, is_causal=is_causal, scale=scale, return_lse=True)
    rows = max(1, budget // max(1, b * hq * tk))
    outs, lses = [], []
    for start in range(0, tq, rows):
        stop = min(tq, start + rows)
        qc = q[:, :, start:stop]
        if not is_causal:
            o, s = attention(qc, k, v, scale=scale, return_lse=True)
        elif stop + tk - tq >= 1:
            # The chunk's keys end where its last row's view ends: the bottom-right aligned mask
            # of the chunk over those keys is the chunk's rows of the full causal mask.
            n = stop + tk - tq
            o, s = attention(qc, k[:, :, :n], v[:, :, :n], is_causal=True, scale=scale, return_lse=True)
        else:
            # Tq > Tk and no row of the chunk sees a key: one key, masked out for every row.
            none = torch.zeros(stop - start, 1, dtype=torch.bool, device=q.device)
            o, s = attention(qc, k[:, :, :1], v[:, :, :1], mask=none, scale=scale, return_lse=True)
        outs.append(o)
        lses.append(s)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _block(
    qw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the local queries (working dtype) over one key/value block, with LSE
    (in query-row chunks of at most :data:`MAX_BLOCK_LOGITS` logits)."""
    wd = qw.dtype
    return chunked_attention(qw, k.to(wd), v.to(wd), is_causal=causal, scale=scale)


def ring_attention_shards(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    rotate: str = "p2p",
    group: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ring attention of this rank's shards (see the module docstring for the layout).

    Every rank of ``group`` must call it, with shards of the same batch, heads and head dims.

    :param q: ``(B, Hq, T_r, D)``, this rank's queries (tokens ``[offset_r, offset_r + T_r)``).
    :param k: ``(B, Hkv, T_r', D)``, this rank's keys, ``Hq % Hkv == 0`` (never expanded).
    :param v: ``(B, Hkv, T_r', Dv)``.
    :param is_causal: causal over the global sequence (then ``T_r' == T_r`` on every rank).
    :param scale: logit scale, default ``D ** -0.5``.
    :param rotate: ``"p2p"`` (ring of ``batch_isend_irecv``, forward only) or ``"allgather"``
        (differentiable all_gather of every block).
    :param group: the process group, default the world.
    :returns: ``out (B, Hq, T_r, Dv)`` in the working dtype (float32, float64 for float64) and
        ``lse (B, Hq, T_r)``.
    :raises ValueError: ranks disagree on sizes or ``is_causal``, or causal shards differ.
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    wd = work_dtype(q.dtype)
    qw = q.to(wd)
    if not is_distributed(group):
        return _block(qw, k, v, causal=is_causal, scale=scale)
    if rotate not in ("p2p", "allgather"):
        raise ValueError(f"rotate must be 'p2p' or 'allgather', got {rotate!r}")
    lengths = _exchange_shapes(q, k, v, is_causal, group)
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if rotate == "allgather":
        return _allgather(qw, k, v, lengths, rank, world, is_causal, scale, group)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise ValueError("ring attention with rotate='p2p' has no backward pass; use rotate='allgather' for gradients")
    return _p2p(qw, k, v, lengths, rank, world, is_causal, scale, group)


def _p2p(
    qw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    rank: int,
    world: int,
    is_causal: bool,
    scale: float,
    group: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``W - 1`` ring steps: send the block in hand to ``rank + 1``, receive the next one
    from ``rank - 1``, attend to the block in hand while they travel, merge by LSE."""
    send_to, recv_from = _peer(group, (rank + 1) % world), _peer(group, (rank - 1) % world)
    cur_k, cur_v = k.detach().contiguous(), v.detach().contiguous()
    out = lse = None
    for step in range(world):
        src = (rank - step) % world  # whose block is in hand
        pending = []
        if step < world - 1:
            n = lengths[(rank - step - 1) % world]
            nxt_k = cur_k.new_empty((*cur_k.shape[:2], n, cur_k.shape[-1]))
            nxt_v = cur_v.new_empty((*cur_v.shape[:2], n, cur_v.shape[-1]))
            ops = [
                dist.P2POp(dist.isend, cur_k, send_to, group),
                dist.P2POp(dist.isend, cur_v, send_to, group),
                dist.P2POp(dist.irecv, nxt_k, recv_from, group),
                dist.P2POp(dist.irecv, nxt_v, recv_from, group),
            ]
            pending = dist.batch_isend_irecv(ops)
        # Causal: blocks of later ranks are all in the future; the own block is the diagonal.
        if not is_causal or src <= rank:
            o, s = _block(qw, cur_k, cur_v, causal=is_causal and src == rank, scale=scale)
            if out is None:
                out, lse = o, s
            else:
                out, lse = merge_attention([out, o], [lse, s])
        for req in pending:
            req.wait()
        if pending:
            cur_k, cur_v = nxt_k, nxt_v
    assert out is not None and lse is not None  # step 0 is always the own block
    return out, lse


def _allgather(
    qw: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: list[int],
    rank: int,
    world: int,
    is_causal: bool,
    scale: float,
    group: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather every block at once (differentiable; shards padded to the longest and cut back),
    attend to each, merge all partial results by LSE in one call."""
    from torch.distributed.nn.functional import all_gather

    longest = max(lengths)
    with warnings.catch_warnings():
        # torch 2.8+ deprecates it for the private _functional_collectives; it is still the
        # public differentiable all_gather (its backward is a reduce-scatter / all-to-all).
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather", FutureWarning)
        ks = all_gather(_pad_to(k, 2, longest), group=group or dist.group.WORLD)
        vs = all_gather(_pad_to(v, 2, longest), group=group or dist.group.WORLD)
    outs, lses = [], []
    for src in range(world):
        if is_causal and src > rank:
            continue
        kb, vb = ks[src].narrow(2, 0, lengths[src]), vs[src].narrow(2, 0, lengths[src])
        o, s = _block(qw, kb, vb, causal=is_causal and src == rank, scale=scale)
        outs.append(o)
        lses.append(s)
    return merge_attention(outs, lses)


def context_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    is_causal: bool = False,
    scale: float | None = None,
    rotate: str = "p2p",
    group: Any = None,
    return_lse: bool = False,
) -> Any:
    """Attention of full tensors, computed context-parallel: every rank passes the same full
    ``q (B, Hq, T, D)``, ``k (B, Hkv, Tk, D)``, ``v (B, Hkv, Tk, Dv)``; each keeps its
    contiguous shard (:func:`shard_sequence`), runs :func:`ring_attention_shards`, and the
    outputs are gathered back (:func:`gather_sequence`, not differentiable).

    :returns: ``out (B, Hq, T, Dv)`` in ``q.dtype`` on every rank (and ``lse (B, Hq, T)``).
    """
    qs, ks, vs = (shard_sequence(x, 2, group) for x in (q, k, v))
    out, lse = ring_attention_shards(qs, ks, vs, is_causal=is_causal, scale=scale, rotate=rotate, group=group)
    out, lse = gather_sequence(out.to(q.dtype), 2, group), gather_sequence(lse, 2, group)
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


def can_run(call: Any) -> str | None:
    """``None`` when the call can run: always without a process group (or with one rank),
    where the attention is computed locally over the tensors given. Under a process group of
    ``W > 1`` ranks, refuses export (collectives are not traceable), gradients with
    ``rotate="p2p"``, and a device the group's backend does not carry (gloo: CPU, NCCL: CUDA)."""
    if not is_distributed():
        return None
    if call.exporting:
        return "ring attention under torch.distributed cannot be exported (collectives are not traceable)"
    if call.requires_grad and getattr(call.params, "rotate", "p2p") == "p2p":
        return "rotate='p2p' has no backward pass; pass rotate='allgather' for gradients"
    backend = str(dist.get_backend()).lower()
    device = torch.device(call.device).type
    if backend == "nccl" and device != "cuda":
        return f"the process group uses NCCL, which carries CUDA tensors; inputs are on {device}"
    if backend == "gloo" and device != "cpu":
        return f"the process group uses gloo, whose send/recv carry CPU tensors; inputs are on {device} (use NCCL)"
    return None


def distributed_call(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """The registry's call on this rank's shards (the world process group)."""
    return ring_attention_shards(
        call.q, call.k, call.v, is_causal=call.is_causal, scale=call.scale, rotate=call.params.rotate
    )


#: The distributed backend (see :func:`attnkit.kernels.kernel` for the calling convention).
ring_attention = kernel(distributed_call)
