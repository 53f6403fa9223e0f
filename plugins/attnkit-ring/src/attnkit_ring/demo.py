"""Ring attention on every rank of a ``torchrun`` launch, checked against one process.

Run it with ``torchrun --nproc-per-node 2 -m attnkit_ring.demo`` (gloo on CPU, NCCL when
CUDA is available; one GPU per rank, ``cuda:LOCAL_RANK``). Every rank builds the same full
``q, k, v`` from a seed and keeps its contiguous shard; ring attention runs on the shards; the
outputs are gathered and rank 0 compares them with single-process attention over the whole
sequence (the same dense attention in query-row chunks, so ``T = 32768`` fits in memory) and
prints both timings, their ratio, the threads per process and the bytes each rank sends per
ring step. Without ``torchrun`` it runs in one process (computed locally).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from attnkit_ring.comm import ring_send_bytes
from attnkit_ring.distributed import (
    chunked_attention,
    gather_sequence,
    ring_attention_shards,
    shard_bounds,
    shard_sequence,
)


def _shard_len(length: int, world: int, rank: int) -> int:
    start, stop = shard_bounds(length, world, rank)
    return stop - start


def _time(fn, repeat: int, *, collective: bool) -> tuple[float, object]:
    fn()  # warm-up
    best, res = float("inf"), None
    for _ in range(repeat):
        if collective and dist.is_initialized():
            dist.barrier()
        t0 = time.perf_counter()
        res = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=4096, help="global tokens T")
    ap.add_argument("--heads", type=int, default=8, help="query heads Hq")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads Hkv (GQA)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--rotate", choices=("p2p", "allgather"), default="p2p")
    ap.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"), default="float32")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    if "RANK" in os.environ:
        cuda = torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)

    g = torch.Generator().manual_seed(0)
    b, hq, hkv, t, d = args.batch, args.heads, args.kv_heads, args.seq_len, args.head_dim
    q = torch.randn(b, hq, t, d, generator=g).to(device, dtype)
    k = torch.randn(b, hkv, t, d, generator=g).to(device, dtype)
    v = torch.randn(b, hkv, t, d, generator=g).to(device, dtype)
    qs, ks, vs = (shard_sequence(x) for x in (q, k, v))

    def ring():
        out, _ = ring_attention_shards(qs, ks, vs, is_causal=args.causal, rotate=args.rotate)
        return out

    with torch.no_grad():
        t_ring, out = _time(ring, args.repeat, collective=True)
        full = gather_sequence(out.to(dtype))
        t_one = want = None
        if rank == 0:
            one = lambda: chunked_attention(q, k, v, is_causal=args.causal)[0]  # noqa: E731
            t_one, want = _time(one, args.repeat, collective=False)
    if rank == 0:
        err = float((full.double() - want.double()).abs().max())
        lengths = [_shard_len(t, world, r) for r in range(world)]
        steps = ring_send_bytes(lengths, 0, batch=b, kv_heads=hkv, head_dim=d, element_size=q.element_size())
        step_bytes = steps[0] if steps else 0
        backend = dist.get_backend() if dist.is_initialized() else "none"
        print(
            f"ring attention: world={world} ({backend}, {device.type}) B={b} Hq={hq} Hkv={hkv} T={t} D={d} "
            f"causal={args.causal} rotate={args.rotate} {args.dtype} threads/process={torch.get_num_threads()}"
        )
        print(
            f"  shard per rank: {qs.shape[2]} tokens; K+V sent per rank per ring step: {step_bytes / 2**20:.2f} MiB"
            f", {world - 1} ring step(s)"
        )
        print(f"  max |ring - single process| = {err:.2e}")
        print(f"  time: ring {t_ring * 1e3:.1f} ms, single process {t_one * 1e3:.1f} ms, ratio {t_ring / t_one:.2f}")
    if dist.is_initialized():
        dist.barrier()  # every rank done talking before any tears gloo down
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
