"""``attnkit analyze preplan_anchor``: the model answers seeded reasoning prompts, one more
forward over prompt + answer captures the pattern of the chosen layers, and WAAD / FAI /
preplan and anchor tokens / credit weights are computed per generated token."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from attnkit_preplan_anchor.metrics import (
    CreditResult,
    credit_weights,
    fai,
    group_map,
    head_span,
    middle_layers,
    split_heads,
    waad,
)
from attnkit_preplan_anchor.params import PreplanAnchorParams

__all__ = ["SequenceMetrics", "analyze", "capture_patterns", "reasoning_prompts", "sequence_metrics"]

_NAMES = ["Tom", "Ann", "Lena", "Omar", "Kai", "Mira", "Jon", "Sara"]
_ITEMS = ["apples", "books", "coins", "pencils", "stamps", "marbles"]


def reasoning_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` seeded grade-school word problems asking for step-by-step reasoning."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.sample(_NAMES, 2)
        item = rng.choice(_ITEMS)
        x, y, z = rng.randint(3, 40), rng.randint(2, 20), rng.randint(1, 9)
        kind = rng.randrange(3)
        if kind == 0:
            q = f"{a} has {x} {item}. {a} buys {y} more and then gives {z} to {b}. How many {item} does {a} have now?"
        elif kind == 1:
            q = f"{a} has {x} {item} and {b} has {y} times as many plus {z}. How many {item} do they have together?"
        else:
            q = f"A box holds {y} {item}. {a} fills {z} boxes and has {x} {item} left over. How many {item} did {a} have?"
        out.append(q + " Think step by step, then give the final answer.")
    return out


@dataclass
class SequenceMetrics:
    """Metrics of one sequence: head spans over the stacked heads, the two groups, WAAD/FAI
    over all positions, the credit result over the response."""

    response_start: int
    span: torch.Tensor
    local_heads: torch.Tensor
    global_heads: torch.Tensor
    waad: torch.Tensor
    fai: torch.Tensor
    credit: CreditResult
    avg_local: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        def fl(x: torch.Tensor) -> list[Any]:
            return [None if not math.isfinite(v) else float(v) for v in x.tolist()]

        rs = self.response_start
        return {
            "response_start": rs,
            "head_span": fl(self.span),
            "local_heads": self.local_heads.tolist(),
            "global_heads": self.global_heads.tolist(),
            "waad": fl(self.waad[rs:]),
            "fai": fl(self.fai[rs:]),
            **self.credit.to_dict(),
        }


def sequence_metrics(
    pattern: torch.Tensor,
    response_start: int,
    params: PreplanAnchorParams,
    groups: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> SequenceMetrics:
    """All metrics of one stacked pattern ``(H, T, T)`` (heads of the chosen layers stacked);
    ``groups`` fixes the local/global heads (else they come from this sequence's spans)."""
    span = head_span(pattern, response_start)
    loc, glob = groups if groups is not None else split_heads(span, params.q_head)
    a_loc, a_glob = group_map(pattern, loc), group_map(pattern, glob)
    w = waad(a_loc, params.window)
    f = fai(a_glob, response_start, params.h_lo, params.h_hi)
    if pattern.shape[-1] - response_start < 2:
        raise ValueError(f"need >= 2 response tokens, got T={pattern.shape[-1]}, response_start={response_start}")
    credit = credit_weights(
        w[response_start:], f[response_start:], q=params.q, gamma_amp=params.gamma_amp, alpha=params.alpha, k=params.k
    )
    return SequenceMetrics(response_start, span, loc, glob, w, f, credit, a_loc)


def capture_patterns(model: Any, ids: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """One forward of ``ids`` ``(1, T)`` under ``attnkit.patch`` with the core's Capture on the
    prefill pattern of ``layers`` only; returns ``(len(layers) * H, T, T)`` float64."""
    import attnkit
    from attnkit.runtime.capture import Capture
    from attnkit_preplan_anchor.runtime import pattern_sites

    cap = Capture(pattern_sites(layers))
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[cap]):
        model(input_ids=ids)
    return torch.cat([cap.last(f"blocks.{layer}.attn.hook_pattern")[0] for layer in layers], 0).double()


def _encode(tok: Any, prompt: str) -> torch.Tensor:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        if not isinstance(ids, torch.Tensor):
            ids = ids["input_ids"]
        return ids
    return tok(prompt, return_tensors="pt").input_ids


def _plots(
    out_dir: Path,
    first: SequenceMetrics,
    window: int,
    spans: torch.Tensor,
    groups: Any,
    n_heads: int,
    layers: list[int],
) -> list[Path]:
    from attnkit.figures import figure

    figs = []
    rs = first.response_start
    n = first.waad.numel() - rs
    # 1. the sawtooth: local-head map near the diagonal and WAAD along the answer
    m = min(n, 64)
    sub = first.avg_local[rs : rs + m, rs - 8 if rs >= 8 else 0 : rs + m].float()
    p = out_dir / "waad_sawtooth.png"
    with figure(p, nrows=2, figsize=(8, 7), height_ratios=[2, 1]) as (_fig, (ax0, ax1)):
        ax0.imshow(sub.clamp(min=1e-4).log10().numpy(), aspect="auto", cmap="viridis")
        ax0.set_title("local-head attention near the diagonal (log10), first answer")
        ax0.set_xlabel("key position (from 8 before the answer)")
        ax0.set_ylabel("answer token")
        wr = first.waad[rs:].float()
        ax1.plot(wr.numpy(), lw=1)
        pre = torch.nonzero(first.credit.t_loc).flatten()
        ax1.scatter(pre.numpy(), wr[pre].numpy(), s=10, c="r", label="preplan (top-q |dWAAD|)")
        ax1.set_xlabel("answer token")
        ax1.set_ylabel(f"WAAD (W={window})")
        ax1.legend(fontsize=7)
    figs.append(p)
    # 2. FAI along the generation
    p = out_dir / "fai_along_generation.png"
    with figure(p, figsize=(8, 3)) as (_fig, ax):
        fr = first.fai[rs:].float()
        ax.plot(fr.numpy(), lw=1)
        anc = torch.nonzero(first.credit.t_glob).flatten()
        ax.scatter(anc.numpy(), fr[anc].numpy(), s=10, c="r", label="anchors (top-q FAI)")
        ax.set_xlabel("answer token")
        ax.set_ylabel("FAI")
        ax.set_title("Future Attention Influence along the first answer")
        ax.legend(fontsize=7)
    figs.append(p)
    # 3. head spans, local and global groups
    p = out_dir / "head_span.png"
    with figure(p, figsize=(8, 3)) as (_fig, ax):
        order = torch.argsort(spans)
        colors = [
            "tab:blue"
            if int(i) in set(groups[0].tolist())
            else "tab:red"
            if int(i) in set(groups[1].tolist())
            else "0.7"
            for i in order
        ]
        ax.bar(range(len(order)), spans[order].numpy(), color=colors)
        ax.set_xticks(range(len(order)))
        ax.set_xticklabels([f"{layers[int(i) // n_heads]}.{int(i) % n_heads}" for i in order], rotation=90, fontsize=5)
        ax.set_ylabel("head span d (tokens)")
        ax.set_title("head span: local (blue) and global (red) heads")
    figs.append(p)
    return figs


def analyze(ctx: Any) -> Any:
    from attnkit.analyze import AnalyzeOutcome, Comparison

    params: PreplanAnchorParams = ctx.params
    model, tok = ctx.load_model()
    n_layers = int(model.config.num_hidden_layers)
    n_heads = int(model.config.num_attention_heads)
    layers = list(params.layers) or middle_layers(n_layers)
    bad = [layer for layer in layers if layer >= n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range for a {n_layers}-layer model")
    n_prompts = 2 if ctx.quick else params.n_prompts
    new_tokens = min(params.max_new_tokens, 32) if ctx.quick else params.max_new_tokens
    prompts = ctx.prompts or reasoning_prompts(n_prompts, ctx.seed)
    if ctx.quick:
        prompts = prompts[:n_prompts]
    torch.manual_seed(ctx.seed)
    samples = []
    for prompt in ctx.tqdm(prompts, desc="generate + capture"):
        ids = _encode(tok, prompt)
        kw: dict[str, Any] = {"max_new_tokens": new_tokens, "pad_token_id": tok.eos_token_id}
        kw.update(
            {"do_sample": True, "temperature": params.temperature} if params.temperature > 0 else {"do_sample": False}
        )
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        rs = ids.shape[1]
        if seq.shape[1] - rs < 2:
            continue
        pat = capture_patterns(model, seq, layers)
        with torch.no_grad():
            logits = model(input_ids=seq).logits[0].double()
        # entropy of the distribution that produced token t: logits at t-1
        logp = torch.log_softmax(logits, -1)
        ent = -(logp.exp() * logp).sum(-1)[rs - 1 : -1]
        samples.append((prompt, seq[0], rs, pat, ent))
    if not samples:
        raise ValueError("no sample produced >= 2 answer tokens")
    # head groups from the spans averaged over the samples (stable over the run)
    spans = torch.stack([head_span(p, rs) for _, _, rs, p, _ in samples]).mean(0)
    groups = split_heads(spans, params.q_head)
    gen = torch.Generator().manual_seed(ctx.seed)
    per_sample, credit_json = [], []
    anchor_fai, rand_fai, all_fai = [], [], []
    pre_ent, rand_ent, all_ent = [], [], []
    for prompt, seq, rs, pat, ent in samples:
        m = sequence_metrics(pat, rs, params, groups)
        per_sample.append(m)
        fr = m.fai[rs:]
        ok = torch.isfinite(fr)
        anc = m.credit.t_glob
        anchor_fai += fr[anc].tolist()
        cand = torch.nonzero(ok).flatten()
        pick = cand[torch.randperm(cand.numel(), generator=gen)[: int(anc.sum())]]
        rand_fai += fr[pick].tolist()
        all_fai += fr[ok].tolist()
        pre = m.credit.t_loc
        pre_ent += ent[pre].tolist()
        cand_e = torch.nonzero(torch.isfinite(m.credit.delta)).flatten()
        pick_e = cand_e[torch.randperm(cand_e.numel(), generator=gen)[: int(pre.sum())]]
        rand_ent += ent[pick_e].tolist()
        all_ent += ent.tolist()
        toks = [tok.decode([int(i)]) for i in seq[rs:].tolist()]
        credit_json.append(
            {
                "prompt": prompt,
                "answer_tokens": toks,
                "token_ids": seq[rs:].tolist(),
                **m.to_dict(),
                "entropy": ent.tolist(),
            }
        )
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")  # noqa: E731
    out_dir = Path(ctx.out_dir)
    # credit weights for a training loop
    cw_path = out_dir / "credit_weights.json"
    meta = {
        "paper": "arXiv:2510.13554 v2",
        "model": ctx.model_name,
        "layers": layers,
        "params": {k: getattr(params, k) for k in ("window", "q_head", "h_lo", "h_hi", "q", "gamma_amp", "alpha", "k")},
        "strategies": ["local", "global", "coupled"],
        "note": "gamma_* are per answer token (index 0 = first generated token); multiply the token's advantage by it.",
        "samples": credit_json,
    }
    cw_path.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    rmax = max(m.credit.gamma_coupled.numel() for m in per_sample)
    tensor = torch.ones(len(per_sample), 3, rmax, dtype=torch.float32)
    for i, m in enumerate(per_sample):
        r = m.credit.gamma_coupled.numel()
        tensor[i, 0, :r] = m.credit.gamma_local.float()
        tensor[i, 1, :r] = m.credit.gamma_global.float()
        tensor[i, 2, :r] = m.credit.gamma_coupled.float()
    pt_path = out_dir / "credit_weights.pt"
    torch.save(tensor, pt_path)
    figs = _plots(out_dir, per_sample[0], params.window, spans, groups, n_heads, layers)
    loc_set, glob_set = set(groups[0].tolist()), set(groups[1].tolist())
    n_ans = sum(int(m.credit.gamma_coupled.numel()) for m in per_sample)
    summary = {
        "samples": len(per_sample),
        "answer tokens": n_ans,
        "layers": ",".join(map(str, layers)),
        "mean span local heads": mean([float(spans[i]) for i in loc_set]),
        "mean span global heads": mean([float(spans[i]) for i in glob_set]),
        "mean WAAD": mean([v for m in per_sample for v in m.waad[m.response_start :].tolist()]),
        "mean FAI of anchors": mean(anchor_fai),
        "mean FAI of random tokens": mean(rand_fai),
        "entropy at preplan tokens": mean(pre_ent),
        "mean entropy": mean(all_ent),
    }
    head_rows = [
        [
            f"{layers[int(i) // n_heads]}.{int(i) % n_heads}",
            float(spans[i]),
            "local" if int(i) in loc_set else "global" if int(i) in glob_set else "-",
        ]
        for i in torch.argsort(spans).tolist()
    ]
    comparisons = [
        Comparison(
            "anchor tokens (top-q FAI)",
            "mean FAI",
            mean(anchor_fai),
            mean(rand_fai),
            "random answer tokens, same count",
            baseline=mean(all_fai),
            n=len(anchor_fai),
        ),
        Comparison(
            "preplan tokens (top-q |dWAAD|)",
            "token entropy (nats)",
            mean(pre_ent),
            mean(rand_ent),
            "random answer tokens, same count",
            baseline=mean(all_ent),
            n=len(pre_ent),
        ),
    ]
    paragraphs = [
        f"{len(per_sample)} answers of {ctx.model_name} ({n_ans} tokens), attention of layers {layers} "
        f"({len(layers) * n_heads} heads; local/global = bottom/top {params.q_head:.0%} by head span). "
        "Preplan tokens: top-q |WAAD_t - WAAD_{t+1}|; anchors: top-q FAI. Credit weights per answer token "
        "are in credit_weights.json (with the tokens) and credit_weights.pt (samples x [local, global, coupled] x "
        "answer tokens, padded with 1.0).",
    ]
    return AnalyzeOutcome(
        summary=summary,
        results={
            "layers": layers,
            "head_span": spans.tolist(),
            "local_heads": sorted(loc_set),
            "global_heads": sorted(glob_set),
        },
        paragraphs=paragraphs,
        tables=[(["head (layer.head)", "span d", "group"], head_rows)],
        figures=figs,
        comparisons=comparisons,
        files=[cw_path, pt_path],
    )
