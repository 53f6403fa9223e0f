"""The main job's prefill table: every installed long-context kernel on the needle prompts.

A long-context kernel is an attention spec that declares ``model_prefill`` (its parameters
for a prompt of a given length on a given model). For each prompt, dense attention
(transformers' SDPA, no patch) and every kernel prefill the same prompt in turn, the order
rotating per prompt, and then answer it greedily; the prefill is timed. A kernel that can
attend with one query over a cache (``attnkit.hf.adapter.decode_reason`` is ``None``) also
decodes the answer; one that cannot (core-context, self-attention only) prefills and the
answer is decoded with dense attention over the cache it filled, which is the setting of
prefill-acceleration papers (sparse prefill, dense decode). The table says which.

Lengths beyond the model's ``max_position_embeddings`` are run only by kernels whose
``model_prefill`` accepts them (those meant to extrapolate: LongHeads, Landmark), beside
dense, which is measured there too rather than assumed to fail.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PrefillOutcome", "long_context_specs", "run_prefill_table"]


@dataclass
class PrefillOutcome:
    """Rows (one per kernel and prompt length), the answers, what was skipped and why, and
    the figures."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)


def long_context_specs(names: str | None = "all") -> list[Any]:
    """The installed attention specs that declare ``model_prefill``; ``names`` is ``"all"``,
    ``"none"`` or a comma list (a name that is not installed or not a long-context kernel is
    a ``ValueError`` naming the installed ones)."""
    import attnkit

    found = [s for s in attnkit.list_specs("attention") if getattr(s, "model_prefill", None)]
    if names in (None, "all"):
        return found
    if names == "none":
        return []
    by_name = {s.name: s for s in found}
    out = []
    for n in (n for n in names.split(",") if n):
        if n not in by_name:
            raise ValueError(
                f"--prefill: {n!r} is not an installed long-context kernel; installed: {sorted(by_name) or 'none'}"
            )
        out.append(by_name[n])
    return out


def _nominal(case: Any) -> int:
    requested = getattr(case, "length", 0)
    return int(requested) if requested else len(case.input_ids)


def _params_for(spec: Any, config: Any, length: int) -> dict[str, Any]:
    from attnkit.registry import resolve

    params = resolve(spec.model_prefill)(config, length)
    if not isinstance(params, dict):
        raise TypeError(f"{spec.name}.model_prefill must return a dict of parameters, got {type(params).__name__}")
    return params


def run_prefill_table(
    model: Any,
    tokenizer: Any,
    cases: Sequence[Any],
    specs: Sequence[Any],
    *,
    max_new_tokens: int,
    stop: set[int],
    out_dir: Path,
    progress: bool = True,
) -> PrefillOutcome:
    """Prefill and answer every case with dense attention and with each of ``specs``.

    :param cases: needle cases (``input_ids``, ``answer``); their lengths set the table's rows.
    :returns: rows ``{"kernel", "length", "n", "needle_accuracy", "mean_recall", "prefill_s",
        "latency_vs_dense", "decode", "params"}``; ``latency_vs_dense`` is the kernel's summed
        prefill seconds over dense's on the same prompts (0.60 = 40% less time).
    """
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    import attnkit
    from attnkit.hf.adapter import decode_reason
    from attnkit.mainjob import greedy, word_recall

    out = PrefillOutcome()
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
    # Rows group prompts by requested length; a kernel's parameters fit the longest of them.
    groups: dict[int, list[Any]] = {}
    for case in cases:
        groups.setdefault(_nominal(case), []).append(case)
    plans: dict[tuple[str, int], dict[str, Any]] = {}
    for length, members in groups.items():
        longest = max(len(c.input_ids) for c in members)
        for spec in specs:
            try:
                params = _params_for(spec, model.config, longest)
                made = spec.make_params(**params)
            except (ValueError, TypeError) as exc:
                out.skipped[f"{spec.name}@{length}"] = f"{type(exc).__name__}: {exc}"
                continue
            why = decode_reason(spec, made)
            plans[(spec.name, length)] = {"params": params, "decode": "dense" if why else "kernel"}

    def answer(spec: Any, params: dict[str, Any], decode: str, ids: Any) -> dict[str, Any]:
        cache = DynamicCache(config=model.config)
        if spec is None:
            return greedy(model, ids, cache, max_new_tokens, stop)
        if decode == "kernel":
            with attnkit.patch(model, spec.name, attention_params=params):
                return greedy(model, ids, cache, max_new_tokens, stop)
        import torch

        with torch.no_grad():
            with attnkit.patch(model, spec.name, attention_params=params):
                t0 = time.perf_counter()
                first = model(input_ids=ids, cache=cache, use_cache=True)
                prefill = time.perf_counter() - t0
            token = int(first.logits[0, -1].argmax())
            rest: dict[str, Any] = {"ids": [], "decode_s": 0.0, "decode_steps": 0}
            if token not in stop and max_new_tokens > 1:
                rest = greedy(model, torch.tensor([[token]]), cache, max_new_tokens - 1, stop)
        return {"ids": [token, *rest["ids"]], "prefill_s": prefill, "decode_s": rest["decode_s"]}

    # Warm-up on a short prompt: numba compilation and first-call allocations, once per kernel.
    warm_ids = cases[0].tensor()[:, :256] if cases else None
    for spec in specs:
        warm = next((p for (n, _), p in plans.items() if n == spec.name), None)
        if warm is None or warm_ids is None:
            continue
        try:
            answer(spec, _params_for(spec, model.config, warm_ids.shape[1]), warm["decode"], warm_ids)
        except (ValueError, TypeError):
            answer(spec, warm["params"], warm["decode"], cases[0].tensor())
    if warm_ids is not None:
        answer(None, {}, "dense", warm_ids)

    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    dense_time: dict[tuple[str, int], list[float]] = {}
    total = sum(1 + sum(1 for s in specs if (s.name, _nominal(c)) in plans) for c in cases)
    bar = tqdm(total=total, desc="prefill table", unit="prefill", disable=not progress)
    tokens: dict[int, list[int]] = {}
    for i, case in enumerate(cases):
        length = _nominal(case)
        tokens.setdefault(length, []).append(len(case.input_ids))
        runs: list[tuple[str, Any, dict[str, Any], str]] = [("dense", None, {}, "dense")]
        runs += [
            (s.name, s, plans[(s.name, length)]["params"], plans[(s.name, length)]["decode"])
            for s in specs
            if (s.name, length) in plans
        ]
        shift = i % len(runs)
        order = runs[shift:] + runs[:shift]
        times: dict[str, float] = {}
        for name, spec, params, decode in order:
            bar.set_postfix_str(f"{name} @ {length}")
            r = answer(spec, params, decode, case.tensor())
            text = tokenizer.decode(r["ids"], skip_special_tokens=True).strip()
            recall = word_recall(case.answer, text) if case.answer else float("nan")
            results.setdefault((name, length), []).append((recall, r["prefill_s"]))
            out.answers.setdefault((name, length), []).append(text)
            times[name] = r["prefill_s"]
            bar.update(1)
        for name, *_ in runs:
            dense_time.setdefault((name, length), []).append(times["dense"])
    bar.close()

    for (name, length), per_case in results.items():
        scored = [rc for rc, _ in per_case if rc == rc]
        prefill = [t for _, t in per_case]
        plan = plans.get((name, length), {"params": {}, "decode": "dense"})
        out.rows.append(
            {
                "kernel": name,
                "length": length,
                "tokens": statistics.fmean(tokens[length]),
                "beyond_trained": bool(limit and max(tokens[length]) > limit),
                "n": len(scored),
                "needle_accuracy": (sum(rc > 0.5 for rc in scored) / len(scored)) if scored else None,
                "mean_recall": statistics.fmean(scored) if scored else None,
                "prefill_s": statistics.fmean(prefill),
                "latency_vs_dense": sum(prefill) / sum(dense_time[(name, length)]),
                "decode": plan["decode"],
                "params": plan["params"],
            }
        )
    out.rows.sort(key=lambda r: (r["length"], r["kernel"] != "dense", r["kernel"]))
    out.figures = _plot(out.rows, out_dir, limit)
    return out


def _plot(rows: list[dict[str, Any]], out_dir: Path, limit: int) -> list[Path]:
    from attnkit.figures import available, figure

    if not available():
        return []
    if not rows:
        return []
    kernels = sorted({r["kernel"] for r in rows}, key=lambda n: (n != "dense", n))
    path = out_dir / "prefill.png"
    with figure(path, ncols=2, figsize=(11, 3.8), dpi=110) as (_fig, axes):
        for name in kernels:
            mine = sorted((r for r in rows if r["kernel"] == name), key=lambda r: r["length"])
            xs = [r["tokens"] for r in mine]
            style = {"color": "#333", "linewidth": 2.2} if name == "dense" else {}
            axes[0].plot(xs, [r["needle_accuracy"] or 0.0 for r in mine], marker="o", label=name, **style)
            axes[1].plot(xs, [r["latency_vs_dense"] for r in mine], marker="o", label=name, **style)
        for ax in axes:
            if limit:
                ax.axvline(limit, color="#c44", linestyle=":", linewidth=1)
            ax.set_xlabel("prompt tokens" + (f" (dotted: max_position_embeddings = {limit})" if limit else ""))
            ax.set_xscale("log", base=2)
        ns = sorted({r["n"] for r in rows})
        axes[0].set_title(f"needle accuracy (n={ns[0]} per point)" if len(ns) == 1 else "needle accuracy", fontsize=10)
        axes[0].set_ylim(-0.05, 1.1)
        axes[1].set_title("prefill latency / dense (lower is faster)", fontsize=10)
        axes[1].axhline(1.0, color="#999", linewidth=0.8)
        axes[0].legend(fontsize=8)
    return [path]
