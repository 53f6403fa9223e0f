"""``attnkit analyze thought_anchors``: the model writes step-by-step solutions to seeded word
problems; each trace is split into sentences; one forward over prompt + trace gives every
head's sentence x sentence attention (and the baseline logits); receiver heads are the top-k
heads by kurtosis of their vertical scores, averaged over the traces; then the sentence the
receiver heads attend to most (the anchor) is suppressed in every head of every layer, next
to random spans of the same token length, and the KL of the later tokens' distributions to
the unedited run is measured."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnkit_thought_anchors.params import ThoughtAnchorsParams
from attnkit_thought_anchors.prompts import reasoning_prompts
from attnkit_thought_anchors.receivers import receiver_heads, receiver_scores
from attnkit_thought_anchors.runtime import SentenceAttention
from attnkit_thought_anchors.segment import Sentences, segment_tokens
from attnkit_thought_anchors.suppression import EPS_LOG, span_logits, suppression_matrix, token_kl

__all__ = ["Trace", "analyze", "control_spans", "kurtosis_mean", "spearman", "window_effect"]


@dataclass
class Trace:
    """One reasoning trace and what the analysis measured on it."""

    prompt: str
    ids: torch.Tensor  # (1, T): prompt + trace
    start: int  # first trace token
    sentences: Sentences
    base: torch.Tensor  # (T, V) baseline logits
    matrices: torch.Tensor  # (L, H, n, n)
    vertical: torch.Tensor  # (L, H, n)
    kurtosis: torch.Tensor  # (L, H)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spans(self) -> list[tuple[int, int]]:
        return self.sentences.shifted(self.start)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of the finite pairs (average ranks for ties); NaN for fewer
    than three pairs or a constant side."""
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok].double(), y[ok].double()
    if x.numel() < 3:
        return float("nan")

    def ranks(v: torch.Tensor) -> torch.Tensor:
        order = v.argsort()
        r = torch.empty_like(v)
        r[order] = torch.arange(v.numel(), dtype=v.dtype)
        for val in v.unique():  # ties: average rank
            m = v == val
            r[m] = r[m].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float((rx.square().sum() * ry.square().sum()).sqrt())
    return float((rx * ry).sum()) / den if den > 0 else float("nan")


def control_spans(
    length: int, lo: int, hi: int, t: int, avoid: tuple[int, int], count: int, rng: random.Random
) -> list[tuple[int, int]]:
    """``count`` random spans of ``length`` tokens starting in ``[lo, hi]`` (the anchor's own
    eligibility: a sentence with at least ``P`` sentences after it), ending before ``t``, and
    not overlapping ``avoid`` (the anchor). Drawn with replacement; empty when none fits.
    """
    cands = [c for c in range(lo, hi + 1) if c + length < t and (c + length <= avoid[0] or c >= avoid[1])]
    return [(c, c + length) for c in (rng.choice(cands) for _ in range(count))] if cands else []


def window_effect(kl: torch.Tensor, end: int, width: int) -> tuple[float, float]:
    """``(mean KL, mean log(KL + 1e-9))`` over the ``width`` tokens right after a suppressed
    span ending at ``end`` (their distributions: logit rows ``end-1 .. end+width-2``)."""
    part = kl[end - 1 : end - 1 + width]
    if part.numel() != width or width < 1:
        raise ValueError(f"window of {width} tokens after {end} does not fit {kl.shape[0]} positions")
    return float(part.mean()), float(torch.log(part + EPS_LOG).mean())


def _encode(tok: Any, prompt: str) -> torch.Tensor:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt"
        )
        return ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    return tok(prompt, return_tensors="pt").input_ids


def _decoder(tok: Any) -> Any:
    def decode(ids: list[int]) -> str:
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return decode


def _generate(model: Any, tok: Any, prompt: str, params: ThoughtAnchorsParams, new_tokens: int) -> tuple[Any, int]:
    ids = _encode(tok, prompt)
    kw: dict[str, Any] = {"max_new_tokens": new_tokens, "pad_token_id": tok.eos_token_id}
    if params.temperature > 0:
        kw.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
    else:
        kw.update(do_sample=False)
    with torch.no_grad():
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    start = ids.shape[1]
    special = set(getattr(tok, "all_special_ids", []) or []) | {tok.eos_token_id}
    resp = seq[0, start:].tolist()
    cut = next((k for k, i in enumerate(resp) if i in special), len(resp))  # the trace ends at EOS
    return seq[:, : start + cut], start


def _fmt(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


def analyze(ctx: Any) -> Any:
    """The analysis behind ``attnkit analyze thought_anchors`` (see the module docstring)."""
    from attnkit.analyze import AnalyzeOutcome, Comparison

    params: ThoughtAnchorsParams = ctx.params
    torch.manual_seed(ctx.seed)
    model, tok = ctx.load_model()
    n_layers = int(model.config.num_hidden_layers)
    n_heads = int(model.config.num_attention_heads)
    want = 1 if ctx.quick else params.n_prompts
    new_tokens = min(params.max_new_tokens, 96) if ctx.quick else params.max_new_tokens
    n_controls = 1 if ctx.quick else params.n_controls
    full_matrix = params.full_matrix and not ctx.quick
    # a smoke run keeps the fewest sentences that still give two vertical scores per head
    min_sentences = min(params.min_sentences, params.proximity_ignore + 2) if ctx.quick else params.min_sentences
    # generated prompts: a few spare ones for traces too short to have vertical scores
    prompts = list(ctx.prompts) if ctx.prompts else reasoning_prompts(2 * want + 2, ctx.seed)
    decode = _decoder(tok)

    # -- pass 1: traces, sentences, baseline forward with the sentence matrices -------------
    traces: list[Trace] = []
    skipped: list[str] = []
    bar = ctx.tqdm(total=want, desc="traces (generate + sentence attention)")
    for prompt in prompts:
        if len(traces) >= want:
            break
        seq, start = _generate(model, tok, prompt, params, new_tokens)
        if seq.shape[1] - start < 2:
            skipped.append(f"{prompt[:40]}...: fewer than 2 tokens")
            continue
        sents = segment_tokens(seq[0, start:].tolist(), decode)
        if len(sents) < min_sentences:
            skipped.append(f"{prompt[:40]}...: {len(sents)} sentences < min_sentences={min_sentences}")
            continue
        sa = SentenceAttention(params, sents.shifted(start))
        base = span_logits(model, seq, None, extra=[sa])
        res = sa.result()
        assert res is not None  # the forward reached every layer
        traces.append(Trace(prompt, seq, start, sents, base, res.matrices, res.vertical, res.kurtosis))
        bar.update(1)
    bar.close()
    if not traces:
        raise ValueError(
            f"no trace had >= min_sentences={min_sentences} sentences ({'; '.join(skipped)}); "
            "lower min_sentences or raise max_new_tokens"
        )

    # -- receiver heads: mean kurtosis over the traces --------------------------------------
    kstack = torch.stack([tr.kurtosis for tr in traces])  # (N, L, H)
    mean_k = kurtosis_mean(kstack)
    heads = receiver_heads(mean_k, params.top_k)
    if not heads:
        raise ValueError("every head's kurtosis is NaN (constant vertical scores): no receiver head")
    k_all = mean_k[torch.isfinite(mean_k)]
    # split-half reliability of the kurtosis map (the paper's consistency check), when >= 2 traces
    split_r = float("nan")
    if len(traces) >= 2:
        half = len(traces) // 2
        ka, kb = kurtosis_mean(kstack[:half]), kurtosis_mean(kstack[half:])
        split_r = _pearson(ka.flatten(), kb.flatten())

    # -- pass 2: suppression ------------------------------------------------------------------
    rng = random.Random(ctx.seed)
    gen = torch.Generator().manual_seed(ctx.seed)
    P = params.proximity_ignore
    a_common, c_common, a_log, c_log = [], [], [], []
    a_recv, a_randh = [], []
    noop_kl = float("nan")
    rho = []
    for ti, tr in enumerate(ctx.tqdm(traces, desc="suppression")):
        spans = tr.spans
        t = tr.ids.shape[1]
        rec = receiver_scores(tr.vertical, heads)
        rec_f = torch.where(torch.isfinite(rec), rec, torch.full_like(rec, -math.inf))
        anchor = int(rec_f.argmax())
        sa_, ea_ = spans[anchor]
        if ti == 0:  # the unedited run against itself through the same path: exactly 0
            noop_kl = float(token_kl(tr.base, span_logits(model, tr.ids, None), params.kl_temperature).max())
        if full_matrix:
            kl_m, log_m, per_tok = suppression_matrix(model, tr.ids, spans, tr.base, params.kl_temperature)
            kl_anchor = per_tok[anchor]
            out_eff = torch.tensor(
                [float(log_m[i + 1 :, i].mean()) if i + 1 < len(spans) else float("nan") for i in range(len(spans))]
            )
            rho.append(spearman(rec, out_eff))
            tr.extra.update(kl_matrix=kl_m, log_kl_matrix=log_m, outgoing=out_eff)
        else:
            kl_anchor = token_kl(tr.base, span_logits(model, tr.ids, spans[anchor]), params.kl_temperature)
        tr.extra.update(anchor=anchor, receiver_scores=rec, kl_anchor=kl_anchor)
        # controls: same token length, same eligibility as the anchor (>= P sentences after it)
        last_ok = spans[max(0, len(spans) - 1 - P)][0]
        ctrl = control_spans(ea_ - sa_, tr.start, last_ok, t, (sa_, ea_), n_controls, rng)
        kl_ctrls = []
        for cs, ce in ctrl:
            kl_c = token_kl(tr.base, span_logits(model, tr.ids, (cs, ce)), params.kl_temperature)
            kl_ctrls.append(kl_c)
            # the same number of tokens right after each span: distance and count matched
            width = min(t - ea_, t - ce)
            for (eff, logeff), (sink, logsink) in (
                (window_effect(kl_anchor, ea_, width), (a_common, a_log)),
                (window_effect(kl_c, ce, width), (c_common, c_log)),
            ):
                sink.append(eff)
                logsink.append(logeff)
        tr.extra.update(controls=ctrl, kl_controls=kl_ctrls)
        # the anchor suppressed in the receiver heads only, against as many random heads
        k = len(heads)
        perm = torch.randperm(n_layers * n_heads, generator=gen)
        chosen = set(heads)
        rand_heads = [
            (int(i) // n_heads, int(i) % n_heads) for i in perm if (int(i) // n_heads, int(i) % n_heads) not in chosen
        ][:k]
        rows = slice(ea_ - 1, t - 1)
        for hs, sink in ((heads, a_recv), (rand_heads, a_randh)):
            by_layer: dict[int, list[int]] = {}
            for layer, h in hs:
                by_layer.setdefault(layer, []).append(h)
            kl_h = token_kl(tr.base, span_logits(model, tr.ids, (sa_, ea_), heads=by_layer), params.kl_temperature)
            sink.append(float(kl_h[rows].mean()))

    mean = lambda xs: float(sum(xs) / len(xs)) if xs else float("nan")  # noqa: E731
    out_dir = Path(ctx.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from attnkit_thought_anchors.plots import plot_all

    figs = plot_all(out_dir, traces[0], mean_k, heads, full_matrix)

    n_sent = sum(len(tr.sentences) for tr in traces)
    recv_layers = [layer for layer, _ in heads]
    late = sum(1 for layer in recv_layers if layer >= (2 * n_layers) // 3)
    summary: dict[str, Any] = {
        "traces": len(traces),
        "sentences": n_sent,
        "mean kurtosis, receiver heads": mean([float(mean_k[layer, h]) for layer, h in heads]),
        "mean kurtosis, all heads": float(k_all.mean()) if k_all.numel() else float("nan"),
        "top receiver head": f"L{heads[0][0]}H{heads[0][1]}",
        "mean layer of receiver heads": mean([float(x) for x in recv_layers]),
        "receiver heads in the last third of layers": f"{late}/{len(heads)}",
        "kurtosis split-half r (traces)": split_r,
        "KL, anchor suppressed (next tokens)": mean(a_common),
        "KL, random span suppressed (as many next tokens)": mean(c_common),
        "no-op edit max KL": noop_kl,
    }
    if full_matrix:
        summary["Spearman(receiver score, outgoing log-KL), mean over traces"] = mean(
            [r for r in rho if math.isfinite(r)]
        )
    n_pairs = len(a_common)
    comparisons = [
        Comparison(
            "suppress top receiver-attended sentence (all heads, all layers)",
            f"mean KL of the tokens after the span (nats, T={params.kl_temperature})",
            mean(a_common),
            mean(c_common),
            "random span, same token length",
            baseline=0.0 if not math.isfinite(noop_kl) else noop_kl,
            n=n_pairs,
        ),
        Comparison(
            "suppress top receiver-attended sentence (all heads, all layers)",
            "mean log(KL + 1e-9) of the tokens after the span",
            mean(a_log),
            mean(c_log),
            "random span, same token length",
            baseline=math.log(EPS_LOG),
            n=n_pairs,
        ),
        Comparison(
            f"suppress the anchor in the {len(heads)} receiver heads only",
            "mean KL of tokens after the anchor (nats)",
            mean(a_recv),
            mean(a_randh),
            f"{len(heads)} random heads",
            baseline=0.0,
            n=len(a_recv),
        ),
    ]
    first = traces[0]
    sent_rows = []
    for j, ((s, e), text) in enumerate(zip(first.sentences.tokens, first.sentences.strings())):
        rec = first.extra["receiver_scores"]
        out = first.extra.get("outgoing")
        sent_rows.append(
            [
                j,
                f"{s}-{e}",
                _fmt(float(rec[j])),
                _fmt(float(out[j])) if out is not None else "-",
                ("* " if j == first.extra["anchor"] else "") + text[:70].replace("\n", " "),
            ]
        )
    head_rows = [[f"L{layer}H{h}", float(mean_k[layer, h])] for layer, h in heads]
    paragraphs = [
        f"{len(traces)} traces of {ctx.model_name} ({n_sent} sentences); "
        f"{'skipped: ' + '; '.join(skipped) if skipped else 'none skipped'}. "
        f"Vertical scores with proximity_ignore={P}, control_depth={params.control_depth}; receiver heads = "
        f"top {len(heads)} of {n_layers * n_heads} heads by kurtosis averaged over traces.",
        "Suppression masks the sentence's keys before the softmax in every head of every layer; the KL "
        f"KL(p_unedited || p_suppressed) is exact over the vocabulary at temperature {params.kl_temperature}. "
        "The control suppresses a random span of the same token length in the same trace, starting where the anchor "
        "could (at least proximity_ignore sentences before the end); each effect is the mean over the same number "
        "of tokens right after its own span (as many as the shorter remainder), so distance and count match.",
        f"First trace: {first.prompt}",
    ]
    results = {
        "receiver_heads": [list(h) for h in heads],
        "mean_kurtosis": [[_fmt(float(x)) for x in row] for row in mean_k],
        "traces": [
            {
                "prompt": tr.prompt,
                "trace": tr.sentences.text,
                "sentences": tr.sentences.strings(),
                "token_spans": tr.sentences.tokens,
                "receiver_scores": [_fmt(float(x)) for x in tr.extra["receiver_scores"]],
                "anchor": tr.extra["anchor"],
                "controls": [[s - tr.start, e - tr.start] for s, e in tr.extra["controls"]],
                **(
                    {"log_kl_matrix": [[_fmt(float(x)) for x in row] for row in tr.extra["log_kl_matrix"]]}
                    if "log_kl_matrix" in tr.extra
                    else {}
                ),
            }
            for tr in traces
        ],
        "pairs": {"anchor": a_common, "control": c_common, "receiver_heads": a_recv, "random_heads": a_randh},
    }
    return AnalyzeOutcome(
        summary=summary,
        results=results,
        paragraphs=paragraphs,
        tables=[
            (["receiver head", "mean kurtosis"], head_rows),
            (["sentence", "tokens", "receiver score", "outgoing log-KL", "text (* = anchor)"], sent_rows),
        ],
        figures=figs,
        comparisons=comparisons,
    )


def kurtosis_mean(k: torch.Tensor) -> torch.Tensor:
    """Mean over axis 0 of ``k (N, L, H)``, NaN entries left out (NaN where all are)."""
    ok = torch.isfinite(k)
    s = torch.where(ok, k, torch.zeros_like(k)).sum(0) / ok.sum(0).clamp_min(1)
    return torch.where(ok.any(0), s, torch.full_like(s, float("nan")))


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    ok = torch.isfinite(x) & torch.isfinite(y)
    x, y = x[ok].double(), y[ok].double()
    if x.numel() < 3:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    den = float((x.square().sum() * y.square().sum()).sqrt())
    return float((x * y).sum()) / den if den > 0 else float("nan")
