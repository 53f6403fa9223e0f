"""The retrieval-heads part of ``attnkit run``: detect retrieval heads on the job's needle
cases, compare masking the top heads with masking random ones, and hand the detected heads to
the ``retrieval_heads_cache`` policy (which sizes itself to the job's budget)."""

from __future__ import annotations

from typing import Any

__all__ = ["params_for_budget", "run"]


def params_for_budget(
    heads: list[tuple[int, int]],
    *,
    budget: float | int,
    group_size: int,
    n_sink: int = 4,
    **_ignored: Any,
) -> dict[str, Any]:
    """``retrieval_heads_cache`` parameters holding ``budget`` of the prompt's KV in total.

    The policy sizes the split itself (:func:`attnkit_retrieval_heads.cache.split_budget`, from
    the model's layer count that :class:`~attnkit.cache.AttnkitCache` gives it): the layers
    holding a retrieval head keep everything when the others can still keep a window, each
    layer's storage counted as wide as its widest KV head. (The window used to be computed
    here from token counts, which left the padded layers out and held ~35% more, issue 9.)

    :param budget: a ratio in (0, 1] of the prompt, or a token count per KV head.
    """
    return {"heads": tuple(heads), "group_size": group_size, "n_sink": n_sink, "budget": budget}


def run(job: Any) -> Any:
    """``AnalysisSpec.main_job`` of ``retrieval_score`` (see :mod:`attnkit.mainjob`)."""
    from attnkit.mainjob import AnalysisOutcome
    from attnkit_retrieval_heads.detect import compare_masking, detect

    cases = [c for c in job.cases if getattr(c, "span", None)]
    if not cases:
        return AnalysisOutcome(name="retrieval_score", paragraphs=["No needle cases (prompt file): skipped."])
    result = detect(job.model, job.tokenizer, cases=cases, max_new_tokens=job.max_new_tokens, progress=job.progress)
    js, png = result.save(job.out_dir)
    scores = result.heads
    k = 10
    # Masking costs three more generations per case: at most 5 cases keep the main job short.
    masking = compare_masking(
        job.model, job.tokenizer, cases[:5], scores, ks=(k,), seed=job.seed, max_new_tokens=job.max_new_tokens
    )
    config = job.model.config
    group = config.num_attention_heads // config.num_key_value_heads
    above = scores.heads_above()
    top = result.top(10)
    headline = (
        f"{len(above)} of {scores.n_layers * scores.n_heads} heads score > 0.1 "
        f"({100 * scores.fraction_above():.1f}%); needle accuracy (n={min(len(cases), 5)} prompts) "
        f"{masking['none']['accuracy']:.2f} unmasked, "
        f"{masking[f'top{k}']['accuracy']:.2f} with the top {k} masked, "
        f"{masking[f'random{k}']['accuracy']:.2f} with {k} random heads masked"
    )
    heads = above or [h for h, _ in top[:5]]

    # plain data (JSON-able): `attnkit bench cache` saves it and reuses it; the job adds the budget
    cache_params = {"heads": [list(h) for h in heads], "group_size": group, "n_sink": 4}

    rows = [[f"{layer}-{head}", score] for (layer, head), score in top]
    n_mask = min(len(cases), 5)
    mask_rows = [
        [name, len(v.get("heads", [])), v["accuracy"], n_mask, v["mean_recall"]]
        for name, v in masking.items()
        if isinstance(v, dict)
    ]
    return AnalysisOutcome(
        name="retrieval_score",
        summary={
            "headline": headline,
            "fraction_above_0.1": scores.fraction_above(),
            "n_counted_cases": scores.n_counted,
            "top_heads": [[f"{layer}-{head}", s] for (layer, head), s in top],
            "masking": masking,
            "scores_json": str(js),
        },
        paragraphs=[
            "Retrieval score per query head (Wu et al. 2024): the share of the needle a head copies, "
            "through its top-1 attended position at each decode step, averaged over the cases answered correctly. "
            + headline
            + f" (masking measured on the first {min(len(cases), 5)} cases). Masking = uniform attention for those heads.",
        ],
        tables=[
            (["head (layer-head)", "score"], rows),
            (["masked", "heads", "accuracy", "n", "mean recall"], mask_rows),
        ],
        figures=[png],
        cache_params={"retrieval_heads_cache": cache_params},
    )
