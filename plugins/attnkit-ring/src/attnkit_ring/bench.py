"""Benchmark: ring attention in 1 process vs 2 gloo processes on the same total ``T``.

``python -m attnkit_ring.bench --lengths 8192,16384,32768 --json results/bench.json`` runs,
for every length and for causal and non-causal attention, one after the other (never at the
same time):

1. one process, one thread: the ring code with world size 1 (computed locally: attnkit's
   dense reference in query-row chunks, :func:`attnkit_ring.distributed.chunked_attention`)
   and plain ``torch.nn.functional.scaled_dot_product_attention`` (the flash-style CPU
   kernel, which does not materialise ``T x T``); both outputs are saved;
2. ``torchrun --nproc-per-node 2``: 2 gloo processes, one thread each, ring attention
   (``rotate="p2p"``) on their contiguous shards; the gathered output is compared with both
   single-process results, and the bytes each rank posts to ``batch_isend_irecv`` are
   counted and compared with the closed form (:func:`attnkit_ring.comm.ring_send_bytes`).

The table gives the time of each, the ratio 2-proc / 1-proc, the max errors, the bytes per
ring step and in total per rank, and each process's peak resident memory. Times are the best
of ``--repeat`` calls after a warm-up call at a small length (the large calls take seconds
to minutes; the warm-up only takes the one-off costs: thread pools, gloo's first exchange).

Each worker can also be started by itself (``--worker single`` plainly, ``--worker ring``
under ``torchrun``); the launcher does that with ``sys.executable``.

A 2-core machine cannot show a speed-up: two processes take both cores, and the 1-process
baseline here has one thread. The ratio measures the ring's overhead and load balance, not
scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _inputs(b: int, hq: int, hkv: int, t: int, d: int, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, t, d, generator=g)
    k = torch.randn(b, hkv, t, d, generator=g)
    v = torch.randn(b, hkv, t, d, generator=g)
    return q, k, v


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any, repeat: int, sync: Any = None) -> tuple[list[float], Any]:
    times, res = [], None
    for _ in range(repeat):
        if sync is not None:
            sync()
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return times, res


def _sdpa(q: Any, k: Any, v: Any, causal: bool) -> Any:
    import torch.nn.functional as F

    if k.shape[1] == q.shape[1]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def _worker_single(args: argparse.Namespace) -> dict[str, Any]:
    """One process: the ring code with world size 1, and plain SDPA; saves both outputs."""
    import torch

    from attnkit_ring.distributed import ring_attention_shards

    torch.set_num_threads(args.threads)
    b, hq, hkv, t, d = args.batch, args.heads, args.kv_heads, args.seq_len, args.head_dim
    wq, wk, wv = _inputs(b, hq, hkv, min(t, 512), d, seed=1)
    q, k, v = _inputs(b, hq, hkv, t, d)
    with torch.no_grad():
        ring_attention_shards(wq, wk, wv, is_causal=args.causal)  # warm-up
        _sdpa(wq, wk, wv, args.causal)
        t_ring, (ring_out, _) = _timed(lambda: ring_attention_shards(q, k, v, is_causal=args.causal), args.repeat)
        t_sdpa, sdpa_out = _timed(lambda: _sdpa(q, k, v, args.causal), args.repeat)
    torch.save({"ring1": ring_out, "sdpa": sdpa_out}, args.save)
    return {
        "threads": torch.get_num_threads(),
        "ring1_s": t_ring,
        "sdpa_s": t_sdpa,
        "err_sdpa_vs_ring1": float((sdpa_out.double() - ring_out.double()).abs().max()),
        "peak_rss_mib": _peak_rss_mib(),
    }


def _worker_ring(args: argparse.Namespace) -> dict[str, Any] | None:
    """One rank of ``torchrun``: ring attention on the shards; rank 0 compares and reports."""
    import torch
    import torch.distributed as dist

    from attnkit_ring.comm import count_sent_bytes, ring_send_bytes
    from attnkit_ring.distributed import gather_sequence, ring_attention_shards, shard_sequence

    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    b, hq, hkv, t, d = args.batch, args.heads, args.kv_heads, args.seq_len, args.head_dim
    warm = [shard_sequence(x) for x in _inputs(b, hq, hkv, min(t, 512), d, seed=1)]
    q, k, v = (shard_sequence(x).contiguous() for x in _inputs(b, hq, hkv, t, d))

    def ring() -> Any:
        return ring_attention_shards(q, k, v, is_causal=args.causal, rotate="p2p")[0]

    with torch.no_grad():
        ring_attention_shards(*warm, is_causal=args.causal, rotate="p2p")  # warm-up
        with count_sent_bytes() as seen:
            times, out = _timed(ring, args.repeat, sync=dist.barrier)
        # the call's time is that of its slowest rank
        slowest = torch.tensor(times, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        full = gather_sequence(out)
    lengths = [None] * world
    dist.all_gather_object(lengths, k.shape[2])
    formula = ring_send_bytes(lengths, rank, batch=b, kv_heads=hkv, head_dim=d, element_size=k.element_size())
    # seen.sent holds the repeat calls one after the other, W - 1 steps each
    per_call = [seen.sent[i : i + world - 1] for i in range(0, len(seen.sent), world - 1)] if world > 1 else []
    mine = {
        "rank": rank,
        "local_tokens": q.shape[2],
        "sent_per_step_counted": per_call[0] if per_call else [],
        "sent_per_step_formula": formula,
        "counted_equals_formula": all(c == formula for c in per_call),
        "received_per_step_counted": seen.received[: world - 1],
        "peak_rss_mib": _peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }
    ranks: list[Any] = [None] * world
    dist.all_gather_object(ranks, mine)
    report = None
    if rank == 0:
        ref = torch.load(args.reference) if args.reference else None
        report = {
            "world": world,
            "backend": str(dist.get_backend()),
            "ring2_s": slowest.tolist(),
            "ranks": ranks,
        }
        if ref is not None:
            report["err_ring2_vs_ring1"] = float((full.double() - ref["ring1"].double()).abs().max())
            report["err_ring2_vs_sdpa"] = float((full.double() - ref["sdpa"].double()).abs().max())
        if args.report:
            Path(args.report).write_text(json.dumps(report, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    return report


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _shape_args(args: argparse.Namespace, t: int, causal: bool) -> list[str]:
    return [
        f"--seq-len={t}", f"--heads={args.heads}", f"--kv-heads={args.kv_heads}", f"--head-dim={args.head_dim}",
        f"--batch={args.batch}", f"--repeat={args.repeat}", f"--threads={args.threads}",
        "--causal" if causal else "--no-causal",
    ]  # fmt: skip


def _one_case(args: argparse.Namespace, t: int, causal: bool, tmp: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    me = [sys.executable, "-m", "attnkit_ring.bench"]
    save, report = tmp / "single.pt", tmp / "single.json"
    _run([*me, "--worker=single", *_shape_args(args, t, causal), f"--save={save}", f"--report={report}"], env)
    single = json.loads(report.read_text())
    ring_report = tmp / "ring.json"
    torchrun = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.world}",
        "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
    ]  # fmt: skip
    _run([*torchrun, "-m", "attnkit_ring.bench", "--worker=ring", *_shape_args(args, t, causal),
          f"--reference={save}", f"--report={ring_report}"], {**env, "MASTER_ADDR": "127.0.0.1"})  # fmt: skip
    ring = json.loads(ring_report.read_text())
    save.unlink()
    one, two, sdpa = min(single["ring1_s"]), min(ring["ring2_s"]), min(single["sdpa_s"])
    step = ring["ranks"][0]["sent_per_step_formula"]
    return {
        "T": t,
        "causal": causal,
        "ring1_s": single["ring1_s"],
        "sdpa_s": single["sdpa_s"],
        "ring2_s": ring["ring2_s"],
        "ratio_ring2_over_ring1": two / one,
        "ratio_ring2_over_sdpa": two / sdpa,
        "err_ring2_vs_ring1": ring["err_ring2_vs_ring1"],
        "err_ring2_vs_sdpa": ring["err_ring2_vs_sdpa"],
        "err_sdpa_vs_ring1": single["err_sdpa_vs_ring1"],
        "bytes_per_step_rank0": step[0] if step else 0,
        "bytes_total_per_rank": [sum(r["sent_per_step_counted"]) for r in ring["ranks"]],
        "counted_equals_formula": all(r["counted_equals_formula"] for r in ring["ranks"]),
        "peak_rss_mib": {"single": single["peak_rss_mib"], "ring": [r["peak_rss_mib"] for r in ring["ranks"]]},
        "threads_per_process": {"single": single["threads"], "ring": [r["threads"] for r in ring["ranks"]]},
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| T | causal | 1 proc ring (s) | 1 proc SDPA (s) | 2 proc ring (s) | ratio 2p/1p ring | ratio 2p/SDPA "
        "| max err vs 1p ring | max err vs SDPA | K+V sent per step per rank | total per rank | counted = formula "
        "| load avg before / after |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        mib = r["bytes_per_step_rank0"] / 2**20
        tot = max(r["bytes_total_per_rank"]) / 2**20
        la = r.get("load_average")
        load = f"{la[0][0]:.1f} / {la[1][0]:.1f}" if la else "-"
        lines.append(
            f"| {r['T']} | {'yes' if r['causal'] else 'no'} | {min(r['ring1_s']):.1f} | {min(r['sdpa_s']):.1f} "
            f"| {min(r['ring2_s']):.1f} | {r['ratio_ring2_over_ring1']:.2f} | {r['ratio_ring2_over_sdpa']:.2f} "
            f"| {r['err_ring2_vs_ring1']:.1e} | {r['err_ring2_vs_sdpa']:.1e} | {mib:.0f} MiB | {tot:.0f} MiB "
            f"| {'yes' if r['counted_equals_formula'] else 'NO'} | {load} |"
        )
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def _launch(args: argparse.Namespace) -> None:
    lengths = [int(x) for x in args.lengths.split(",") if x]
    causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal_modes]
    rows: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    result = {
        "command": "python -m attnkit_ring.bench " + " ".join(sys.argv[1:]),
        "machine": _machine(),
        "started": started,
        "complete": False,
        "shape": {"B": args.batch, "Hq": args.heads, "Hkv": args.kv_heads, "D": args.head_dim, "dtype": "float32"},
        "world": args.world,
        "threads_per_process": args.threads,
        "repeat": args.repeat,
        "rotate": "p2p",
        "note": "2-core machine: the 2-process run takes both cores while the 1-process baselines use one "
        "thread, so the ratio is not a speed-up measurement; times are the best of `repeat` calls; "
        "load_average is os.getloadavg() before and after each case (the machine is shared).",
        "rows": rows,
    }

    def write() -> None:  # after every case, so a run cut short keeps what it measured
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="attnkit-ring-bench-") as tmp:
        for t in lengths:
            for causal in causals:
                t0, load0 = time.perf_counter(), list(os.getloadavg())
                r = _one_case(args, t, causal, Path(tmp))
                r["case_wall_s"] = time.perf_counter() - t0
                r["load_average"] = [load0, list(os.getloadavg())]
                rows.append(r)
                write()
                print(
                    f"T={t} causal={causal}: 1p ring {min(r['ring1_s']):.2f} s, 1p SDPA {min(r['sdpa_s']):.2f} s, "
                    f"2p ring {min(r['ring2_s']):.2f} s (ratio {r['ratio_ring2_over_ring1']:.2f}); "
                    f"err {r['err_ring2_vs_ring1']:.1e}; {r['bytes_per_step_rank0'] / 2**20:.0f} MiB/step; "
                    f"case {r['case_wall_s']:.0f} s; load {r['load_average'][1][0]:.1f}",
                    flush=True,
                )
    result["complete"] = True
    write()
    print(_table(rows))
    if args.json:
        print(f"wrote {args.json}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="8192,16384,32768", help="global token counts T, comma-separated")
    ap.add_argument("--causal-modes", choices=("both", "yes", "no"), default="both")
    ap.add_argument("--heads", type=int, default=8, help="query heads Hq")
    ap.add_argument("--kv-heads", type=int, default=8, help="key/value heads Hkv (GQA when < Hq)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--world", type=int, default=2, help="processes of the ring run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--repeat", type=int, default=1, help="timed calls per measurement (best is kept)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--table", default=None, metavar="JSON", help="only print the markdown table of a results file")
    # worker mode (started by the launcher)
    ap.add_argument("--worker", choices=("single", "ring"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seq-len", type=int, default=8192, help=argparse.SUPPRESS)
    ap.add_argument("--causal", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--reference", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--report", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("heads", "kv_heads", "head_dim", "batch", "world", "threads", "repeat"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.heads % args.kv_heads:
        raise ValueError(f"--heads must be a multiple of --kv-heads; got {args.heads} and {args.kv_heads}")
    if args.table:
        print(_table(json.loads(Path(args.table).read_text())["rows"]))
        return
    if args.worker == "single":
        res = _worker_single(args)
        if args.report:
            Path(args.report).write_text(json.dumps(res, indent=1))
        else:
            print(json.dumps(res, indent=1))
        return
    if args.worker == "ring":
        rep = _worker_ring(args)
        if rep is not None and not args.report:
            print(json.dumps(rep, indent=1))
        # The report is written and the group destroyed; leave without the static destructors
        # of torch/gloo threads, which under CPU load sometimes abort at interpreter teardown
        # ("terminate called without an active exception"; see tests/_ring_cases.py).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    _launch(args)


if __name__ == "__main__":
    main()
