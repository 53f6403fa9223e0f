"""CPU-scale reproduction of MoH's claim: with 50-90% of heads active, MoH matches or beats MHA.

A tiny ViT (attnkit.models.TinyViT: 4 layers, 8 heads, dim 64, patch 2, so 17 tokens) is
trained on scikit-learn's 8x8 digits with multi-head attention and with MoH at 50%, 75% and
90% of heads asked (2 shared heads and top-2, top-4, top-5 of 6 routed: 4, 6 and 7 of 8
heads), same seeds, same step budget, same optimiser. Written to ``--out``:

* ``results.json``: every run (accuracy, wall time, aux loss at the start and end, head usage);
* ``results.md``: test accuracy mean ± std over seeds, attention FLOPs per image
  (:func:`attnkit.modules.attention_flops` with the active heads), training wall time.

The load-balance loss enters as ``task + β · mean over layers of l_aux`` with ``β = 0.01``, as
in the paper code (the module's ``aux_loss`` is ``β · l_aux`` per layer; the mean comes from
``train(aux_loss_weight=1 / layers)``).

    python plugins/attnkit-moh/examples/reproduce.py --seeds 0 1 2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from attnkit.models import TinyViT, digits, evaluate, train
from attnkit.modules import ModuleConfig, attention_flops
from attnkit_moh.params import MoHParams, resolve_layout

LAYERS, HEADS, DIM, PATCH, SHARED = 4, 8, 64, 2, 2
TOKENS = 1 + (8 // PATCH) ** 2
#: label -> MoH active_fraction (None: plain multi-head attention).
VARIANTS: dict[str, float | None] = {"MHA": None, "MoH 50%": 0.5, "MoH 75%": 0.75, "MoH 90%": 0.9}


def variant_setup(fraction: float | None) -> tuple[Any, dict[str, Any], int]:
    """``(attention spec, its params, active heads)`` of one variant."""
    if fraction is None:
        return "dense", {}, HEADS
    params = {"shared_heads": SHARED, "active_fraction": fraction}
    return "moh", params, resolve_layout(MoHParams(**params), HEADS).active  # type: ignore[arg-type]


def head_usage(model: TinyViT, images: torch.Tensor) -> list[list[float]]:
    """Per MoH layer, the share of test tokens that picked each routed head."""
    model.eval()
    with torch.no_grad():
        model(images)
    return [
        m.last_head_usage.tolist() for m in model.attention_modules() if getattr(m, "last_head_usage", None) is not None
    ]


def run_one(label: str, fraction: float | None, seed: int, steps: int, data: Any) -> dict[str, Any]:
    (train_set, test_set) = data
    spec, params, active = variant_setup(fraction)
    torch.manual_seed(seed)
    model = TinyViT(layers=LAYERS, heads=HEADS, dim=DIM, patch_size=PATCH, attention=spec, attention_params=params)
    result = train(
        model,
        train_set,
        steps=steps,
        batch_size=64,
        lr=3e-3,
        seed=seed,
        aux_loss_weight=1.0 / LAYERS,
        progress=False,
        warmup_steps=steps // 20,
    )
    accuracy = evaluate(model, test_set)
    aux = result.aux_losses
    window = max(1, len(aux) // 10)
    config = ModuleConfig(dim=DIM, heads=HEADS)
    return {
        "variant": label,
        "seed": seed,
        "active_heads": active,
        "params": params,
        "test_accuracy": accuracy,
        "final_loss": result.final_loss,
        "wall_time_s": result.wall_time_s,
        # The module reports β · l_aux summed over layers; aux_loss_weight = 1/L made it a mean.
        "aux_loss_start": sum(aux[:window]) / window / LAYERS,
        "aux_loss_end": sum(aux[-window:]) / window / LAYERS,
        "attention_flops_per_image": LAYERS * attention_flops(config, TOKENS, active_heads=active),
        "head_usage": head_usage(model, test_set[0]) if fraction is not None else [],
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for label in VARIANTS:
        mine = [r for r in runs if r["variant"] == label]
        if not mine:
            continue
        acc = [r["test_accuracy"] for r in mine]
        rows.append(
            {
                "variant": label,
                "active_heads": f"{mine[0]['active_heads']}/{HEADS}",
                "seeds": len(mine),
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                "attention_flops_per_image": mine[0]["attention_flops_per_image"],
                "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in mine),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], steps: int, seeds: list[int], threads: int) -> str:
    lines = [
        f"TinyViT (4 layers, 8 heads, dim 64, patch 2, {TOKENS} tokens) on sklearn digits; {steps} steps, "
        f"batch 64, AdamW lr 3e-3 cosine; seeds {', '.join(map(str, seeds))}; torch threads {threads}.",
        "",
        "| variant | active heads | test accuracy (mean ± std) | attention FLOPs / image | train wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['active_heads']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | "
            f"{r['attention_flops_per_image'] / 1e3:.1f} k | {r['wall_time_s_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per run (default 200)")
    parser.add_argument("--out", type=Path, default=Path("moh-reproduction"), help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of variants to run")
    args = parser.parse_args(argv)
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown or not chosen:
        parser.error(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    data = digits(seed=0)
    runs = []
    start = time.perf_counter()
    for seed in args.seeds:
        for label in chosen:
            run = run_one(label, VARIANTS[label], seed, args.steps, data)
            runs.append(run)
            print(
                f"{label:8s} seed {seed}: accuracy {run['test_accuracy']:.4f}, {run['wall_time_s']:.1f} s, "
                f"aux {run['aux_loss_start']:.4f} -> {run['aux_loss_end']:.4f}",
                file=sys.stderr,
            )
    rows = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "steps": args.steps,
        "seeds": args.seeds,
        "torch_threads": torch.get_num_threads(),
        "total_wall_time_s": time.perf_counter() - start,
        "summary": rows,
        "runs": runs,
    }
    (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    table = markdown(rows, args.steps, args.seeds, torch.get_num_threads())
    (args.out / "results.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
