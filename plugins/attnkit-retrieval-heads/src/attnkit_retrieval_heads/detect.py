"""Needle-in-a-haystack runs: greedy generation the paper's way, retrieval-head detection,
and needle accuracy with heads masked.

The paper prefills ``input_ids[:, :-1]`` with FlashAttention and decodes from the last prompt
token with eager attention, so every answer token comes from a decode step whose attention
probabilities are available. Here the prefill runs the model's attention kernel and only the
decode steps compute the pattern (the ``hook_pattern@decode`` site).
"""

from __future__ import annotations

import inspect
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnkit.data.needles import NeedleCase, make_cases
from attnkit_retrieval_heads.rouge import rouge1_recall
from attnkit_retrieval_heads.score import RetrievalScore, RetrievalScores

__all__ = [
    "DetectionResult",
    "NeedleAccuracy",
    "compare_masking",
    "detect",
    "greedy_generate",
    "mask_heads",
    "needle_accuracy",
    "random_heads",
    "save_heatmap",
]


def _stop_ids(tokenizer: Any, model: Any) -> set[int]:
    ids: set[int] = set()
    for source in (tokenizer, getattr(model, "generation_config", None)):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(x) for x in eos)
    return ids


def greedy_generate(
    model: Any, tokenizer: Any, input_ids: torch.Tensor, max_new_tokens: int = 32, cache: Any = None
) -> list[int]:
    """Greedy answer to ``input_ids`` ``(1, T)``: prefill ``T - 1`` tokens, then one decode step
    per generated token, starting from the last prompt token. Stops at end-of-sequence or at a
    token containing a newline (the paper stops at the first newline); the stop token is
    returned as the last element.

    :param cache: the transformers cache to fill (an :class:`attnkit.cache.AttnkitCache` to run
        a KV-cache policy); default: a fresh ``DynamicCache``.
    :raises ValueError: for a batch other than 1 or a prompt shorter than 2 tokens.
    """
    from transformers import DynamicCache

    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (1, T) with T >= 2, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stops = _stop_ids(tokenizer, model)
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    # transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kw = {name: DynamicCache() if cache is None else cache, "use_cache": True}
    out: list[int] = []
    with torch.no_grad():
        model(ids[:, :-1], **kw)
        nxt = ids[:, -1:]
        for _ in range(max_new_tokens):
            logits = model(nxt, **kw).logits
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token in stops or "\n" in tokenizer.decode([token]):
                break
            nxt = torch.tensor([[token]], device=device)
    return out


def _answer(tokenizer: Any, generated: Sequence[int]) -> str:
    return str(tokenizer.decode(list(generated), skip_special_tokens=True)).strip()


def save_heatmap(scores: np.ndarray, path: str | Path, title: str = "retrieval score") -> Path:
    """Write a ``(L, H)`` score grid as a PNG heatmap (layers down, heads across)."""
    from attnkit.figures import figure

    path = Path(path)
    n_layers, n_heads = scores.shape
    with figure(path, figsize=(1.2 + 0.45 * n_heads, 1.0 + 0.22 * n_layers), dpi=110) as (fig, ax):
        im = ax.imshow(
            scores, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.max(scores, initial=0.0)))
        )
        ax.set_xlabel("query head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
        ax.set_title(title)
        fig.colorbar(im, ax=ax, label="score")
    return path


@dataclass
class DetectionResult:
    """What :func:`detect` returns.

    :ivar heads: the retrieval scores (``.scores`` is the ``(layers, heads)`` grid).
    :ivar cases: the cases run.
    :ivar answers: the decoded answer of every case.
    :ivar recalls: ROUGE-1 recall of every answer against its needle.
    """

    heads: RetrievalScores
    cases: list[NeedleCase]
    answers: list[str]
    recalls: list[float]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> np.ndarray:
        return self.heads.scores

    @property
    def fraction_above(self) -> float:
        """Share of heads scoring above the threshold (0.1)."""
        return self.heads.fraction_above()

    @property
    def accuracy(self) -> float:
        """Share of cases whose recall exceeds 0.5 (the instances that count)."""
        return float(np.mean([r > 0.5 for r in self.recalls])) if self.recalls else 0.0

    def top(self, k: int = 10) -> list[tuple[tuple[int, int], float]]:
        return self.heads.ranked()[:k]

    def to_dict(self) -> dict[str, Any]:
        out = self.heads.to_dict()
        out["top_heads"] = [[layer, h, s] for (layer, h), s in self.top(20)]
        out["accuracy"] = self.accuracy
        out["cases"] = [
            {
                "length": c.length,
                "context_tokens": c.context_tokens,
                "depth": c.depth,
                "span": list(c.span),
                "answer": c.answer,
                "generated": a,
                "recall": r,
            }
            for c, a, r in zip(self.cases, self.answers, self.recalls)
        ]
        out["meta"] = self.meta
        return out

    def save(self, out_dir: str | Path, stem: str = "retrieval_heads") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.png`` (the heatmap) into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        js = out_dir / f"{stem}.json"
        js.write_text(json.dumps(self.to_dict(), indent=1))
        title = f"retrieval score ({self.heads.n_counted}/{len(self.cases)} cases counted)"
        png = save_heatmap(self.grid, out_dir / f"{stem}.png", title=title)
        return js, png


def detect(
    model: Any,
    tokenizer: Any,
    n_cases: int = 20,
    lengths: Sequence[int] = (1000, 2000, 3000),
    depths: Sequence[float] = (0, 25, 50, 75, 100),
    seed: int = 0,
    max_new_tokens: int = 32,
    *,
    cases: Sequence[NeedleCase] | None = None,
    answer_prefix: bool = False,
    threshold: float = 0.1,
    progress: bool = True,
) -> DetectionResult:
    """Retrieval scores of every query head of ``model`` over generated needle cases.

    :param cases: run these instead of generating ``n_cases`` from ``lengths`` × ``depths``.
    :param answer_prefix: see :func:`~attnkit.data.needles.make_case`.
    :param progress: show a tqdm progress bar.
    """
    import attnkit

    if cases is None:
        cases = make_cases(tokenizer, n_cases, lengths, depths, seed=seed, answer_prefix=answer_prefix)
    analysis = RetrievalScore(threshold=threshold)
    answers, recalls = [], []
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    with attnkit.patch(model, analyses=[analysis]):
        for case in tqdm(cases, desc="retrieval heads", disable=not progress):
            generated = greedy_generate(model, tokenizer, case.tensor(), max_new_tokens)
            answer = _answer(tokenizer, generated)
            recall = rouge1_recall(case.answer, answer)
            analysis.add_instance(case.input_ids, generated, case.span, recall)
            answers.append(answer)
            recalls.append(recall)
    meta = {"n_cases": len(cases), "seed": seed, "max_new_tokens": max_new_tokens, "answer_prefix": answer_prefix}
    return DetectionResult(heads=analysis.result(), cases=list(cases), answers=answers, recalls=recalls, meta=meta)


def mask_heads(heads: Any) -> list[Any]:
    """Analyses for :func:`attnkit.patch` that mask ``heads`` the paper's way: uniform attention
    over each query's visible prefix (pre-softmax scores set to 0 where not already masked), so a
    masked head outputs the mean of V over that prefix, at prefill and at every decode step.

    :param heads: ``[(layer, head), ...]`` or ``{layer: [head, ...]}``; empty gives ``[]``.
    """
    from attnkit.runtime import ScoreEdit
    from attnkit.runtime.interventions import heads_by_layer

    by_layer = heads_by_layer(heads)
    return [ScoreEdit(by_layer, mode="uniform")] if by_layer else []


@dataclass
class NeedleAccuracy:
    """Needle results of a set of cases.

    :ivar recalls: ROUGE-1 recall of each answer.
    :ivar answers: the decoded answers.
    :ivar kv_kept: with a cache policy, the share of (token, layer, KV head) entries held at the
        end of each case; empty without one.
    """

    recalls: list[float]
    answers: list[str]
    kv_kept: list[float] = field(default_factory=list)

    @property
    def mean_recall(self) -> float:
        return float(np.mean(self.recalls)) if self.recalls else 0.0

    @property
    def accuracy(self) -> float:
        """Share of answers with recall > 0.5."""
        return float(np.mean([r > 0.5 for r in self.recalls])) if self.recalls else 0.0


def needle_accuracy(
    model: Any,
    tokenizer: Any,
    cases: Sequence[NeedleCase],
    masked_heads: Any = (),
    max_new_tokens: int = 32,
    progress: bool = False,
    *,
    cache: Any = None,
    cache_params: Any = None,
) -> NeedleAccuracy:
    """Answer ``cases`` greedily with ``masked_heads`` masked (uniform attention) and score the
    answers by ROUGE-1 recall.

    :param cache: a KV-cache policy (name or spec) to run, e.g. ``"retrieval_heads_cache"``.
    :param cache_params: its parameters.
    """
    from tqdm.auto import tqdm

    import attnkit

    recalls, answers, kept = [], [], []
    with attnkit.patch(model, analyses=mask_heads(masked_heads), cache=cache, cache_params=cache_params) as session:
        for case in tqdm(cases, desc="needle accuracy", disable=not progress):
            kv = session.new_cache()
            answer = _answer(tokenizer, greedy_generate(model, tokenizer, case.tensor(), max_new_tokens, cache=kv))
            answers.append(answer)
            recalls.append(rouge1_recall(case.answer, answer))
            policy = getattr(kv, "policy", None)
            if policy is not None:
                held = sum(int(policy.kept_counts(i).sum()) for i in policy.layers)
                total = sum(policy.seen(i) * policy.layers[i].keys.shape[1] for i in policy.layers)
                kept.append(held / total)
    return NeedleAccuracy(recalls=recalls, answers=answers, kv_kept=kept)


def random_heads(
    n_layers: int, n_heads: int, k: int, exclude: Sequence[tuple[int, int]] = (), seed: int = 0
) -> list[tuple[int, int]]:
    """``k`` distinct heads drawn uniformly (seeded) from those not in ``exclude``.

    :raises ValueError: when fewer than ``k`` heads remain.
    """
    skip = {tuple(h) for h in exclude}
    pool = [(layer, h) for layer in range(n_layers) for h in range(n_heads) if (layer, h) not in skip]
    if k > len(pool):
        raise ValueError(
            f"k={k} random heads requested but only {len(pool)} of {n_layers}x{n_heads} heads are not excluded"
        )
    return sorted(random.Random(seed).sample(pool, k))


def compare_masking(
    model: Any,
    tokenizer: Any,
    cases: Sequence[NeedleCase],
    scores: RetrievalScores,
    ks: Sequence[int] = (10, 20),
    seed: int = 0,
    exclude_top: int = 100,
    max_new_tokens: int = 32,
    progress: bool = False,
) -> dict[str, Any]:
    """Needle accuracy unmasked, with the top-K retrieval heads masked, and with K random heads
    outside the top ``exclude_top`` masked (the paper's ``--mask_top K`` / ``-K``; the exclusion
    shrinks to the top K when too few heads would remain).
    """
    ranked = scores.top(scores.n_layers * scores.n_heads)
    base = needle_accuracy(model, tokenizer, cases, (), max_new_tokens, progress)
    out: dict[str, Any] = {"none": {"mean_recall": base.mean_recall, "accuracy": base.accuracy}}
    for k in ks:
        top = ranked[:k]
        n_excl = exclude_top if len(ranked) - exclude_top >= k else k
        rand = random_heads(scores.n_layers, scores.n_heads, k, exclude=ranked[:n_excl], seed=seed + k)
        res_top = needle_accuracy(model, tokenizer, cases, top, max_new_tokens, progress)
        res_rand = needle_accuracy(model, tokenizer, cases, rand, max_new_tokens, progress)
        out[f"top{k}"] = {
            "heads": [list(h) for h in top],
            "mean_recall": res_top.mean_recall,
            "accuracy": res_top.accuracy,
        }
        out[f"random{k}"] = {
            "heads": [list(h) for h in rand],
            "mean_recall": res_rand.mean_recall,
            "accuracy": res_rand.accuracy,
        }
    return out
