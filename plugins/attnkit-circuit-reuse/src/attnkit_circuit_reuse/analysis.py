"""``attnkit analyze circuit_reuse``: find the IOI and the Colored Objects circuits of a model
by path patching at [END], measure their overlap against chance, then boost and suppress
the reused heads (in both circuits) and compare each task's accuracy with the same edit on
random heads of the same number."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from attnkit.analyze import AnalyzeContext, AnalyzeOutcome, Comparison
from attnkit_circuit_reuse import patching as P
from attnkit_circuit_reuse.circuits import TaskCircuit, accuracy, find_circuit
from attnkit_circuit_reuse.overlap import expected_jaccard, expected_overlap, jaccard, overlap_p_value, share, top_heads
from attnkit_circuit_reuse.params import CircuitReuseParams
from attnkit_circuit_reuse.tasks import TASKS, TaskBatch, encode, make_pairs

__all__ = ["analyze", "edited_accuracy"]

Head = tuple[int, int]
CHANCE = {"ioi": 1 / 2, "colored_objects": 1 / 3}
LABEL = {"ioi": "IOI", "colored_objects": "Colored Objects"}


def _quick(params: CircuitReuseParams, n_layers: int) -> CircuitReuseParams:
    from dataclasses import replace

    return replace(
        params,
        n_prompts=min(params.n_prompts, 4),
        n_eval=min(params.n_eval, 8),
        n_candidates=min(params.n_candidates, 6),
        n_random=min(params.n_random, 2),
        first_layer=max(params.first_layer, (2 * n_layers) // 3),
    )


def edited_accuracy(
    model: Any, states: Sequence[tuple[TaskBatch, P.EndState]], heads: Sequence[Head], factor: float
) -> tuple[float, float]:
    """``(accuracy, mean logit difference)`` with ``heads``' ``hook_z`` at [END] scaled by
    ``factor`` (the core's :class:`~attnkit.runtime.HeadEdit` in the [END] decode step; the
    prompt before it is the unedited run's). No heads: the unedited run."""
    from attnkit.runtime import HeadEdit

    correct, ld, n = 0.0, 0.0, 0
    with torch.no_grad():
        for batch, clean in states:
            edits = [HeadEdit(list(heads), mode="scale", factor=factor)] if heads else []
            logits = P.end_step(model, clean.prefix, clean.last, 1, edits)
            correct += float(accuracy(logits, batch.candidates).sum())
            ld += float(P.logit_diff(logits, batch.answer, batch.wrong).sum())
            n += len(batch)
    return correct / n, ld / n


def _heatmaps(circuits: dict[str, TaskCircuit], out_dir: Path) -> Path:
    from attnkit.figures import figure

    cols = [
        ("activation", "activation patching"),
        ("to_logits", "path -> logits"),
        ("to_receivers", "path -> stage-1 heads"),
    ]
    p = out_dir / "patching_heatmaps.png"
    with figure(p, nrows=len(circuits), ncols=3, figsize=(11, 4.2 * len(circuits)), dpi=80, squeeze=False) as (
        fig,
        axes,
    ):
        for r, (task, c) in enumerate(circuits.items()):
            for j, (attr, title) in enumerate(cols):
                ax = axes[r][j]
                t = getattr(c, attr).numpy()
                lim = max(1e-6, float(abs(t[~(t != t)]).max()) if (t == t).any() else 1.0)
                im = ax.imshow(t, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
                marks = c.stage1 if attr == "to_logits" else c.stage2 if attr == "to_receivers" else c.circuit
                for layer, h in marks:
                    ax.scatter([h], [layer], s=30, facecolors="none", edgecolors="k", linewidths=1.2)
                ax.set_title(f"{LABEL[task]}: {title}", fontsize=9)
                ax.set_xlabel("head")
                ax.set_ylabel("layer")
                fig.colorbar(im, ax=ax, fraction=0.046)
        fig.suptitle(
            "Patching score (LD_patched - LD_clean) / (LD_corrupt - LD_clean) at [END]; circles: kept heads", fontsize=9
        )
    return p


def _overlap_plot(
    circuits: dict[str, TaskCircuit], shape: tuple[int, int], stats: dict[str, float], out_dir: Path
) -> Path:
    import matplotlib.colors
    import numpy as np

    from attnkit.figures import figure

    a, b = (set(circuits[t].circuit) for t in TASKS)
    grid = np.zeros(shape)
    for layer, h in a:
        grid[layer, h] += 1
    for layer, h in b:
        grid[layer, h] += 2
    p = out_dir / "circuit_overlap.png"
    with figure(p, ncols=2, figsize=(9, 4.5), dpi=80, gridspec_kw={"width_ratios": [1.2, 1]}) as (_fig, (ax, bx)):
        cmap = matplotlib.colors.ListedColormap(["#f4f4f4", "#4c72b0", "#dd8452", "#2ca02c"])
        ax.imshow(grid, aspect="auto", cmap=cmap, vmin=-0.5, vmax=3.5, interpolation="nearest")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title("circuit heads: blue IOI only, orange CO only, green both", fontsize=9)
        names = ["Jaccard", "share of IOI\ncircuit in CO"]
        obs = [stats["jaccard"], stats["share"]]
        exp = [stats["jaccard_chance"], stats["share_chance"]]
        x = np.arange(2)
        bx.bar(x - 0.18, obs, 0.36, label="measured")
        bx.bar(x + 0.18, exp, 0.36, label="random head sets (expected)")
        bx.set_xticks(x, names)
        bx.set_ylim(0, 1)
        bx.set_title(f"overlap vs chance (P(>= observed) = {stats['p_value']:.2g})", fontsize=9)
        bx.legend(fontsize=8)
    return p


def _intervention_plot(rows: dict[str, dict[str, Any]], out_dir: Path) -> Path:
    import numpy as np

    from attnkit.figures import figure

    p = out_dir / "interventions.png"
    with figure(p, ncols=len(rows), figsize=(5 * len(rows), 3.8), dpi=80, squeeze=False) as (_fig, axes):
        for ax, (task, r) in zip(axes[0], rows.items()):
            labels = ["unedited", "boost reused", "boost random", "suppress reused", "suppress random"]
            vals = [
                r["baseline"],
                r["boost"],
                float(np.mean(r["boost_random"])),
                r["suppress"],
                float(np.mean(r["suppress_random"])),
            ]
            errs = [0, 0, float(np.std(r["boost_random"])), 0, float(np.std(r["suppress_random"]))]
            colors = ["gray", "#2ca02c", "#9ecae1", "#d62728", "#fdae6b"]
            ax.bar(range(5), vals, yerr=errs, color=colors, capsize=3)
            ax.axhline(CHANCE[task], color="k", ls=":", lw=1, label="chance")
            ax.set_xticks(range(5), labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_ylabel("accuracy")
            ax.set_title(f"{LABEL[task]} (n={r['n']})", fontsize=9)
            ax.legend(fontsize=8)
    return p


def analyze(ctx: AnalyzeContext) -> AnalyzeOutcome:
    """Run the analysis (see the module docstring); writes three PNGs into ``ctx.out_dir``."""
    if ctx.prompts is not None:
        raise ValueError(
            "--prompts: circuit_reuse needs clean / corrupted pairs of two tasks and generates them "
            f"itself (seeded); got a prompt file of {len(ctx.prompts)} prompts"
        )
    params: CircuitReuseParams = ctx.params
    model, tok = ctx.load_model()
    model.eval()
    n_layers, hq = int(model.config.num_hidden_layers), int(model.config.num_attention_heads)
    if ctx.quick:
        params = _quick(params, n_layers)
    if params.first_layer >= n_layers:
        raise ValueError(f"first_layer must be < the model's {n_layers} layers, got {params.first_layer}")
    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def progress(it: Any, desc: str) -> Any:
        return ctx.tqdm(it, desc=desc, leave=False)

    circuits: dict[str, TaskCircuit] = {}
    eval_states: dict[str, list[tuple[TaskBatch, P.EndState]]] = {}
    for task in TASKS:
        batches = encode(make_pairs(task, params.n_prompts, ctx.seed), tok)
        circuits[task] = find_circuit(
            model,
            batches,
            first_layer=params.first_layer,
            top_frac=params.top_frac,
            n_candidates=params.n_candidates,
            receiver_inputs=params.receiver_inputs,
            max_rows=params.max_rows,
            progress=progress,
        )
        held_out = encode(make_pairs(task, params.n_eval, ctx.seed + 1000), tok)
        with torch.no_grad():
            eval_states[task] = [(b, P.end_state(model, b.clean)) for b in held_out]

    # -- overlap ------------------------------------------------------------------------------
    n_pool = (n_layers - params.first_layer) * hq
    ca, cb = circuits["ioi"].circuit, circuits["colored_objects"].circuit
    reused = sorted(set(ca) & set(cb))
    stats = {
        "jaccard": jaccard(ca, cb),
        "jaccard_chance": expected_jaccard(n_pool, len(ca), len(cb)),
        "share": share(ca, cb),
        "share_chance": len(cb) / n_pool,
        "shared": float(len(reused)),
        "shared_chance": expected_overlap(n_pool, len(ca), len(cb)),
        "p_value": overlap_p_value(len(reused), n_pool, len(ca), len(cb)),
    }
    overlap_rows = []
    k = len(circuits["ioi"].stage1)
    for label, ha, hb in (
        ("circuit (stage 1 + 2)", ca, cb),
        ("stage 1: path -> logits", circuits["ioi"].stage1, circuits["colored_objects"].stage1),
        (
            f"top-{k} activation patching",
            top_heads(circuits["ioi"].activation.tolist(), k),
            top_heads(circuits["colored_objects"].activation.tolist(), k),
        ),
    ):
        shared = len(set(ha) & set(hb))
        overlap_rows.append(
            [
                label,
                len(ha),
                len(hb),
                shared,
                round(expected_overlap(n_pool, len(ha), len(hb)), 3),
                round(jaccard(ha, hb), 3),
                round(expected_jaccard(n_pool, len(ha), len(hb)), 3),
                f"{overlap_p_value(shared, n_pool, len(ha), len(hb)):.3g}",
            ]
        )

    # -- interventions --------------------------------------------------------------------------
    paragraphs = []
    edit_heads = reused
    edit_name = "reused heads"
    if not reused:
        edit_heads, edit_name = ca, "IOI circuit heads (no head is in both circuits)"
        paragraphs.append("The two circuits share no head; the interventions scale the IOI circuit's heads instead.")
    rng = random.Random(f"circuit-reuse-{ctx.seed}")
    pool = [
        (layer, h)
        for layer in range(params.first_layer, n_layers)
        for h in range(hq)
        if (layer, h) not in set(edit_heads)
    ]
    randoms = [sorted(rng.sample(pool, len(edit_heads))) for _ in range(params.n_random)]
    comparisons: list[Comparison] = []
    inter: dict[str, dict[str, Any]] = {}
    size = len(edit_heads)
    for task in TASKS:
        states = eval_states[task]
        n_eval = sum(len(b) for b, _ in states)
        base_acc, base_ld = edited_accuracy(model, states, [], 1.0)
        row: dict[str, Any] = {"n": n_eval, "baseline": base_acc, "baseline_ld": base_ld}
        for kind, factor in (("boost", params.boost), ("suppress", params.suppress)):
            acc, ld = edited_accuracy(model, states, edit_heads, factor)
            rand = [edited_accuracy(model, states, r, factor) for r in randoms]
            row[kind], row[f"{kind}_ld"] = acc, ld
            row[f"{kind}_random"] = [a for a, _ in rand]
            row[f"{kind}_random_ld"] = [v for _, v in rand]
            what = f"{kind} x{factor:g} hook_z at [END] of {size} {edit_name}"
            control = f"{size} random heads (mean of {len(randoms)})"
            comparisons.append(
                Comparison(
                    what,
                    f"{LABEL[task]} accuracy",
                    acc,
                    sum(row[f"{kind}_random"]) / len(rand),
                    control,
                    base_acc,
                    n_eval,
                )
            )
            comparisons.append(
                Comparison(
                    what,
                    f"{LABEL[task]} logit diff",
                    ld,
                    sum(row[f"{kind}_random_ld"]) / len(rand),
                    control,
                    base_ld,
                    n_eval,
                )
            )
        inter[task] = row

    figures = [
        _heatmaps(circuits, out_dir),
        _overlap_plot(circuits, (n_layers, hq), stats, out_dir),
        _intervention_plot(inter, out_dir),
    ]

    summary: dict[str, Any] = {}
    for task in TASKS:
        c = circuits[task]
        summary[f"{task}_accuracy_unedited"] = inter[task]["baseline"]
        summary[f"{task}_chance"] = CHANCE[task]
        summary[f"{task}_ld_clean"] = c.ld_clean
        summary[f"{task}_ld_corrupt"] = c.ld_corrupt
        summary[f"{task}_circuit_size"] = len(c.circuit)
    summary.update({f"overlap_{k}": v for k, v in stats.items()})
    summary["reused_heads"] = ", ".join(f"{a}.{b}" for a, b in reused) or "none"

    def fmt(heads: Sequence[Head]) -> str:
        return ", ".join(f"{a}.{b}" for a, b in heads) or "-"

    circuit_rows = [
        [LABEL[t], f"{c.accuracy:.3f}", f"{c.ld_clean:.3f}", f"{c.ld_corrupt:.3f}", fmt(c.stage1), fmt(c.stage2)]
        for t, c in circuits.items()
    ]
    paragraphs[:0] = [
        f"Circuits are found on {params.n_prompts} seeded pairs per task; accuracy and interventions use "
        f"{params.n_eval} other pairs (seed + 1000). Every edit is at the final position ([END]) only. "
        f"Senders: layers {params.first_layer}..{n_layers - 1}; each stage keeps the top "
        f"{params.top_frac:.0%} of {n_pool} heads by |score|. Stage 2 screens the {params.n_candidates} "
        f"heads with the largest activation-patching effect and path-patches them to the stage-1 heads' "
        f"'{params.receiver_inputs}' inputs.",
        "Heads are written layer.head. Chance: IOI 1/2 (IO vs S), Colored Objects 1/3 (the three listed colors).",
    ]
    tables = [
        (
            [
                "task",
                "accuracy (circuit set)",
                "LD clean",
                "LD corrupted",
                "stage 1 (-> logits)",
                "stage 2 (-> stage-1 inputs)",
            ],
            circuit_rows,
        ),
        (
            [
                "head set",
                "|IOI|",
                "|CO|",
                "shared",
                "shared by chance",
                "Jaccard",
                "Jaccard by chance",
                "P(shared >= observed)",
            ],
            overlap_rows,
        ),
    ]
    return AnalyzeOutcome(
        summary=summary,
        results={
            "circuits": {t: c.to_dict() for t, c in circuits.items()},
            "overlap": stats,
            "edited_heads": [list(h) for h in edit_heads],
            "random_heads": [[list(h) for h in r] for r in randoms],
            "interventions": inter,
            "effective_params": repr(params),
        },
        paragraphs=paragraphs,
        tables=tables,
        figures=figures,
        comparisons=comparisons,
    )
