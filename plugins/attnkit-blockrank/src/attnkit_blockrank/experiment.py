"""In-context ranking from attention on SmolLM2, with full causal attention and BlockRank's mask,
and the prefill cost as the number of documents grows.

``python -m attnkit_blockrank.experiment --lists 20 --docs 10`` loads SmolLM2-135M-Instruct
(``attnkit.models.load("smollm2")``) and generates seeded document lists locally
(:func:`make_list`): short factual passages about invented towns, one of which answers the
question. Each prompt is laid out as the paper lays it out, ``[instruction][doc 1]..[doc N]
[query]`` (each segment tokenised on its own, so the segment borders are exact; the query
segment ends with the answer prefix ``The answer is document [``), and prefilled under

- ``full``: ``attnkit.patch(model, "dense")``, ordinary causal attention;
- ``blockrank``: ``attnkit.patch(model, "blockrank", attention_params={"instruction": I,
  "documents": (L1, .., LN)})``: the instruction causal, each document attending to the
  instruction and itself, the query to everything; positions stay sequential;
- ``blockrank_pi``: the same mask with the paper's permutation-invariant positions (every
  document's positions continue right after the instruction). The paper puts the query at
  +16384, beyond SmolLM2's 8192 positions, so here the query continues after the longest
  document (a zero-shot choice).

Scoring is the paper's (``losses.py::compute_auxiliary_attention_loss``, used at inference
too): at a layer, the attention logits of the last ``QUERY_ROWS`` (2) query tokens (the
answer's ``[`` and the token before it), softmax over the document tokens only, mean over
heads and the two rows, summed over each document's tokens. The logits come from the
post-RoPE ``blocks.{l}.attn.hook_q`` / ``hook_k`` sites (captured by :class:`QueryKeyTap`,
which keeps only the last query rows). The query rows see every key under both masks, so the
difference between the conditions is only in how the documents were encoded. The paper's
layer is 20 of Mistral-7B's 32; here the layer at the same depth, ``round(20 / 32 * 30) = 19``
of SmolLM2's 30, is the headline, and every layer is reported. The same scores are also
computed from every row of the query segment (``scores_query`` / ``summary_query``: the
question's own tokens included; not the paper's choice), from the same prefill.

The paper fine-tunes the model (an auxiliary InfoNCE loss on these scores); here SmolLM2 is
used zero-shot, untrained for either the task or the mask.

Zero-shot, the scores carry a strong positional preference (the document next to the query
draws most of the attention). So each summary comes twice: on the raw scores, and
position-calibrated (:func:`position_calibrated`: each score divided by the mean score at its
position over the other lists; the answer's position is uniform, so that mean is the model's
positional preference with the content averaged out). The calibration is post hoc, from the
stored scores, and is not the paper's.

Reported per condition: accuracy@1 and MRR of the relevant document; for the BlockRank
conditions, agreement with the full model's own ranking (top-1 agreement, Kendall tau of the
score vectors, MRR of full's top-1 in BlockRank's ranking); chance in closed form (1/N, and
``H_N / N`` for the MRR of a random ranking).

The cost section (``--cost-docs 10,20,40,80``) times a prefill of the whole model under ``full``
and ``blockrank`` on lists of each size up to ``--prefill-max-docs`` (40), and the attention
kernel alone at the model's shapes
(9 query / 3 KV heads, head dim 64) on the same layouts: dense causal SDPA against the
blockrank numba kernel, on ``--threads`` threads. Beside the clock it reports the exact
number of (query, key) pairs each mask allows (:func:`attended_pairs`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnkit.hookspecs import hookimpl

__all__ = [
    "PAPER_LAYER",
    "QUERY_ROWS",
    "Layout",
    "QueryKeyTap",
    "RankingList",
    "attended_pairs",
    "chance",
    "doc_scores",
    "kendall_tau",
    "layout",
    "main",
    "make_list",
    "paper_layer",
    "permutation_invariant_positions",
    "position_calibrated",
    "rank_of",
    "summarise",
]

#: The paper's scoring layer (``aux_layer_idx``) and its model's depth (Mistral-7B).
PAPER_LAYER, PAPER_DEPTH = 20, 32
#: Query rows the paper scores from: the answer's first token and the one before it.
QUERY_ROWS = 2

_SYLLABLES = (
    "ka", "lo", "ven", "dra", "mir", "tas", "quo", "bel", "nor", "ith",
    "zan", "ru", "sel", "gar", "pho", "ul", "ten", "vyr", "om", "esk",
)  # fmt: skip
_KINDS = ("harbour town", "mountain village", "river city", "market town", "fishing village", "mining town")
_GOODS = (
    "copper", "salt", "amber", "wool", "glass", "honey", "timber", "silk", "tin", "pepper",
    "marble", "linen", "cider", "clay pots", "saffron", "rope", "paper", "olive oil", "iron nails", "dried fish",
    "leather", "barley", "indigo", "soap", "candles", "slate", "cheese", "lace", "pearls", "walnuts",
)  # fmt: skip
_FESTIVALS = ("lantern", "harvest", "kite", "river", "bell", "mask", "bread", "lamp", "snow", "boat")


@dataclass(frozen=True)
class RankingList:
    """One in-context ranking problem: the texts of its segments and the answer.

    :ivar relevant: index (0-based) of the document that answers the question.
    :ivar kind: ``"by_name"`` (the question names the town) or ``"by_export"`` (it names
        only what the town exports).
    """

    instruction: str
    documents: tuple[str, ...]
    query: str
    relevant: int
    kind: str


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def make_list(num_documents: int, seed: int, *, kind: str | None = None) -> RankingList:
    """A seeded list of ``num_documents`` passages about invented towns and a question that
    exactly one of them answers (its town's name, or what only that town exports).

    :param kind: ``"by_name"``, ``"by_export"`` or ``None`` (chosen by the seed).
    :raises ValueError: for ``num_documents < 1`` or an unknown ``kind``.
    """
    if isinstance(num_documents, bool) or not isinstance(num_documents, int) or num_documents < 1:
        raise ValueError(f"num_documents must be an int >= 1, got {num_documents!r}")
    if kind not in (None, "by_name", "by_export"):
        raise ValueError(f"kind must be 'by_name', 'by_export' or None, got {kind!r}")
    rng = random.Random(seed)
    kind = kind or rng.choice(("by_name", "by_export"))
    taken: set[str] = set()
    regions = [_name(rng, taken) for _ in range(3)]
    relevant = rng.randrange(num_documents)
    answer_export = rng.choice(_GOODS)
    others = [g for g in _GOODS if g != answer_export]
    years = rng.sample(range(1150, 1900), num_documents)
    docs, names = [], []
    for i in range(num_documents):
        name = _name(rng, taken)
        names.append(name)
        export = answer_export if i == relevant else rng.choice(others)
        first = f"{name} is a {rng.choice(_KINDS)} in the {rng.choice(regions)} region, founded in {years[i]}."
        second = f"Its main export is {export}, sold at markets across the region."
        third = f"Every spring it holds a {rng.choice(_FESTIVALS)} festival, and about {rng.randrange(2, 90) * 100} people live there."
        sentences = [first, second, third] if rng.random() < 0.5 else [first, third, second]
        docs.append(f"[{i + 1}] " + " ".join(sentences) + "\n")
    instruction = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        f"Here are {num_documents} documents, each marked with its number in brackets. "
        "Find the document that answers the question at the end.\n\n"
    )
    if kind == "by_name":
        question = f"What is the main export of {names[relevant]}?"
    else:
        question = f"Which town's main export is {answer_export}?"
    query = (
        f"\nQuestion: {question}\nWhich document answers the question?<|im_end|>\n"
        "<|im_start|>assistant\nThe answer is document ["
    )
    return RankingList(instruction, tuple(docs), query, relevant, kind)


@dataclass(frozen=True)
class Layout:
    """A tokenised list: the token ids of every segment, concatenated.

    :ivar instruction: tokens of the instruction; ``documents`` each document's count;
        ``query`` the query segment's (answer prefix included).
    """

    input_ids: tuple[int, ...]
    instruction: int
    documents: tuple[int, ...]
    query: int

    @property
    def bounds(self) -> tuple[int, ...]:
        """``(I, b1, .., bN)``: where each document starts after the instruction, and ``bN``
        where the query starts (as :func:`attnkit_blockrank.params.segment_bounds`)."""
        out = [self.instruction]
        for n in self.documents:
            out.append(out[-1] + n)
        return tuple(out)

    @property
    def attention_params(self) -> dict[str, Any]:
        """The ``blockrank`` spec's parameters for this layout (the query takes the rest)."""
        return {"instruction": self.instruction, "documents": self.documents}


def layout(tokenizer: Any, item: RankingList) -> Layout:
    """Tokenise each segment of ``item`` on its own (no special tokens added) and concatenate.

    :raises ValueError: when a document or the query tokenises to nothing.
    """

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    inst = ids(item.instruction)
    docs = [ids(d) for d in item.documents]
    query = ids(item.query)
    empty = [i for i, d in enumerate(docs) if not d]
    if empty or not query:
        raise ValueError(f"every document and the query need >= 1 token; empty documents {empty}, query {len(query)}")
    flat = [*inst, *(t for d in docs for t in d), *query]
    return Layout(tuple(flat), len(inst), tuple(len(d) for d in docs), len(query))


def permutation_invariant_positions(lay: Layout) -> list[int]:
    """Position ids: the instruction ``0..I-1``, every document ``I..I+L_d-1`` (all start
    right after the instruction), the query after the longest document (the paper's layout
    with the query's +16384 offset replaced by ``I + max L_d``)."""
    pos = list(range(lay.instruction))
    for n in lay.documents:
        pos += range(lay.instruction, lay.instruction + n)
    start = lay.instruction + max(lay.documents, default=0)
    pos += range(start, start + lay.query)
    return pos


def attended_pairs(instruction: int, documents: Sequence[int], query: int, *, causal: bool = True) -> int:
    """(query, key) pairs BlockRank's mask allows, in closed form: ``I(I+1)/2 + sum_d (L_d I +
    L_d(L_d+1)/2) + sum over query rows of the keys before them`` when causal."""
    n_docs = sum(documents)
    t = instruction + n_docs + query
    if causal:
        tri = lambda n: n * (n + 1) // 2  # noqa: E731
        return tri(instruction) + sum(n * instruction + tri(n) for n in documents) + tri(t) - tri(t - query)
    return instruction**2 + sum(n * (instruction + n) for n in documents) + query * t


def doc_scores(q_rows: Any, k: Any, lay: Layout, *, scale: float | None = None) -> Any:
    """The paper's document scores at one layer: ``q_rows (B, Hq, R, D)`` (the last query
    rows, post-RoPE), ``k (B, Hkv, T, D)``; logits softmaxed over the document tokens only,
    mean over heads and rows, summed per document. Returns ``(B, N)`` float64."""
    import torch

    if q_rows.dim() != 4 or k.dim() != 4 or q_rows.shape[-1] != k.shape[-1] or q_rows.shape[1] % k.shape[1]:
        raise ValueError(
            f"q_rows (B, Hq, R, D) and k (B, Hkv, T, D) with Hq % Hkv == 0; got {tuple(q_rows.shape)}, {tuple(k.shape)}"
        )
    bounds = lay.bounds
    if k.shape[2] != bounds[-1] + lay.query:
        raise ValueError(f"k has T={k.shape[2]} tokens but the layout has {bounds[-1] + lay.query}")
    b, hq, r, d = q_rows.shape
    hkv = k.shape[1]
    scale = d**-0.5 if scale is None else scale
    kd = k[:, :, bounds[0] : bounds[-1]].to(torch.float64)
    qd = q_rows.to(torch.float64).reshape(b, hkv, hq // hkv, r, d)
    logits = torch.einsum("bhgrd,bhtd->bhgrt", qd, kd) * scale
    probs = torch.softmax(logits, dim=-1).reshape(b, hq, r, -1).mean(dim=(1, 2))  # (B, doc tokens)
    return torch.stack([probs[:, a - bounds[0] : e - bounds[0]].sum(-1) for a, e in itertools.pairwise(bounds)], dim=-1)


class QueryKeyTap:
    """Run-time analysis keeping, per layer, the last ``rows`` query rows (``hook_q``) and
    every key (``hook_k``) of the prefill, post-RoPE, in float32 on the CPU."""

    name = "query_key_tap"

    def __init__(self, rows: int = QUERY_ROWS, layers: Sequence[int] | None = None) -> None:
        self.rows = rows
        self.layers = None if layers is None else sorted(set(layers))
        self.q: dict[int, Any] = {}
        self.k: dict[int, Any] = {}

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        if self.layers is None:
            return ["blocks.{l}.attn.hook_q@prefill", "blocks.{l}.attn.hook_k@prefill"]
        return [f"blocks.{i}.attn.{s}@prefill" for i in self.layers for s in ("hook_q", "hook_k")]

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: Any, run: Any) -> None:
        import torch

        assert layer is not None
        if site.endswith("hook_q"):
            self.q[layer] = tensor[:, :, -self.rows :].detach().to("cpu", torch.float32, copy=True)
        else:
            self.k[layer] = tensor.detach().to("cpu", torch.float32, copy=True)


def rank_of(scores: Sequence[float], index: int) -> int:
    """1-based rank of ``scores[index]``: one plus the documents scoring strictly higher."""
    return 1 + sum(1 for s in scores if s > scores[index])


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a of two score vectors (concordant minus discordant pairs over all pairs;
    a pair tied in either counts as neither)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"kendall_tau needs two vectors of the same length >= 2, got {len(a)} and {len(b)}")
    n = len(a)
    s = 0
    for i in range(n):
        for j in range(i + 1, n):
            prod = (a[i] - a[j]) * (b[i] - b[j])
            s += (prod > 0) - (prod < 0)
    return s / (n * (n - 1) / 2)


def chance(num_documents: int) -> dict[str, float]:
    """A uniformly random ranking of ``N`` documents: accuracy@1 ``1/N``, MRR ``H_N / N``
    (the rank is uniform on ``1..N``), top-1 agreement ``1/N``, expected Kendall tau 0."""
    if isinstance(num_documents, bool) or not isinstance(num_documents, int) or num_documents < 1:
        raise ValueError(f"num_documents must be an int >= 1, got {num_documents!r}")
    harmonic = sum(1.0 / r for r in range(1, num_documents + 1))
    return {
        "accuracy_at_1": 1.0 / num_documents,
        "mrr": harmonic / num_documents,
        "top1_agreement": 1.0 / num_documents,
        "kendall_tau": 0.0,
    }


def paper_layer(n_layers: int) -> int:
    """The layer at the paper's relative depth (20 of 32) in a model of ``n_layers``."""
    return min(n_layers - 1, round(PAPER_LAYER / PAPER_DEPTH * n_layers))


def _mean_se(xs: Sequence[float]) -> dict[str, float]:
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return {"mean": m, "se": se}


def summarise(
    records: Sequence[dict[str, Any]], layer: int, conditions: Sequence[str], *, reference: str = "full"
) -> dict[str, Any]:
    """Metrics at ``layer`` from per-list records ``{"relevant", "scores": {condition: {layer:
    [N scores]}}}``: accuracy@1 and MRR of the relevant document per condition (mean and
    standard error over lists), and for each condition other than ``reference`` its agreement
    with the reference's ranking: top-1 agreement, Kendall tau, and the MRR of the
    reference's top-1 document."""
    out: dict[str, Any] = {}
    for cond in conditions:
        ranks = [rank_of(r["scores"][cond][str(layer)], r["relevant"]) for r in records]
        row: dict[str, Any] = {
            "accuracy_at_1": _mean_se([float(x == 1) for x in ranks]),
            "mrr": _mean_se([1.0 / x for x in ranks]),
        }
        if cond != reference:
            top1, taus, rr = [], [], []
            for r in records:
                full, mine = r["scores"][reference][str(layer)], r["scores"][cond][str(layer)]
                best = max(range(len(full)), key=full.__getitem__)
                top1.append(float(max(range(len(mine)), key=mine.__getitem__) == best))
                taus.append(kendall_tau(full, mine))
                rr.append(1.0 / rank_of(mine, best))
            row["vs_full"] = {
                "top1_agreement": _mean_se(top1),
                "kendall_tau": _mean_se(taus),
                "mrr_of_full_top1": _mean_se(rr),
            }
        out[cond] = row
    return out


def position_calibrated(records: Sequence[dict[str, Any]], suffix: str = "_cal") -> list[dict[str, Any]]:
    """Records whose scores are divided by the position's baseline: for list ``i``, document
    position ``d``, condition and layer, the mean score at position ``d`` over the *other*
    lists (leave-one-out, so a list's own answer never enters its baseline). The relevant
    document's position is uniform over lists, so the baseline is the model's positional
    preference (recency, primacy) with the content averaged out. Conditions get ``suffix``.

    :raises ValueError: with fewer than two records or lists of different sizes.
    """
    if len(records) < 2:
        raise ValueError(f"position calibration needs >= 2 lists, got {len(records)}")
    sizes = {len(next(iter(r["scores"].values()))["0"]) for r in records}
    if len(sizes) != 1:
        raise ValueError(f"position calibration needs lists of one size, got sizes {sorted(sizes)}")
    n = len(records)
    out = []
    for rec in records:
        scores: dict[str, dict[str, list[float]]] = {}
        for cond, by_layer in rec["scores"].items():
            scores[cond + suffix] = {}
            for layer, row in by_layer.items():
                base = [(sum(r["scores"][cond][layer][d] for r in records) - row[d]) / (n - 1) for d in range(len(row))]
                scores[cond + suffix][layer] = [x / b if b > 0 else 0.0 for x, b in zip(row, base)]
        out.append({**rec, "scores": scores})
    return out


def _summaries(result: dict[str, Any], conditions: Sequence[str], n_layers: int) -> None:
    """Fill ``result``'s summaries from its records: for the paper's scores (``scores``:
    ``summary``, ``by_layer``, ``by_kind``) and those from every query row (``scores_query``:
    the same keys with ``_query``), each raw and position-calibrated (``_cal``)."""
    layer = result["layer"]
    for key, qs in (("scores", ""), ("scores_query", "_query")):
        recs = [{**r, "scores": r[key]} for r in result["records"] if key in r]
        if not recs:
            continue
        variants = [("", recs, conditions, "full")]
        if len(recs) >= 2:
            variants.append(("_cal", position_calibrated(recs), [c + "_cal" for c in conditions], "full_cal"))
        for cs, rs, conds, ref in variants:
            suffix = qs + cs
            result["summary" + suffix] = summarise(rs, layer, conds, reference=ref)
            result["by_layer" + suffix] = {
                str(lay_i): {
                    c: {"mrr": v["mrr"]["mean"], "accuracy_at_1": v["accuracy_at_1"]["mean"]}
                    for c, v in summarise(rs, lay_i, conds, reference=ref).items()
                }
                for lay_i in range(n_layers)
            }
            for kind in ("by_name", "by_export"):
                mine = [r for r in rs if r["kind"] == kind]
                if mine:
                    result.setdefault("by_kind" + suffix, {})[kind] = {
                        "lists": len(mine),
                        **summarise(mine, layer, conds, reference=ref),
                    }
        tops: dict[str, list[int]] = {}
        for cond in conditions:
            counts = [0] * len(recs[0]["scores"][cond][str(layer)])
            for r in recs:
                row = r["scores"][cond][str(layer)]
                counts[max(range(len(row)), key=row.__getitem__)] += 1
            tops[cond] = counts
        result["top1_position_counts" + qs] = tops


# -- the model runs -------------------------------------------------------------------------
def _score_list(
    model: Any, lay: Layout, condition: str, n_layers: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per layer, the paper's scores (last ``QUERY_ROWS`` query rows) and the scores from every
    row of the query segment, for one prefill of ``lay`` under ``condition``."""
    import torch

    import attnkit

    ids = torch.tensor([lay.input_ids])
    # An explicit all-ones attention_mask: without one, transformers reads position ids that
    # restart (the permutation-invariant ones) as packed sequences and builds a block-diagonal
    # mask of its own. With it (and no padding) the mask stays implicit and the spec decides.
    kwargs: dict[str, Any] = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "logits_to_keep": 1,
        "use_cache": False,
    }
    if condition == "blockrank_pi":
        kwargs["position_ids"] = torch.tensor([permutation_invariant_positions(lay)])
    tap = QueryKeyTap(rows=lay.query)
    if condition == "full":
        ctx = attnkit.patch(model, "dense", analyses=[tap])
    else:
        ctx = attnkit.patch(model, "blockrank", attention_params=lay.attention_params, analyses=[tap])
    with torch.inference_mode(), ctx:
        model(**kwargs)
    paper = {str(i): doc_scores(tap.q[i][:, :, -QUERY_ROWS:], tap.k[i], lay)[0].tolist() for i in range(n_layers)}
    every = {str(i): doc_scores(tap.q[i], tap.k[i], lay)[0].tolist() for i in range(n_layers)}
    return paper, every


def _time(fn: Any, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _cost_row(model: Any, tok: Any, n: int, reps: int, seed: int, prefill: bool) -> dict[str, Any]:
    """One row of the cost section: a generated list of ``n`` documents, timed."""
    import torch
    import torch.nn.functional as F

    import attnkit

    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.hidden_size // hq
    spec = attnkit.get_spec("blockrank")
    lay = layout(tok, make_list(n, seed + 1000 + n))
    t = len(lay.input_ids)
    row: dict[str, Any] = {
        "documents": n,
        "tokens": t,
        "pairs_full": t * (t + 1) // 2,
        "pairs_blockrank": attended_pairs(lay.instruction, lay.documents, lay.query),
    }
    row["keys_per_query_full"] = row["pairs_full"] / t
    row["keys_per_query_blockrank"] = row["pairs_blockrank"] / t
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(1, hq, t, d, generator=gen)
    k, v = torch.randn(1, hkv, t, d, generator=gen), torch.randn(1, hkv, t, d, generator=gen)
    params = lay.attention_params
    spec(q, k, v, is_causal=True, backend="numba", **params)  # compile once
    row["kernel_s_full"] = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), reps)
    row["kernel_s_blockrank"] = _time(lambda: spec(q, k, v, is_causal=True, backend="numba", **params), reps)
    if prefill:
        ids = torch.tensor([lay.input_ids])

        def run(cond: str) -> None:
            ctx = (
                attnkit.patch(model, "dense")
                if cond == "full"
                else attnkit.patch(model, "blockrank", attention_params=params)
            )
            with torch.inference_mode(), ctx:
                model(input_ids=ids, logits_to_keep=1, use_cache=False)

        run("blockrank")  # warm
        for cond in ("full", "blockrank"):
            row[f"prefill_s_{cond}"] = _time(lambda c=cond: run(c), reps)
    for key in [k_ for k_ in row if k_.endswith(("_s_full", "_s_blockrank"))]:
        row[key.replace("_s_", "_ms_per_doc_")] = 1000 * row[key] / n
    return row


def _cost(model: Any, tok: Any, sizes: Sequence[int], reps: int, seed: int, prefill_max: int) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        rows.append(_cost_row(model, tok, n, reps, seed, n <= prefill_max))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnkit_blockrank.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--lists", type=int, default=20, help="document lists to rank")
    p.add_argument("--docs", type=int, default=10, help="documents per list")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditions", default="full,blockrank,blockrank_pi")
    p.add_argument("--cost-docs", default="10,20,40,80", help="list sizes for the cost section ('' skips it)")
    p.add_argument("--cost-reps", type=int, default=3, help="timings per measurement (the fastest is kept)")
    p.add_argument(
        "--prefill-max-docs",
        type=int,
        default=40,
        help="time model prefills up to this many documents (0: kernel only)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    p.add_argument("--out", default="results/smollm2_ranking.json")
    p.add_argument(
        "--resummarise", action="store_true", help="recompute the summaries of --out from its records (no model)"
    )
    args = p.parse_args(argv)
    if args.resummarise:
        stored: dict[str, Any] = json.loads(Path(args.out).read_text(encoding="utf-8"))
        conds = list(stored["records"][0]["scores"])
        _summaries(stored, conds, len(stored["records"][0]["scores"][conds[0]]))
        Path(args.out).write_text(json.dumps(stored, indent=1), encoding="utf-8")
        print(
            json.dumps({k: stored[k] for k in ("layer", "chance", "summary", "summary_cal") if k in stored}, indent=1)
        )
        return 0
    if args.lists < 0 or args.docs < 2:
        p.error(f"--lists must be >= 0 and --docs >= 2, got {args.lists} and {args.docs}")
    conditions = [c for c in args.conditions.split(",") if c]
    bad = [c for c in conditions if c not in ("full", "blockrank", "blockrank_pi")]
    if bad or "full" not in conditions:
        p.error(f"--conditions must include full and be among full, blockrank, blockrank_pi; got {conditions}")
    sizes = [int(x) for x in args.cost_docs.split(",") if x]

    import os

    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import torch

    from attnkit.models import load

    torch.set_num_threads(args.threads)
    model, tok = load("smollm2")
    model.eval()
    n_layers = model.config.num_hidden_layers
    layer = paper_layer(n_layers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (zero-shot: not fine-tuned for ranking or for the mask)",
        "lists": args.lists,
        "documents_per_list": args.docs,
        "seed": args.seed,
        "threads": args.threads,
        "layer": layer,
        "query_rows": QUERY_ROWS,
        "scores_query": "the same scoring from every row of the query segment (not the paper's)",
        "chance": chance(args.docs),
        "records": [],
    }
    t0 = time.perf_counter()
    for i in range(args.lists):
        item = make_list(args.docs, args.seed + i)
        lay = layout(tok, item)
        rec: dict[str, Any] = {
            "seed": args.seed + i,
            "kind": item.kind,
            "relevant": item.relevant,
            "tokens": len(lay.input_ids),
        }
        rec["scores"], rec["scores_query"] = {}, {}
        for cond in conditions:
            rec["scores"][cond], rec["scores_query"][cond] = _score_list(model, lay, cond, n_layers)
        result["records"].append(rec)
        _summaries(result, conditions, n_layers)
        result["ranking_seconds"] = time.perf_counter() - t0
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")  # after every list: a cut run keeps its part
        s = result["summary"]
        print(
            f"list {i + 1}/{args.lists}: " + ", ".join(f"{c} MRR {s[c]['mrr']['mean']:.3f}" for c in conditions),
            file=sys.stderr,
            flush=True,
        )
    if sizes:
        result["cost"] = _cost(model, tok, sizes, args.cost_reps, args.seed, args.prefill_max_docs)
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("layer", "chance", "summary", "summary_query") if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
