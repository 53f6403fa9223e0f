"""``attnkit analyze``: one analysis plugin on an embedded model, with its report.

An :class:`~attnkit.AnalysisSpec` that declares ``analyze`` (``"module:function"``,
``(ctx: AnalyzeContext) -> AnalyzeOutcome``) can be run by name::

    attnkit analyze --list
    attnkit analyze act --model smollm2 --out act-report
    attnkit analyze thought-anchors --prompts my_prompts.txt

The command checks its arguments before any model loads, hands the analysis an
:class:`AnalyzeContext` (the model loads on first use, so an analysis that trains its own
tiny model never loads SmolLM2), and writes ``report.html`` (self-contained, plots embedded),
``results.json`` and the PNGs into the output folder, then prints a summary table.

Interventions report their effect beside a control (random heads, a shuffled or random span
of the same size) as :class:`Comparison` rows: the report and the printed table show both, so
an effect is never read without what chance gives.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AnalyzeContext", "AnalyzeOutcome", "Comparison", "analysis_specs", "build_parser", "main"]


@dataclass
class Comparison:
    """An intervention's effect beside its control, on one metric.

    :ivar intervention: what was done (``"calibrate top-8 sink heads"``).
    :ivar metric: what was measured (``"accuracy"``, ``"KL to the unedited run"``).
    :ivar effect: the metric with the intervention.
    :ivar control: the metric with the control intervention.
    :ivar control_name: what the control was (``"8 random heads"``).
    :ivar baseline: the metric with no intervention, when it has one.
    :ivar n: how many items each number stands on.
    """

    intervention: str
    metric: str
    effect: float
    control: float
    control_name: str
    baseline: float | None = None
    n: int = 0

    def row(self) -> list[Any]:
        base = "-" if self.baseline is None else self.baseline
        return [self.intervention, self.metric, base, self.effect, self.control_name, self.control, self.n]


COMPARISON_HEADER = ["intervention", "metric", "without", "with", "control", "control value", "n"]


@dataclass
class AnalyzeOutcome:
    """What an analysis returns: numbers for ``results.json``, and the report's content.

    :ivar summary: headline numbers (printed, and in ``results.json``).
    :ivar results: everything else for ``results.json`` (per-head tables, per-token weights ...).
    :ivar comparisons: intervention effects beside their controls.
    :ivar files: other files written into the output folder (tensors, JSON for a training
        loop), listed in the report.
    """

    summary: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[Sequence[str], Sequence[Sequence[Any]]]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


@dataclass
class AnalyzeContext:
    """What an analysis' ``analyze`` function receives.

    :ivar spec: the analysis spec.
    :ivar params: its validated parameter dataclass (``--param NAME=VALUE``).
    :ivar model_name: ``--model`` (an embedded model, or a tiny model the plugin builds).
    :ivar prompts: the ``--prompts`` file's prompts (blank-line separated), or ``None``: the
        analysis uses its own seeded, locally generated inputs.
    :ivar out_dir: the report folder; write PNGs and extra files here.
    :ivar seed: seed for generated inputs and controls.
    :ivar quick: a smoke run (fewer inputs), for tests and first tries.
    :ivar progress: whether to show progress bars.
    """

    spec: Any
    params: Any
    model_name: str
    prompts: list[str] | None
    out_dir: Path
    seed: int = 0
    quick: bool = False
    progress: bool = True
    _loaded: tuple[Any, Any] | None = field(default=None, repr=False)

    def load_model(self) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of ``model_name`` (an embedded model), loaded once.

        :raises ValueError: for a name that is not an embedded model (a plugin that builds
            ``tiny-*`` models handles those names itself before calling this).
        """
        if self._loaded is None:
            from attnkit.models import load
            from attnkit.models.pretrained import PRETRAINED

            if self.model_name not in PRETRAINED:
                raise ValueError(
                    f"--model {self.model_name!r} is not an embedded model ({', '.join(sorted(PRETRAINED))}) "
                    f"and analysis {self.spec.name!r} builds no model of that name"
                )
            self._loaded = load(self.model_name)
        return self._loaded

    def tqdm(self, iterable: Any = None, **kwargs: Any) -> Any:
        """A progress bar that honours ``--no-progress``."""
        from tqdm.auto import tqdm

        return tqdm(iterable, disable=not self.progress, **kwargs)


def analysis_specs() -> list[Any]:
    """The installed analysis specs that ``attnkit analyze`` can run (they declare ``analyze``)."""
    import attnkit

    return [s for s in attnkit.list_specs("analysis") if getattr(s, "analyze", None)]


def _lookup(name: str) -> Any:
    from attnkit.registry import name_key

    specs = analysis_specs()
    for s in specs:
        if name_key(s.name) == name_key(name):
            return s
    # a plugin slug names its main analysis: attnkit analyze thought-anchors
    for s in specs:
        dist = getattr(s, "distribution", None) or ""
        if name_key(dist) == name_key(f"attnkit-{name}"):
            return s
    names = ", ".join(sorted(s.name for s in specs)) or "none installed"
    raise SystemExit(f"attnkit analyze: no analysis {name!r}; installed: {names} (attnkit analyze --list)")


def read_prompts(path: str) -> list[str]:
    """Prompts of a text file, separated by blank lines (one prompt may span lines).

    :raises SystemExit: for a missing or empty file.
    """
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--prompts: no such file: {path}")
    text = p.read_text(encoding="utf-8")
    prompts = [block.strip() for block in text.split("\n\n") if block.strip()]
    if not prompts:
        raise SystemExit(f"--prompts: {path} holds no prompt (prompts are separated by blank lines)")
    return prompts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnkit analyze",
        description="Run one analysis plugin on an embedded model and write report.html, results.json and PNGs.",
    )
    p.add_argument("name", nargs="?", help="analysis name (attnkit analyze --list)")
    p.add_argument("--list", action="store_true", help="list the installed analyses and exit")
    p.add_argument("--model", default=None, help="model: smollm2 (default unless the analysis says), minilm, tiny-...")
    p.add_argument("--prompts", default=None, help="text file of prompts separated by blank lines")
    p.add_argument("--out", default=None, help="report folder (default ./attnkit-analyze-NAME)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="analysis parameter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run with fewer inputs")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="with --list: JSON")
    return p


def _list(as_json: bool) -> int:
    rows = [
        {
            "name": s.name,
            "plugin": getattr(s, "distribution", None),
            "model": s.default_model,
            "sites": list(s.sites),
            "description": s.description,
        }
        for s in analysis_specs()
    ]
    if as_json:
        import json

        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("no analysis installed declares `analyze` (pip install an attnkit analysis plugin)")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  [{r['model']}]  {r['description']}")
        print(f"{'':<{width}}  sites: {', '.join(r['sites']) or '(none)'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.list:
        return _list(args.json)
    if not args.name:
        raise SystemExit("attnkit analyze: name an analysis (attnkit analyze --list shows them)")
    spec = _lookup(args.name)
    from attnkit.cliargs import parse_param

    try:
        params = spec.make_params(**dict(parse_param(p) for p in args.param))
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"--param: {exc}") from None
    prompts = read_prompts(args.prompts) if args.prompts else None
    model_name = args.model or spec.default_model
    if spec.models and model_name not in spec.models:
        raise SystemExit(f"--model: analysis {spec.name!r} runs on {', '.join(spec.models)}, got {model_name!r}")
    out_dir = Path(args.out or f"attnkit-analyze-{spec.name}")

    from attnkit.registry import resolve
    from attnkit.report import Report, Section

    ctx = AnalyzeContext(
        spec=spec,
        params=params,
        model_name=model_name,
        prompts=prompts,
        out_dir=out_dir,
        seed=args.seed,
        quick=args.quick,
        progress=not args.no_progress,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"attnkit analyze {spec.name}: model {model_name}, sites {', '.join(spec.sites) or '(none)'}", flush=True)
    t0 = time.perf_counter()
    outcome = resolve(spec.analyze)(ctx)
    if not isinstance(outcome, AnalyzeOutcome):
        raise TypeError(f"{spec.name}.analyze must return attnkit.analyze.AnalyzeOutcome, got {type(outcome).__name__}")
    elapsed = time.perf_counter() - t0

    report = Report(out_dir, f"attnkit analyze {spec.name}: {model_name}")
    paper = getattr(spec, "paper", None)
    setup = [
        f"{spec.description}",
        f"Model {model_name}; inputs: {'prompt file ' + args.prompts if prompts else 'generated locally, seed ' + str(args.seed)}"
        f"{' (quick)' if args.quick else ''}; parameters {params}; {elapsed:.0f} s.",
    ]
    if paper is not None:
        setup.insert(0, f"Paper: {paper.title}" + (f" (arXiv:{paper.arxiv})" if getattr(paper, "arxiv", None) else ""))
    report.add(Section("Setup", paragraphs=setup))
    if outcome.comparisons:
        report.add(
            Section(
                "Interventions against their controls",
                paragraphs=["Each effect beside the same intervention on a control of the same size."],
                tables=[(COMPARISON_HEADER, [c.row() for c in outcome.comparisons])],
            )
        )
    paragraphs = list(outcome.paragraphs)
    if outcome.files:
        paragraphs.append("Files: " + ", ".join(Path(f).name for f in outcome.files))
    report.add(Section("Results", paragraphs=paragraphs, tables=list(outcome.tables), figures=list(outcome.figures)))
    report.results = {
        "analysis": spec.name,
        "model": model_name,
        "params": repr(params),
        "seed": args.seed,
        "quick": args.quick,
        "seconds": elapsed,
        "summary": outcome.summary,
        "comparisons": [c.__dict__ for c in outcome.comparisons],
        **outcome.results,
    }
    path = report.write()

    if outcome.summary:
        width = max(len(str(k)) for k in outcome.summary)
        for k, v in outcome.summary.items():
            print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if outcome.comparisons:
        print()
        print(" | ".join(COMPARISON_HEADER))
        for c in outcome.comparisons:
            print(" | ".join(f"{x:.3g}" if isinstance(x, float) else str(x) for x in c.row()))
    print(f"\nreport: {path}  (results: {path.parent / 'results.json'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
