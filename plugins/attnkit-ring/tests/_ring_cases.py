"""One rank of the multi-process ring tests, launched by ``torchrun`` from ``test_ring.py``.

Every rank builds the same full inputs from fixed seeds, runs ring attention on its own
contiguous shard, and compares its rows with single-process float64 attention over the whole
sequence (:func:`attnkit.reference.attention`, the oracle). Each rank writes what it measured
to ``<out>/rank<r>.json``; the test reads and asserts.

Usage: ``torchrun --nproc-per-node 2 _ring_cases.py OUT_DIR GROUP`` with GROUP ``fast`` or
``llama``.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import torch
import torch.distributed as dist

import attnkit
import attnkit_ring.distributed as ring_module
from attnkit.reference import attention as dense
from attnkit_ring.comm import count_sent_bytes, ring_send_bytes
from attnkit_ring.distributed import (
    context_parallel_attention,
    gather_sequence,
    ring_attention_shards,
    shard_bounds,
    shard_sequence,
)


def _qkv(b, hq, hkv, tq, tk, d, dv=None, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, tq, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, tk, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, tk, dv or d, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _err(a, b):
    return float((a.double() - b.double()).abs().max())


def _rows(x, rank, world, dim=2):
    start, stop = shard_bounds(x.shape[dim], world, rank)
    return x.narrow(dim, start, stop - start)


def case_spec(rank, world, *, tq, tk, hq, hkv, causal, rotate, dtype=torch.float64):
    """The registered spec on this rank's shards vs rows of single-process float64 attention."""
    q, k, v = _qkv(2, hq, hkv, tq, tk, 8, dv=6, dtype=dtype)
    want, want_lse = dense(q.double(), k.double(), v.double(), is_causal=causal, return_lse=True)
    qs, ks, vs = (shard_sequence(x) for x in (q, k, v))
    out, lse = attnkit.get_spec("ring")(qs, ks, vs, is_causal=causal, rotate=rotate, return_lse=True)
    return {
        "out": _err(out, _rows(want, rank, world)),
        "lse": _err(lse, _rows(want_lse, rank, world)),
        "shape": list(out.shape),
        "dtype": str(out.dtype),
        "local_tokens": qs.shape[2],
    }


def case_gradients(rank, world, *, causal):
    """rotate='allgather' is differentiable: each rank's shard gradients equal the rows of the
    single-process gradients (the loss is the sum over ranks of each shard's weighted output)."""
    q, k, v = _qkv(1, 4, 2, 12, 12, 8)
    w = torch.randn(1, 4, 12, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    full = [x.clone().requires_grad_() for x in (q, k, v)]
    want = torch.autograd.grad((dense(*full, is_causal=causal) * w).sum(), full)
    shards = [shard_sequence(x).clone().requires_grad_() for x in (q, k, v)]
    out = attnkit.get_spec("ring")(*shards, is_causal=causal, rotate="allgather")
    got = torch.autograd.grad((out * _rows(w, rank, world)).sum(), shards)
    return {name: _err(g, _rows(wg, rank, world)) for name, g, wg in zip("qkv", got, want)}


def case_helper(rank, world):
    """context_parallel_attention: full tensors in, full result out on every rank."""
    q, k, v = _qkv(1, 6, 3, 11, 11, 8)
    want = dense(q, k, v, is_causal=True)
    got = context_parallel_attention(q, k, v, is_causal=True)
    return {"out": _err(got, want), "shape": list(got.shape)}


def case_bytes(rank, world):
    """The bytes the p2p ring posts to batch_isend_irecv, counted, vs the closed form; uneven
    shards, Dv != D, float32."""
    q, k, v = _qkv(2, 4, 2, 13, 13, 8, dv=6, dtype=torch.float32)
    qs, ks, vs = (shard_sequence(x) for x in (q, k, v))
    with count_sent_bytes() as seen:
        ring_attention_shards(qs, ks, vs, is_causal=True, rotate="p2p")
    lengths = [shard_bounds(13, world, r)[1] - shard_bounds(13, world, r)[0] for r in range(world)]
    return {
        "sent": seen.sent,
        "received": seen.received,
        "formula": ring_send_bytes(lengths, rank, batch=2, kv_heads=2, head_dim=8, v_head_dim=6, element_size=4),
        "formula_received": ring_send_bytes(
            lengths, (rank - 1) % world, batch=2, kv_heads=2, head_dim=8, v_head_dim=6, element_size=4
        ),
    }


def case_chunked(rank, world, *, causal):
    """The ring with a logits budget so small that every block is computed in 2-row chunks."""
    saved = ring_module.MAX_BLOCK_LOGITS
    ring_module.MAX_BLOCK_LOGITS = 2 * 4 * 2 * 9  # B * Hq * 2 rows * the 9 keys of a block
    try:
        return case_spec(rank, world, tq=17, tk=17, hq=4, hkv=2, causal=causal, rotate="p2p")
    finally:
        ring_module.MAX_BLOCK_LOGITS = saved


def case_refusals(rank, world):
    """Causal shards of different query / key lengths raise on every rank, naming the sizes;
    p2p with gradients is refused by the registry (the reference is never chosen silently)."""
    res = {}
    q, k, v = _qkv(1, 2, 2, 8 + rank, 8, 4)
    try:
        ring_attention_shards(q, k, v, is_causal=True)
        res["causal_mismatch"] = "no error"
    except ValueError as exc:
        res["causal_mismatch"] = str(exc)
    q, k, v = (x.requires_grad_() for x in _qkv(1, 2, 2, 4, 4, 4))
    try:
        attnkit.get_spec("ring")(q, k, v, is_causal=True)
        res["p2p_grad"] = "no error"
    except NotImplementedError as exc:
        res["p2p_grad"] = str(exc)
    return res


def fast(rank, world):
    res = {}
    for causal in (False, True):
        for rotate in ("p2p", "allgather"):
            tag = f"{'causal' if causal else 'full'}-{rotate}"
            res[f"mha-{tag}"] = case_spec(rank, world, tq=16, tk=16, hq=2, hkv=2, causal=causal, rotate=rotate)
            res[f"gqa-{tag}"] = case_spec(rank, world, tq=16, tk=16, hq=6, hkv=2, causal=causal, rotate=rotate)
            res[f"uneven-{tag}"] = case_spec(rank, world, tq=13, tk=13, hq=4, hkv=1, causal=causal, rotate=rotate)
        res[f"float32-{causal}"] = case_spec(
            rank, world, tq=10, tk=10, hq=4, hkv=2, causal=causal, rotate="p2p", dtype=torch.float32
        )
    res["cross-full-p2p"] = case_spec(rank, world, tq=9, tk=14, hq=4, hkv=2, causal=False, rotate="p2p")
    res["grad-causal"] = case_gradients(rank, world, causal=True)
    res["grad-full"] = case_gradients(rank, world, causal=False)
    res["helper"] = case_helper(rank, world)
    res["refusals"] = case_refusals(rank, world)
    res["bytes"] = case_bytes(rank, world)
    res["chunked-full"] = case_chunked(rank, world, causal=False)
    res["chunked-causal"] = case_chunked(rank, world, causal=True)
    return res


def llama(rank, world):
    """A tiny float64 Llama's prefill, context-parallel through attnkit.patch: each rank feeds
    its contiguous shard of the prompt with its global position ids; the gathered logits equal
    the single-process logits of the same model with attnkit's dense attention."""
    from attnkit_contract.cache_checks import tiny_llama

    model = tiny_llama()
    ids = torch.randint(3, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.no_grad():
        with attnkit.patch(model, attention="dense"):
            want = model(input_ids=ids, use_cache=False).logits
        with attnkit.patch(model, attention="ring"):
            local = model(
                input_ids=shard_sequence(ids, 1), position_ids=shard_sequence(positions, 1), use_cache=False
            ).logits
        # The control: each rank attending only to its own shard is far off on rank 1.
        with attnkit.patch(model, attention="ring", backend="reference"):
            alone = model(
                input_ids=shard_sequence(ids, 1), position_ids=shard_sequence(positions, 1), use_cache=False
            ).logits
    got = gather_sequence(local, 1)
    return {
        "logits": _err(got, want),
        "shard_alone": _err(gather_sequence(alone, 1), want),
        "scale": float(want.abs().max()),
        "local_tokens": local.shape[1],
    }


def main() -> None:
    out_dir, group = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        res = {"world": world, **globals()[group](rank, world)}
    except Exception:  # reported to the test, which shows it
        res = {"error": traceback.format_exc()}
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(res, f, indent=1)
    # Both ranks finish their sends before either tears gloo down: a rank destroying the
    # group while its peer still talks to it aborts ("terminate called without an active
    # exception", SIGABRT), which made this launcher flaky.
    dist.barrier()
    dist.destroy_process_group()
    # Under CPU load about one launch in five aborted after this point, at interpreter
    # teardown ("terminate called without an active exception", SIGABRT from a torch/gloo
    # thread still joinable in a static destructor), with both reports already written. The
    # results are on disk and the group is gone: leave without running those destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
