"""``attnkit analyze act``: hidden attention sinks per head, a head search on a calibration
split, and held-out accuracy with the searched heads calibrated beside random heads.

1. Sink scan: the unedited model reads the calibration prompts; :class:`SinkScan` counts
   hidden sinks per layer and head under both rules (first token spared), and how often the
   released ``indices[1:]`` would spare a hidden sink because the first token is not a sink.
2. Head search on the calibration split (the released ``calibration.sh`` calibrates one
   head at a time over every layer; that is 270 full evaluations on SmolLM2, so by default
   the search is coarse): each searched layer with all its heads calibrated, then the
   ``refine_top`` best layers head by head. Heads whose single-head calibration beats the
   unedited model are kept, best first, at most ``max_heads``.
3. Held-out split: accuracy unedited, with the kept heads calibrated, with as many random
   heads of the searched layers (``n_random`` draws), and with every head of the searched
   layers calibrated.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from attnkit_act.params import ActParams
from attnkit_act.runtime import AttentionCalibration, SinkScan
from attnkit_act.scoring import Scores, batches, score_items
from attnkit_act.tasks import Item, split_items

__all__ = ["analyze", "random_heads", "search_heads"]


def _heads_dict(pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, h in pairs:
        out.setdefault(layer, []).append(h)
    return {k: sorted(v) for k, v in sorted(out.items())}


def random_heads(layers: tuple[int, ...], n_heads: int, k: int, seed: int) -> list[tuple[int, int]]:
    """``k`` distinct random ``(layer, head)`` of ``layers`` (seeded)."""
    pool = [(layer, h) for layer in layers for h in range(n_heads)]
    if k > len(pool):
        raise ValueError(f"cannot draw {k} random heads from {len(pool)} heads of layers {layers}")
    return sorted(random.Random(seed).sample(pool, k))


def search_heads(
    evaluate: Any,
    layers: tuple[int, ...],
    n_heads: int,
    params: ActParams,
    base: float,
    heads_per_layer: int | None = None,
) -> tuple[list[tuple[int, int]], dict[int, float], dict[tuple[int, int], float]]:
    """The coarse-then-fine search.

    :param evaluate: ``evaluate({layer: [head, ...]}) -> metric`` on the calibration split.
    :param base: the unedited model's metric there.
    :param heads_per_layer: refine only the first this many heads (``--quick``).
    :returns: ``(kept heads best first, layer delta, head delta)``; deltas are metric minus
        ``base``.
    """
    layer_delta = {layer: evaluate({layer: list(range(n_heads))}) - base for layer in layers}
    top = sorted(layers, key=lambda x: (-layer_delta[x], x))[: params.refine_top]
    head_delta: dict[tuple[int, int], float] = {}
    for layer in top:
        for h in range(n_heads if heads_per_layer is None else min(heads_per_layer, n_heads)):
            head_delta[(layer, h)] = evaluate({layer: [h]}) - base
    kept = [lh for lh in sorted(head_delta, key=lambda x: (-head_delta[x], x)) if head_delta[lh] > 0]
    return kept[: params.max_heads], layer_delta, head_delta


def _sink_tokens(tok: Any, items: list[Item], scan: SinkScan, batch_size: int) -> tuple[Counter[str], Counter[str]]:
    """How often each token string is a hidden sink (head-sequence pairs, every layer), and
    how often it occurs."""
    hits: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    n_layers = len(scan.masks)
    for k, (idx, ids, mask) in enumerate(batches(tok, items, batch_size)):
        for row in range(len(idx)):
            toks = [tok.decode([t]) for t in ids[row].tolist()]
            for j, t in enumerate(toks):
                if mask[row, j]:
                    seen[repr(t)] += n_layers
            for layer_masks in scan.masks.values():
                m = layer_masks[k][row]  # (H, T)
                for j in m.any(0).nonzero().flatten().tolist():
                    hits[repr(toks[j])] += int(m[:, j].sum())
    return hits, seen


def _tail_share(scan: SinkScan, tail: int = 3) -> float:
    """Share of hidden sinks (absolute rule) among the last ``tail`` keys, where the causal
    mean rests on ``tail`` queries or fewer."""
    total = last = 0
    for layer_masks in scan.masks.values():
        for m in layer_masks:
            total += int(m.sum())
            last += int(m[..., -tail:].sum())
    return last / total if total else float("nan")


def _mid_sink_head(scan: SinkScan, n_heads: int, tail: int = 3) -> tuple[int, int]:
    """``(layer, head)`` with the most hidden sinks (absolute rule) outside the last ``tail``
    keys over everything :class:`SinkScan` kept (ties: lowest layer, then head)."""
    best, where = -1, (0, 0)
    for layer in sorted(scan.masks):
        per_head = sum(m[..., :-tail].sum(dim=(0, 2)) for m in scan.masks[layer])
        for h in range(min(n_heads, len(per_head))):
            if int(per_head[h]) > best:
                best, where = int(per_head[h]), (layer, h)
    return where


def _plots(
    out_dir: Path, scan: Any, example: dict[str, Any], search: dict[str, Any], acc: dict[str, float]
) -> list[Path]:
    from attnkit.figures import figure

    figs: list[Path] = []
    with figure(out_dir / "hidden_sinks.png", ncols=2, figsize=(9, 5), dpi=80, into=figs) as (fig, axes):
        for ax, grid, title in (
            (axes[0], scan.hidden_abs, "absolute rule (mean > THRES)"),
            (axes[1], scan.hidden_rel, "relative rule (mean > alpha/N)"),
        ):
            im = ax.imshow(grid.numpy(), aspect="auto", cmap="viridis", origin="lower")
            ax.set_title(f"hidden sinks per sequence\n{title}", fontsize=9)
            ax.set_xlabel("head")
            ax.set_ylabel("layer")
            fig.colorbar(im, ax=ax, fraction=0.046)

    if example:
        with figure(out_dir / "example_map.png", figsize=(7, 6), dpi=80, into=figs) as (fig, ax):
            a = example["pattern"].clamp_min(1e-4).log10().numpy()
            ax.imshow(a, cmap="magma", vmin=-4, vmax=0)
            toks = example["tokens"]
            ax.set_xticks(range(len(toks)), toks, rotation=90, fontsize=6)
            ax.set_yticks(range(len(toks)), toks, fontsize=6)
            for j in example["sinks"]:
                ax.axvline(j, color="cyan", lw=0.8, ls="--")
            for j in example["sinks_rel"]:
                ax.axvline(j, color="red", lw=1.2)
            ax.set_title(
                f"layer {example['layer']} head {example['head']}: log10 attention\n"
                "hidden sinks: dashed cyan = absolute rule, solid red = alpha/N rule",
                fontsize=9,
            )

    with figure(out_dir / "head_search.png", ncols=2, figsize=(10, 3.5), dpi=80, into=figs) as (fig, axes):
        ld = search["layer_delta"]
        axes[0].bar([str(k) for k in ld], list(ld.values()), color="tab:blue")
        axes[0].axhline(0, color="k", lw=0.6)
        axes[0].set_title("coarse search: all heads of a layer calibrated", fontsize=9)
        axes[0].set_xlabel("layer")
        axes[0].set_ylabel(f"{search['metric']} - unedited")
        hd = search["head_delta"]
        axes[1].bar([f"{lh[0]}.{lh[1]}" for lh in hd], list(hd.values()), color="tab:orange")
        axes[1].axhline(0, color="k", lw=0.6)
        axes[1].set_title("fine search: one head calibrated", fontsize=9)
        axes[1].set_xlabel("layer.head")
        axes[1].tick_params(axis="x", labelsize=7, rotation=90)

    with figure(out_dir / "heldout_accuracy.png", figsize=(6, 3.2), dpi=80, into=figs) as (fig, ax):
        names = list(acc)
        ax.bar(names, [acc[n] for n in names], color=["gray", "tab:green", "tab:red", "tab:purple"][: len(names)])
        for i, n in enumerate(names):
            ax.text(i, acc[n] + 0.01, f"{acc[n]:.3f}", ha="center", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("held-out accuracy")
        ax.tick_params(axis="x", labelsize=8)
    return figs


def _example(model: Any, tok: Any, item: Item, scan_layer_head: tuple[int, int], params: ActParams) -> dict[str, Any]:
    """The prefill map of one head on one prompt, and its hidden sinks (absolute rule)."""
    import attnkit
    from attnkit.runtime import Capture
    from attnkit_act.sinks import detect_sinks

    layer, head = scan_layer_head
    cap = Capture([f"blocks.{layer}.attn.hook_pattern@prefill"])
    ids = tok(item.prompt, return_tensors="pt").input_ids
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[cap]):
        model(input_ids=ids, logits_to_keep=1)
    pat = cap.first(f"blocks.{layer}.attn.hook_pattern").double()
    kw = {"thres": params.thres, "alpha": params.alpha, "min_queries": params.min_queries}
    sinks = detect_sinks(pat, rule="absolute", **kw)
    sinks_rel = detect_sinks(pat, rule="relative", **kw)
    return {
        "layer": layer,
        "head": head,
        "pattern": pat[0, head],
        "tokens": [tok.decode([t]).replace("\n", "\\n") for t in ids[0].tolist()],
        "sinks": sinks[0, head].nonzero().flatten().tolist(),
        "sinks_rel": sinks_rel[0, head].nonzero().flatten().tolist(),
    }


def analyze(ctx: Any) -> Any:
    """``attnkit analyze act`` (see the module docstring)."""
    from attnkit.analyze import AnalyzeOutcome, Comparison

    params: ActParams = ctx.params
    model, tok = ctx.load_model()
    n_layers = int(model.config.num_hidden_layers)
    n_heads = int(model.config.num_attention_heads)
    layers = params.layers_for(n_layers)
    n_cal, n_test = (params.n_cal, params.n_test) if not ctx.quick else (min(params.n_cal, 8), min(params.n_test, 16))
    if ctx.quick:
        layers = layers[:2]
    cal, test = split_items(n_cal, n_test, ctx.seed, params.task)
    bs = params.batch_size
    metric = params.search_metric

    bar = ctx.tqdm(total=0, desc="act: items scored", unit="item")

    def tick(n: int) -> None:
        bar.update(n)

    def score(items: list[Item], heads: dict[int, list[int]] | None, extra: tuple[Any, ...] = ()) -> Scores:
        analyses = [*extra, *([AttentionCalibration(heads, params)] if heads else [])]
        bar.total += len(items)
        bar.refresh()
        return score_items(model, tok, items, analyses, bs, tick)

    # 1. hidden sinks (and the unedited model on the calibration split, same pass)
    scan = SinkScan(params, keep=True)
    base_cal = score(cal, None, (scan,))
    scanned = scan.result()
    if ctx.prompts:
        # a prompt file replaces the task prompts for the scan only (it has no labels)
        scan = SinkScan(params, keep=True)
        user = [Item(p, ("a", "b"), 0, "prompt") for p in ctx.prompts]
        with torch.no_grad():
            import attnkit

            with attnkit.patch(model, "dense", analyses=[scan]):
                for _, ids, mask in batches(tok, user, bs):
                    pos = (mask.cumsum(-1) - 1).clamp_min(0)
                    model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1)
        scanned = scan.result()
        scan_items = user
    else:
        scan_items = cal
    hits, seen = _sink_tokens(tok, scan_items, scan, bs)
    tail = _tail_share(scan)

    # 2. head search on the calibration split
    base_metric = base_cal.metric(metric)
    if params.head_map:
        kept = [(layer, h) for layer, hs in params.head_map.items() for h in hs]
        layer_delta: dict[int, float] = {}
        head_delta: dict[tuple[int, int], float] = {}
    else:
        kept, layer_delta, head_delta = search_heads(
            lambda heads: score(cal, heads).metric(metric),
            layers,
            n_heads,
            params,
            base_metric,
            heads_per_layer=3 if ctx.quick else None,
        )

    # 3. held-out split
    base_test = score(test, None)
    k = len(kept)
    act_test = score(test, _heads_dict(kept)) if k else base_test
    rand_acc, rand_lp, draws = [], [], []
    if k:
        for d in range(params.n_random):
            pairs = random_heads(layers, n_heads, k, ctx.seed + 1000 + d)
            draws.append(pairs)
            s = score(test, _heads_dict(pairs))
            rand_acc.append(s.accuracy)
            rand_lp.append(s.mean_logprob)
    all_test = score(test, {layer: list(range(n_heads)) for layer in layers}) if params.all_heads_control else None
    bar.close()

    rand_mean = sum(rand_acc) / len(rand_acc) if rand_acc else base_test.accuracy
    rand_lp_mean = sum(rand_lp) / len(rand_lp) if rand_lp else base_test.mean_logprob
    fam_acc = {
        fam: float(base_test.correct[[i for i, it in enumerate(test) if it.family == fam]].double().mean())
        for fam in sorted({it.family for it in test})
    }
    comparisons = [
        Comparison(
            intervention=f"ACT on {k} searched heads",
            metric="held-out accuracy",
            effect=act_test.accuracy,
            control=rand_mean,
            control_name=f"{k} random heads of the searched layers (mean of {len(rand_acc)} draws)",
            baseline=base_test.accuracy,
            n=len(test),
        ),
        Comparison(
            intervention=f"ACT on {k} searched heads",
            metric="held-out mean log p(right label)",
            effect=act_test.mean_logprob,
            control=rand_lp_mean,
            control_name=f"{k} random heads (mean of {len(rand_lp)} draws)",
            baseline=base_test.mean_logprob,
            n=len(test),
        ),
    ]
    if all_test is not None:
        comparisons.append(
            Comparison(
                intervention=f"ACT on every head of layers {list(layers)}",
                metric="held-out accuracy",
                effect=all_test.accuracy,
                control=act_test.accuracy,
                control_name=f"the {k} searched heads",
                baseline=base_test.accuracy,
                n=len(test),
            )
        )

    # the example: the first scanned prompt, in the head with the most hidden sinks away from
    # the last 3 keys (there the causal mean rests on 3 queries or fewer and flags nearly any
    # head: the released rule's blind spot, counted in the summary)
    example = _example(model, tok, scan_items[0], _mid_sink_head(scan, n_heads), params)
    acc = {"unedited": base_test.accuracy, f"ACT {k} searched": act_test.accuracy, f"{k} random": rand_mean}
    if all_test is not None:
        acc["all heads of searched layers"] = all_test.accuracy
    figs = _plots(
        ctx.out_dir,
        scanned,
        example,
        {"layer_delta": layer_delta, "head_delta": head_delta, "metric": metric},
        acc,
    )

    hidden_abs = scanned.hidden_abs[~scanned.hidden_abs.isnan()]
    summary = {
        "held-out accuracy unedited": base_test.accuracy,
        "held-out accuracy ACT (searched heads)": act_test.accuracy,
        "held-out accuracy ACT (random heads)": rand_mean,
        "searched heads kept": k,
        "calibration accuracy unedited": base_cal.accuracy,
        "hidden sinks per head and sequence (abs rule)": float(hidden_abs.mean()) if hidden_abs.numel() else 0.0,
        "hidden sinks per head and sequence (alpha/N rule)": float(scanned.hidden_rel.nanmean()),
        "share of head-sequences whose first token is a sink": float(scanned.first_is_sink.nanmean()),
        "share where indices[1:] spares a hidden sink": float(scanned.escaped.nanmean()),
        "share of hidden sinks on the last 3 tokens": tail,
    }
    if all_test is not None:
        summary["held-out accuracy ACT (all heads of searched layers)"] = all_test.accuracy
    top_tokens = [[t, n, round(n / max(seen[t], 1), 4)] for t, n in hits.most_common(12)]
    search_rows = [[f"layer {layer} (all heads)", round(d, 5)] for layer, d in layer_delta.items()] + [
        [f"{layer}.{h}", round(d, 5)] for (layer, h), d in head_delta.items()
    ]
    paragraphs = [
        f"Task set: {params.task}, generated with seed {ctx.seed}; {len(cal)} calibration items "
        f"(the search's), {len(test)} held-out items (the reported accuracies). Unedited held-out accuracy "
        f"{base_test.accuracy:.3f} ({', '.join(f'{f} {a:.3f}' for f, a in fam_acc.items())}).",
        f"Sinks: causal column mean over the real queries that see each key; absolute rule "
        f"mean > {params.thres}, relative rule mean > {params.alpha}/N. The first token is spared "
        f"({params.spare}). Calibration: beta={params.beta}, rule {params.rule}.",
        f"Search ({metric} on the calibration split, unedited {base_metric:.4f}): layers {list(layers)} with all "
        f"heads calibrated, then the best {params.refine_top} layer(s) head by head; kept heads "
        f"(single-head calibration beat the unedited model): {kept or 'none'}."
        + (" Heads were given (heads=...), no search ran." if params.head_map else ""),
    ]
    if not k:
        paragraphs.append("No head improved the calibration metric: ACT is reported as the unedited model.")
    return AnalyzeOutcome(
        summary=summary,
        results={
            "layers_searched": list(layers),
            "kept_heads": [list(x) for x in kept],
            "random_draws": [[list(x) for x in d] for d in draws],
            "layer_delta": {str(x): d for x, d in layer_delta.items()},
            "head_delta": {f"{x[0]}.{x[1]}": d for x, d in head_delta.items()},
            "family_accuracy_unedited": fam_acc,
            "random_accuracy_draws": rand_acc,
            "scan": scanned.to_dict(),
            "sink_tokens": top_tokens,
        },
        paragraphs=paragraphs,
        tables=[
            (["search candidate", f"{metric} - unedited"], search_rows),
            (["token (repr)", "hidden-sink hits (head x sequence x layer)", "hits per occurrence-layer"], top_tokens),
        ],
        figures=figs,
        comparisons=comparisons,
    )
