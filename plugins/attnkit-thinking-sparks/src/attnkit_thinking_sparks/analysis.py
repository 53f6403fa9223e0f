"""``attnkit analyze thinking_sparks``: which attention heads a post-training stage makes
important.

``--model tiny-gpt`` (default): a tiny transformers Llama is pretrained on the bytes of
Python's documentation (the *base* checkpoint), then post-trained (SFT) on addition written
out step by step, keeping evenly spaced checkpoints. On each checkpoint every head is
zero-ablated in turn on the same addition problems; the importance maps, their change
``E`` (paper Eq. 8), the circuits (top-k heads), and the emergent / retained / pruned heads
follow. The emergent heads are then ablated together on the final checkpoint, beside as many
random heads and the unedited model.

``--model smollm2``: the same importance scan of SmolLM2-135M's 270 heads on few-shot
single-digit addition (one checkpoint: no emergence, only the map and its top heads), and
ablation of the top heads beside random heads on fresh questions.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from attnkit_thinking_sparks import importance as imp
from attnkit_thinking_sparks.params import ThinkingSparksParams
from attnkit_thinking_sparks.plots import effect_heatmap, importance_heatmaps
from attnkit_thinking_sparks.scoring import ablated_metrics, encode_hf, item_scores, random_head_sets
from attnkit_thinking_sparks.tasks import addition_items, docs_text, few_shot_items
from attnkit_thinking_sparks.tinygpt import (
    Checkpoint,
    TaskBatch,
    build_tiny_gpt,
    encode_items,
    lm_windows,
    train_steps,
)

__all__ = ["QUICK", "analyze", "quick_params", "train_checkpoints"]

Head = tuple[int, int]

#: What ``--quick`` changes (a smoke run: the tiny GPT barely learns the task).
QUICK = {"base_steps": 40, "sft_steps": 80, "n_checkpoints": 2, "n_eval": 48, "n_random": 3, "smol_n_eval": 4}
#: SmolLM2 layers ``--quick`` scans.
QUICK_SMOL_LAYERS = (0, 15, 29)
LM_LENGTH = 64


def quick_params(params: ThinkingSparksParams) -> ThinkingSparksParams:
    """``params`` with the :data:`QUICK` sizes, never larger than given."""
    return replace(params, **{k: min(v, getattr(params, k)) for k, v in QUICK.items()})


def _name(head: Head) -> str:
    return f"L{head[0]}H{head[1]}"


def train_checkpoints(
    params: ThinkingSparksParams, seed: int, progress: Any = None
) -> tuple[Any, list[Checkpoint], dict[str, Any]]:
    """Pretrain the tiny GPT, then post-train it; returns ``(model, checkpoints, log)`` with the
    base checkpoint first and the SFT checkpoints at evenly spaced steps."""
    model = build_tiny_gpt(params.n_layers, params.d_model, params.n_heads, seed=seed)
    text = docs_text()
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    base_losses, _ = train_steps(
        model,
        lambda step: lm_windows(text, params.batch_size, LM_LENGTH, g),
        params.base_steps,
        lr=params.lr,
        seed=seed,
        name="base",
        progress=progress,
    )
    base = Checkpoint("base", 0, {k: v.clone() for k, v in model.state_dict().items()})
    t1 = time.perf_counter()
    at = sorted({round(params.sft_steps * (i + 1) / params.n_checkpoints) for i in range(params.n_checkpoints)})

    def sft_batch(step: int) -> TaskBatch:
        if params.replay_every and step % params.replay_every == params.replay_every - 1:
            return lm_windows(text, params.batch_size, LM_LENGTH, g)
        # training problems come from seeds the evaluation never uses (10**6 + seed * 10**5 + step)
        return encode_items(addition_items(params.batch_size, params.digits, 10**6 + seed * 10**5 + step))

    sft_losses, sft = train_steps(
        model,
        sft_batch,
        params.sft_steps,
        lr=params.lr,
        seed=seed + 1,
        checkpoint_at=at,
        name="sft",
        progress=progress,
    )
    log = {
        "base_loss_curve": base_losses,
        "sft_loss_curve": sft_losses,
        "base_train_seconds": t1 - t0,
        "sft_train_seconds": time.perf_counter() - t1,
    }
    return model, [base, *sft], log


def _lm_eval(model: Any, seed: int, n: int) -> float:
    """Next-byte loss of held-out-seeded documentation windows (the base task)."""
    g = torch.Generator().manual_seed(seed + 7919)
    batch = lm_windows(docs_text(), n, LM_LENGTH, g)
    with torch.no_grad():
        loss, _ = item_scores(model, [batch])
    return float(loss.mean())


def _control(
    model: Any,
    batches: list[TaskBatch],
    heads: list[Head],
    n_layers: int,
    n_heads: int,
    params: ThinkingSparksParams,
    seed: int,
    baseline: tuple[float, float],
    label: str,
    n_items: int,
) -> tuple[list[Any], dict[str, Any]]:
    from attnkit.analyze import Comparison

    loss, acc = ablated_metrics(model, batches, heads)
    sets = random_head_sets(n_layers, n_heads, len(heads), params.n_random, seed, exclude=heads)
    rand = [ablated_metrics(model, batches, s) for s in sets]
    r_loss = sum(r[0] for r in rand) / len(rand)
    r_acc = sum(r[1] for r in rand) / len(rand)
    control = f"{len(heads)} random heads (mean of {len(sets)} draws)"
    what = f"zero-ablate {label} ({', '.join(map(_name, heads))})"
    comps = [
        Comparison(what, "exact-match accuracy", acc, r_acc, control, baseline=baseline[1], n=n_items),
        Comparison(what, "target loss (nats/token)", loss, r_loss, control, baseline=baseline[0], n=n_items),
    ]
    detail = {
        "heads": [_name(h) for h in heads],
        "accuracy": acc,
        "loss": loss,
        "random_sets": [[_name(h) for h in s] for s in sets],
        "random_accuracy": [r[1] for r in rand],
        "random_loss": [r[0] for r in rand],
        "baseline_accuracy": baseline[1],
        "baseline_loss": baseline[0],
    }
    return comps, detail


def _analyze_tiny(ctx: Any, params: ThinkingSparksParams) -> Any:
    from attnkit.analyze import AnalyzeOutcome

    out_dir = Path(ctx.out_dir)
    n_layers, n_heads = params.n_layers, params.n_heads
    k = params.circuit_size(n_layers * n_heads)
    if k > n_layers * n_heads:
        raise ValueError(f"top_k must be <= the tiny GPT's {n_layers * n_heads} heads, got {k}")
    model, checkpoints, log = train_checkpoints(params, ctx.seed, progress=ctx.tqdm)
    items = addition_items(params.n_eval, params.digits, seed=ctx.seed)
    batches = [encode_items(items)]

    per_ckpt: list[dict[str, Any]] = []
    maps: list[torch.Tensor] = []
    circuits: list[list[Head]] = []
    for ck in ctx.tqdm(checkpoints, desc="checkpoints"):
        model.load_state_dict(ck.state)
        clean, ablated = imp.ablation_scan(
            model, lambda m: item_scores(m, batches)[0], n_layers, n_heads, progress=ctx.tqdm
        )
        delta = ablated.mean(-1) - clean.mean()
        importance = imp.normalise(delta)
        loss, acc = ablated_metrics(model, batches, [])
        jac = imp.bootstrap_jaccard(clean, ablated, k, seed=ctx.seed)
        maps.append(importance)
        circuits.append(imp.circuit(importance, k))
        per_ckpt.append(
            {
                "name": ck.name,
                "step": ck.step,
                "task_loss": loss,
                "task_accuracy": acc,
                "docs_loss": _lm_eval(model, ctx.seed, 64),
                "delta_loss": delta.tolist(),
                "importance": importance.tolist(),
                "circuit": [_name(h) for h in circuits[-1]],
                "bootstrap_jaccard": jac,
            }
        )
    base_map, final_map = maps[0], maps[-1]
    e_final = imp.effect(base_map, final_map)
    e_mean = torch.stack([imp.effect(base_map, m) for m in maps[1:]]).mean(0)  # Eq. 9
    sets = imp.compare_sets(circuits[0], circuits[-1])
    freq = imp.activation_frequency(circuits, n_layers, n_heads)
    first = imp.first_emergence(circuits, [c.step for c in checkpoints])
    final = per_ckpt[-1]
    baseline = (final["task_loss"], final["task_accuracy"])

    comparisons, controls = [], {}
    if sets.emergent:
        c, controls["emergent"] = _control(
            model,
            batches,
            sets.emergent,
            n_layers,
            n_heads,
            params,
            ctx.seed,
            baseline,
            "the emergent heads",
            len(items),
        )
        comparisons += c
    c, controls["circuit"] = _control(
        model,
        batches,
        circuits[-1],
        n_layers,
        n_heads,
        params,
        ctx.seed + 1,
        baseline,
        f"the final top-{k} heads",
        len(items),
    )
    comparisons += c

    figures = [
        importance_heatmaps(
            maps,
            [f"{c['name']} (acc {c['task_accuracy']:.2f})" for c in per_ckpt],
            out_dir / "importance_per_checkpoint.png",
            suptitle=f"tiny GPT: zero-ablation importance on {params.digits}-digit addition (boxes: final top-{k})",
            marks=circuits[-1],
        ),
        effect_heatmap(
            e_final,
            out_dir / "importance_change.png",
            title=f"E = (I_{checkpoints[-1].name} - I_base) / (sum); boxes: emergent",
            marks=sets.emergent,
        ),
    ]
    head_rows = []
    for ly in range(n_layers):
        for h in range(n_heads):
            head_rows.append(
                [
                    _name((ly, h)),
                    *[round(float(m[ly, h]), 4) for m in maps],
                    round(float(e_final[ly, h]), 3),
                    round(float(freq[ly, h]), 2),
                    first.get((ly, h), "-"),
                ]
            )
    ck_rows = [
        [
            c["name"],
            c["step"],
            round(c["task_loss"], 4),
            round(c["task_accuracy"], 4),
            round(c["docs_loss"], 4),
            " ".join(c["circuit"]),
            f"{c['bootstrap_jaccard'][0]:.2f} +- {c['bootstrap_jaccard'][1]:.2f}",
        ]
        for c in per_ckpt
    ]
    summary: dict[str, Any] = {
        "base_task_accuracy": per_ckpt[0]["task_accuracy"],
        "final_task_accuracy": final["task_accuracy"],
        "base_docs_loss": per_ckpt[0]["docs_loss"],
        "final_docs_loss": final["docs_loss"],
        "circuit_size": k,
        "emergent_heads": " ".join(map(_name, sets.emergent)) or "none",
        "retained_heads": " ".join(map(_name, sets.retained)) or "none",
        "pruned_heads": " ".join(map(_name, sets.pruned)) or "none",
        "mean_effect_E": float(e_final.mean()),
        "final_circuit_jaccard": final["bootstrap_jaccard"][0],
    }
    if "emergent" in controls:
        summary["acc_emergent_ablated"] = controls["emergent"]["accuracy"]
        summary["acc_random_ablated"] = sum(controls["emergent"]["random_accuracy"]) / params.n_random
    results = {
        "checkpoints": per_ckpt,
        "effect_final": e_final.tolist(),
        "effect_mean": e_mean.tolist(),
        "head_sets": sets.to_dict(),
        "activation_frequency": freq.tolist(),
        "first_emergence": {_name(h): s for h, s in first.items()},
        "controls": controls,
        "training": {k2: v for k2, v in log.items() if k2.endswith("seconds")},
        "operator": "zero ablation of hook_z (all positions), teacher-forced target cross-entropy",
    }
    curves = out_dir / "training_curves.json"
    curves.write_text(json.dumps({"base": log["base_loss_curve"], "sft": log["sft_loss_curve"]}))
    paragraphs = [
        f"Tiny GPT: transformers Llama, {n_layers} layers x {n_heads} heads, d_model {params.d_model}; pretrained "
        f"{params.base_steps} steps on the bytes of pydoc_data.topics ({log['base_train_seconds']:.0f} s), then "
        f"post-trained {params.sft_steps} steps on {params.digits}-digit addition written out digit by digit "
        f"({log['sft_train_seconds']:.0f} s"
        + (f"; every {params.replay_every}th step a documentation batch" if params.replay_every else "")
        + ").",
        f"Importance: rise of the teacher-forced target loss when one head's hook_z is zeroed at every position "
        f"(the core's HeadEdit), on {len(items)} addition problems, as a share of the total |dL| (paper Eq. 6-7). "
        f"Circuit = top-{k} heads; emergent = in the final circuit, not the base one. Bootstrap Jaccard: stability "
        "of each circuit when the problems are resampled.",
    ]
    tables = [
        (
            [
                "checkpoint",
                "SFT step",
                "task loss",
                "task accuracy",
                "docs loss",
                f"top-{k} circuit",
                "bootstrap Jaccard",
            ],
            ck_rows,
        ),
        (["head", *[f"I {c.name}" for c in checkpoints], "E final", "circuit frequency", "first emergence"], head_rows),
    ]
    return AnalyzeOutcome(
        summary=summary,
        results=results,
        paragraphs=paragraphs,
        tables=tables,
        figures=figures,
        comparisons=comparisons,
        files=[curves],
    )


def _analyze_smollm2(ctx: Any, params: ThinkingSparksParams) -> Any:
    from attnkit.analyze import AnalyzeOutcome

    out_dir = Path(ctx.out_dir)
    if ctx.prompts:
        raise ValueError(
            "--prompts: thinking_sparks scores its own generated task (it needs each answer); drop --prompts"
        )
    model, tok = ctx.load_model()
    cfg = model.config
    n_layers, n_heads = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    k = params.top_k or 10
    if k > n_layers * n_heads:
        raise ValueError(f"top_k must be <= SmolLM2's {n_layers * n_heads} heads, got {k}")
    items = few_shot_items(params.smol_n_eval, seed=ctx.seed, shots=params.smol_shots)
    held_out = few_shot_items(params.smol_n_eval, seed=ctx.seed + 1, shots=params.smol_shots)
    batches, held = encode_hf(items, tok), encode_hf(held_out, tok)
    layers = QUICK_SMOL_LAYERS if ctx.quick else tuple(range(n_layers))
    heads = [(ly, h) for ly in layers for h in range(n_heads)]
    t0 = time.perf_counter()
    clean, ablated = imp.ablation_scan(
        model, lambda m: item_scores(m, batches)[0], n_layers, n_heads, heads=heads, progress=ctx.tqdm
    )
    scan_s = time.perf_counter() - t0
    delta = ablated.mean(-1) - clean.mean()
    importance = imp.normalise(delta)
    top = imp.circuit(importance, min(k, len(heads)))
    loss, acc = ablated_metrics(model, batches, [])
    baseline = ablated_metrics(model, held, [])
    comparisons, control = _control(
        model, held, top, n_layers, n_heads, params, ctx.seed, baseline, f"the top-{len(top)} heads", len(held_out)
    )
    fig = importance_heatmaps(
        [importance],
        ["SmolLM2-135M"],
        out_dir / "smollm2_importance.png",
        suptitle=f"SmolLM2: zero-ablation importance, {params.smol_shots}-shot single-digit addition (boxes: top-{len(top)})",
        marks=top,
    )
    rows = [[i + 1, _name(h), round(float(delta[h]), 4), round(float(importance[h]), 4)] for i, h in enumerate(top)]
    summary = {
        "task_accuracy": acc,
        "task_loss": loss,
        "heads_scanned": len(heads),
        "top_heads": " ".join(map(_name, top)),
        "top_share": float(sum(float(importance[h]) for h in top)),
        "acc_top_ablated_heldout": control["accuracy"],
        "acc_random_ablated_heldout": sum(control["random_accuracy"]) / len(control["random_accuracy"]),
        "scan_seconds": scan_s,
    }
    paragraphs = [
        f"SmolLM2-135M-Instruct, {n_layers} layers x {n_heads} query heads; {len(items)} {params.smol_shots}-shot "
        "single-digit additions; importance = rise of the answer tokens' cross-entropy when one head's hook_z is "
        "zeroed at every position, as a share of the total |dL|. One checkpoint ships, so no emergence is measured "
        "here. The top heads are chosen on these questions and ablated on as many fresh ones.",
    ]
    if ctx.quick:
        paragraphs.append(f"--quick: layers {', '.join(map(str, layers))} only.")
    return AnalyzeOutcome(
        summary=summary,
        results={
            "delta_loss": [[None if x != x else x for x in row] for row in delta.tolist()],
            "importance": [[None if x != x else x for x in row] for row in importance.tolist()],
            "top_heads": [_name(h) for h in top],
            "control": control,
            "layers_scanned": list(layers),
            "operator": "zero ablation of hook_z (all positions), teacher-forced answer cross-entropy",
        },
        paragraphs=paragraphs,
        tables=[(["rank", "head", "dL (nats)", "importance"], rows)],
        figures=[fig],
        comparisons=comparisons,
    )


def analyze(ctx: Any) -> Any:
    """Entry point of ``attnkit analyze thinking_sparks`` (see the module docstring)."""
    params = ctx.params if ctx.params is not None else ThinkingSparksParams()
    if not isinstance(params, ThinkingSparksParams):
        raise TypeError(f"params must be a ThinkingSparksParams, got {type(params).__name__}")
    if ctx.quick:
        params = quick_params(params)
    if ctx.model_name == "tiny-gpt":
        if ctx.prompts:
            raise ValueError("--prompts: the tiny GPT is scored on its own generated addition task; drop --prompts")
        return _analyze_tiny(ctx, params)
    if ctx.model_name == "smollm2":
        return _analyze_smollm2(ctx, params)
    raise ValueError(f"--model must be tiny-gpt or smollm2, got {ctx.model_name!r}")
