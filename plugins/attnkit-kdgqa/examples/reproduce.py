"""CPU-scale reproduction of Key-Driven GQA (arXiv:2408.08454): MHA -> GQA up-training.

A tiny ViT (attnkit.models.TinyViT: 4 layers, 8 heads, dim 64, patch 2) is trained on the
8x8 digits with multi-head attention. Copies of it are then converted to 2 KV heads per layer
(K/V mean-pooled per contiguous group of 4 heads) and up-trained for the same number of steps:
static GQA, KDGQA, DGQA (diff and EMA), PGQA, and MHA itself continued as the upper bound.
The paper's claim to compare with: KDGQA / DGQA above GQA after up-training.

    python examples/reproduce.py --seeds 0 1 2 --steps 500 --uptrain-steps 200 --out ./kdgqa-reproduction

Writes ``results.json`` and ``results.md`` (test accuracy mean ± std over seeds, accuracy
right after conversion, attention FLOPs per image, K/V projection parameters, wall time).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from attnkit.models import TinyViT, digits, evaluate, train
from attnkit.modules import MultiHeadAttention, attention_flops, from_pretrained_attention
from attnkit_kdgqa.uptrain import to_gqa

#: KV heads per layer after conversion (the task's setting; ``--kv-heads`` changes it).
KV_HEADS = 2

#: variant -> (spec or None for a plain converter, parameters).
VARIANTS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "MHA (continued)": (None, {}),
    "GQA (mean-pooled)": ("gqa", {}),
    "KDGQA": ("kdgqa", {}),
    "DGQA (diff)": ("dgqa", {"form": "diff"}),
    "DGQA (ema)": ("dgqa", {"form": "ema"}),
    "PGQA": ("pgqa", {}),
}


def build_vit(seed: int) -> TinyViT:
    torch.manual_seed(seed)
    return TinyViT(image_size=8, patch_size=2, channels=1, num_classes=10, dim=64, layers=4, heads=8)


def convert(model: TinyViT, spec: str | None, params: dict[str, Any], kv_heads: int = KV_HEADS) -> TinyViT:
    """A deep copy of ``model`` with every attention layer converted to ``kv_heads``."""
    out = copy.deepcopy(model)
    for i, layer in enumerate(out.attention_modules()):
        if not isinstance(layer, MultiHeadAttention):
            raise TypeError(f"layer {i} is {type(layer).__name__}, expected MultiHeadAttention")
        if spec is None:
            continue
        new: torch.nn.Module
        if spec == "gqa":
            new = to_gqa(layer, kv_heads)
        else:
            new = from_pretrained_attention(spec, layer, kv_heads=kv_heads, **params)
        out.replace_attention(i, new)
    return out


def attention_cost(model: TinyViT) -> tuple[float, int]:
    """Attention-core FLOPs per image and K/V projection parameters, over all layers."""
    tokens = 1 + model.num_patches
    flops = 0.0
    kv_params = 0
    for layer in model.attention_modules():
        flops += attention_flops(layer.config, tokens)  # type: ignore[arg-type]
        kv_params += sum(p.numel() for n, p in layer.named_parameters() if n.split(".")[0] in ("k_proj", "v_proj"))
    return flops, kv_params


def run(
    seeds: list[int],
    steps: int,
    uptrain_steps: int,
    lr: float = 3e-3,
    uptrain_lr: float = 1e-3,
    batch_size: int = 64,
    progress: bool = False,
    variants: list[str] | None = None,
    kv_heads: int = KV_HEADS,
) -> dict[str, Any]:
    """Train, convert and up-train for every seed; returns the JSON-ready results."""
    train_set, test_set = digits(seed=0)
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        base = build_vit(seed)
        t0 = time.perf_counter()
        res = train(base, train_set, steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
        mha_acc = evaluate(base, test_set)
        runs.append(
            {"seed": seed, "variant": "MHA (pre-trained)", "accuracy": mha_acc, "wall_s": time.perf_counter() - t0}
        )
        print(
            f"seed {seed}: MHA pre-trained {steps} steps, test accuracy {mha_acc:.4f} ({res.wall_time_s:.1f} s)",
            flush=True,
        )
        for name in variants or list(VARIANTS):
            spec, params = VARIANTS[name]
            model = convert(base, spec, params, kv_heads)
            at_conversion = evaluate(model, test_set)
            t0 = time.perf_counter()
            train(
                model, train_set, steps=uptrain_steps, lr=uptrain_lr, batch_size=batch_size, seed=seed + 1000,
                progress=progress,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            acc = evaluate(model, test_set)
            flops, kv_params = attention_cost(model)
            # DGQA's learned allocation per layer: shows whether it ever left uniform.
            counts = [getattr(m, "counts", None) for m in model.attention_modules()]
            allocation = [c.tolist() for c in counts if isinstance(c, torch.Tensor)]
            runs.append(
                {
                    "seed": seed,
                    "variant": name,
                    "accuracy_at_conversion": at_conversion,
                    "accuracy": acc,
                    "attention_flops_per_image": flops,
                    "kv_projection_params": kv_params,
                    "wall_s": wall,
                    **({"dgqa_counts_per_layer": allocation} if allocation else {}),
                }
            )
            print(
                f"  {name:18s} at conversion {at_conversion:.4f} -> after {uptrain_steps} steps {acc:.4f} ({wall:.1f} s)"
                + (f", counts {allocation}" if allocation else ""),
                flush=True,
            )
    return {
        "config": {
            "model": "TinyViT(image_size=8, patch_size=2, dim=64, layers=4, heads=8)",
            "kv_heads": kv_heads,
            "seeds": seeds,
            "steps": steps,
            "uptrain_steps": uptrain_steps,
            "lr": lr,
            "uptrain_lr": uptrain_lr,
            "batch_size": batch_size,
            "torch": torch.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        },
        "runs": runs,
        "summary": summarise(runs),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in ["MHA (pre-trained)", *VARIANTS]:
        rows = [r for r in runs if r["variant"] == name]
        if not rows:
            continue
        accs = [r["accuracy"] for r in rows]
        conv = [r["accuracy_at_conversion"] for r in rows if "accuracy_at_conversion" in r]
        out.append(
            {
                "variant": name,
                "n": len(rows),
                "accuracy_mean": statistics.fmean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accuracy_at_conversion_mean": statistics.fmean(conv) if conv else None,
                "attention_flops_per_image": rows[0].get("attention_flops_per_image"),
                "kv_projection_params": rows[0].get("kv_projection_params"),
                "wall_s_mean": statistics.fmean(r["wall_s"] for r in rows),
            }
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"TinyViT on digits, {len(c['seeds'])} seeds ({', '.join(map(str, c['seeds']))}); MHA pre-trained "
        f"{c['steps']} steps, then each variant up-trained {c['uptrain_steps']} steps (lr {c['uptrain_lr']}, "
        f"batch {c['batch_size']}), {c['kv_heads']} KV heads of 8.",
        "",
        "| variant | test accuracy (mean ± std) | at conversion | attention FLOPs / image | K/V proj. params | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        conv = "—" if s["accuracy_at_conversion_mean"] is None else f"{s['accuracy_at_conversion_mean']:.4f}"
        flops = "—" if s["attention_flops_per_image"] is None else f"{s['attention_flops_per_image']:.3g}"
        kvp = "—" if s["kv_projection_params"] is None else str(s["kv_projection_params"])
        lines.append(
            f"| {s['variant']} | {s['accuracy_mean']:.4f} ± {s['accuracy_std']:.4f} | {conv} | {flops} | {kvp} | "
            f"{s['wall_s_mean']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=500, help="MHA pre-training steps")
    ap.add_argument("--uptrain-steps", type=int, default=200, help="up-training steps of every variant")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--uptrain-lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--kv-heads", type=int, default=KV_HEADS, help="KV heads per layer after conversion (of 8)")
    ap.add_argument("--out", type=Path, default=Path("kdgqa-reproduction"))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), metavar="VARIANT")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    args = ap.parse_args(argv)
    if len(args.seeds) < 1:
        raise ValueError("--seeds needs at least one seed")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run(
        args.seeds,
        args.steps,
        args.uptrain_steps,
        args.lr,
        args.uptrain_lr,
        args.batch_size,
        args.progress,
        args.variants,
        args.kv_heads,
    )
    results["config"]["total_wall_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    print(table)
    print(
        f"wrote {args.out / 'results.json'} and {args.out / 'results.md'} in {results['config']['total_wall_s']:.0f} s"
    )
    return results


if __name__ == "__main__":
    main()
