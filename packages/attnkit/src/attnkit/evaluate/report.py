"""The printed table, the plots and the report folder of ``attnkit eval cache``.

Rows are plain dicts (:data:`attnkit.evaluate.cache.ROW_KEYS`); rows from another source (the
kvpress script, ``tools/kvpress_rows.py``) have the same keys and go through the same
functions, so one table and one set of curves can hold both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["curves", "table_rows", "table_text", "write"]

HEADER = [
    "task",
    "setting",
    "length",
    "policy",
    "budget",
    "n",
    "accuracy",
    "mean recall",
    "ppl",
    "peak KV MiB",
    "mean KV MiB",
    "decode tok/s",
    "vs full",
]
_WIDTHS = (10, 18, 7, 30, 7, 5, 9, 12, 9, 12, 12, 13, 8)


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _policy(row: dict[str, Any]) -> str:
    name = str(row["policy"])
    if row.get("source") not in (None, "attnkit"):
        name = f"{row['source']}:{name}"
    return f"{name}+rerotate" if row.get("rerotate") else name


def table_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Each row's cells under :data:`HEADER`."""
    out = []
    for r in rows:
        mib = [None if r.get(k) is None else r[k] / 2**20 for k in ("peak_kv_bytes", "mean_kv_bytes")]
        ratio = r.get("decode_vs_full")
        out.append(
            [
                str(r["task"]),
                r.get("setting") or "-",
                _num(r.get("length")),
                _policy(r),
                "-" if r.get("budget") is None else _num(r["budget"]),
                _num(r.get("n")),
                _num(r.get("accuracy")),
                _num(r.get("mean_recall")),
                _num(r.get("ppl")),
                _num(mib[0], 1),
                _num(mib[1], 1),
                _num(r.get("decode_tokens_per_s")),
                "-" if ratio is None else f"{ratio:.2f}x",
            ]
        )
    return out


def table_text(rows: Sequence[dict[str, Any]]) -> str:
    """The table as aligned text (first column left, the others right)."""

    def line(cells: Sequence[str]) -> str:
        return "".join(
            (f"{c:<{w}}" if j in (0, 1, 3) else f"{c:>{w}}") + " " for j, (c, w) in enumerate(zip(cells, _WIDTHS))
        ).rstrip()

    return "\n".join([line(HEADER), *(line(c) for c in table_rows(rows))])


def curves(
    rows: Sequence[dict[str, Any]], task: str, metric: str, setting: str | None = None
) -> dict[str, list[tuple[float, float]]]:
    """``{policy label: [(budget, value), ...]}`` of ``metric`` for ``task`` (and ``setting``),
    n-weighted over lengths, sorted by budget; the full cache's row gives the key ``"full"``
    with budget ``None`` left out (it is drawn as a level line)."""
    acc: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        if r["task"] != task or (setting is not None and r.get("setting") != setting) or r.get(metric) is None:
            continue
        if r.get("budget") is None:
            continue
        w = float(r.get("n") or 1)
        d = acc.setdefault(_policy(r), {}).setdefault(float(r["budget"]), [0.0, 0.0])
        d[0] += w * float(r[metric])
        d[1] += w
    return {k: sorted((b, s / n) for b, (s, n) in v.items()) for k, v in acc.items()}


def _full_level(rows: Sequence[dict[str, Any]], task: str, metric: str, setting: str | None) -> float | None:
    sel = [
        r
        for r in rows
        if r["task"] == task
        and r.get("budget") is None
        and r.get(metric) is not None
        and (setting is None or r.get("setting") == setting)
    ]
    if not sel:
        return None
    w = sum(float(r.get("n") or 1) for r in sel)
    return sum(float(r.get("n") or 1) * float(r[metric]) for r in sel) / w


def _plots(rows: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    from attnkit.figures import available, figure

    if not available():
        return []
    panels: list[tuple[str, str, str | None, str]] = []
    for name in ("question-aware", "question-agnostic"):
        if any(r["task"] == "needle" and r.get("setting") == name for r in rows):
            panels.append(("needle", "accuracy", name, f"needle accuracy, {name}"))
    if any(r["task"] == "reasoning" for r in rows):
        panels.append(("reasoning", "accuracy", None, "reasoning accuracy (exact)"))
    figures = []
    if panels:
        path = out_dir / "accuracy_vs_budget.png"
        with figure(path, ncols=len(panels), figsize=(5.2 * len(panels), 4.0), dpi=110, squeeze=False) as (_fig, axes):
            for ax, (task, metric, setting, title) in zip(axes[0], panels):
                for label, pts in sorted(curves(rows, task, metric, setting).items()):
                    ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=label)
                level = _full_level(rows, task, metric, setting)
                if level is not None:
                    ax.axhline(level, color="k", linestyle="--", linewidth=1, label="full")
                ax.set_xlabel("budget")
                ax.set_ylabel(metric)
                ax.set_ylim(-0.05, 1.05)
                ax.set_title(title, fontsize=10)
                ax.legend(fontsize=7)
        figures.append(path)
    ppl_lengths = sorted({r["length"] for r in rows if r["task"] == "ppl"})
    if ppl_lengths:
        path = out_dir / "ppl_vs_budget.png"
        with figure(path, ncols=len(ppl_lengths), figsize=(5.2 * len(ppl_lengths), 4.0), dpi=110, squeeze=False) as (
            _fig,
            axes,
        ):
            for ax, length in zip(axes[0], ppl_lengths):
                sel = [r for r in rows if r["task"] == "ppl" and r["length"] == length]
                for label, pts in sorted(curves(sel, "ppl", "ppl").items()):
                    ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=label)
                level = _full_level(sel, "ppl", "ppl", None)
                if level is not None:
                    ax.axhline(level, color="k", linestyle="--", linewidth=1, label="full")
                ax.set_yscale("log")
                ax.set_xlabel("budget")
                ax.set_ylabel("perplexity")
                ax.set_title(f"perplexity, {length} tokens", fontsize=10)
                ax.legend(fontsize=7)
        figures.append(path)
    return figures


def write(
    out_dir: Path,
    setup: dict[str, Any],
    rows: list[dict[str, Any]],
    skipped: dict[str, str],
    answers: dict[str, Any],
) -> Path:
    """``report.html`` (table, plots, setup, skipped, sample answers) and ``results.json``
    (``{"setup", "rows", "skipped", "answers"}``) in ``out_dir``; returns the HTML's path."""
    from attnkit.report import Report, Section

    report = Report(out_dir, f"attnkit eval cache: {setup.get('model')}")
    secs = setup.get("seconds", {})
    report.add(
        Section(
            "Setup",
            paragraphs=[
                f"Model {setup.get('model')} (max_position_embeddings {setup.get('max_position_embeddings')}); "
                f"tasks {', '.join(setup.get('tasks', []))}; budgets {setup.get('budgets')} (perplexity "
                f"{setup.get('ppl_budgets')}); needle lengths {setup.get('lengths')}, "
                f"{setup.get('cases_per_length')} case(s) per length; perplexity lengths {setup.get('ppl_lengths')} "
                f"in forwards of {setup.get('ppl_chunk')} tokens; {setup.get('problems')} reasoning problems of "
                f"{setup.get('steps')} steps; {setup.get('threads')} threads; "
                + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()),
                "Needle accuracy: share of answers whose word recall of the needle exceeds 0.5. Question-aware: "
                "context and question in one forward, the budget holding from then on; question-agnostic: the "
                "context forward is compressed once, then the question is appended and everything after is kept. "
                "Perplexity: a ratio budget is a share of the text length. Reasoning: exact match of the final "
                "number; a ratio budget is a share of the full cache's final size on that problem. KV bytes are "
                "sampled after every forward (peak, and the mean over each run averaged over runs); decode tok/s "
                "counts one-token forwards, in lockstep with the full cache ('vs full': the ratio).",
            ],
        )
    )
    report.add(Section("Results", tables=[(HEADER, table_rows(rows))], figures=[*_plots(rows, out_dir)]))
    ppl = [r for r in rows if r["task"] == "ppl" and r.get("ppl_beyond") is not None]
    if ppl:
        report.add(
            Section(
                "Perplexity inside and beyond the trained length",
                paragraphs=[
                    "ppl inside: the targets before max_position_embeddings; beyond: the targets from there on."
                ],
                tables=[
                    (
                        ["policy", "budget", "length", "ppl", "ppl inside", "ppl beyond"],
                        [
                            [
                                _policy(r),
                                "-" if r["budget"] is None else r["budget"],
                                r["length"],
                                _num(r["ppl"]),
                                _num(r["ppl_inside"]),
                                _num(r["ppl_beyond"]),
                            ]
                            for r in ppl
                        ],
                    )
                ],
            )
        )
    if skipped:
        report.add(Section("Skipped", paragraphs=[f"{k}: {v}" for k, v in skipped.items()]))
    for task, by_config in answers.items():
        report.add(
            Section(
                f"Sample answers: {task}",
                tables=[(["configuration", "answers"], [[k, " | ".join(v)] for k, v in by_config.items()])],
            )
        )
    report.results = {"setup": setup, "rows": rows, "skipped": skipped, "answers": answers}
    return report.write()
