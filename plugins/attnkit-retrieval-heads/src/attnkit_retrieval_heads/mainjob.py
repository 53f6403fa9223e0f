"""The retrieval-heads part of ``attnkit run``: detect retrieval heads on the job's needle
cases, compare masking the top heads with masking random ones, and hand the detected heads to
the ``retrieval_heads_cache`` policy sized to the job's budget."""

from __future__ import annotations

from typing import Any

__all__ = ["params_for_budget", "run"]


def params_for_budget(
    heads: list[tuple[int, int]],
    *,
    budget: float | int,
    prompt_len: int,
    n_layers: int,
    n_kv_heads: int,
    group_size: int,
    n_sink: int = 4,
    min_window: int = 16,
) -> dict[str, Any]:
    """``retrieval_heads_cache`` parameters that hold about ``budget`` of the prompt's KV in
    total: KV heads serving a retrieval head keep everything, and the window of the others is
    what the rest of the budget allows (at least ``min_window``).

    :param budget: a ratio in (0, 1] of ``prompt_len``, or a token count per KV head.
    """
    from attnkit_retrieval_heads.cache import retrieval_kv_heads

    kv = retrieval_kv_heads(heads, group_size)
    full = sum(len(v) for v in kv.values())
    total = n_layers * n_kv_heads
    per_head = budget * prompt_len if isinstance(budget, float) else float(budget)
    # tokens left for the non-retrieval KV heads once the retrieval ones hold the whole prompt
    spare = (per_head * total - full * prompt_len) / max(total - full, 1)
    window = max(min_window, int(spare) - n_sink)
    return {"heads": tuple(heads), "group_size": group_size, "window": window, "n_sink": n_sink, "budget": None}


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
        f"({100 * scores.fraction_above():.1f}%); needle accuracy {masking['none']['accuracy']:.2f} unmasked, "
        f"{masking[f'top{k}']['accuracy']:.2f} with the top {k} masked, "
        f"{masking[f'random{k}']['accuracy']:.2f} with {k} random heads masked"
    )
    heads = above or [h for h, _ in top[:5]]

    def cache_params(case: Any, budget: float | int) -> dict[str, Any]:
        return params_for_budget(
            heads,
            budget=budget,
            prompt_len=len(case.input_ids),
            n_layers=config.num_hidden_layers,
            n_kv_heads=config.num_key_value_heads,
            group_size=group,
        )

    rows = [[f"{layer}-{head}", score] for (layer, head), score in top]
    mask_rows = [
        [name, len(v.get("heads", [])), v["accuracy"], v["mean_recall"]]
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
        tables=[(["head (layer-head)", "score"], rows), (["masked", "heads", "accuracy", "mean recall"], mask_rows)],
        figures=[png],
        cache_params={"retrieval_heads_cache": cache_params},  # type: ignore[dict-item]
    )
