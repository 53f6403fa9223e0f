"""``attnkit run``: the main job on a real model.

Loads the embedded model, builds needle-in-a-haystack prompts (about 2k tokens by default),
runs every installed analysis that has a main-job entry (retrieval heads ...), answers each
prompt with the full KV cache and with the best cache policies (:data:`BEST_POLICIES`, those
installed; ``--cache all`` for every installed one) at several budgets (12.5%, 25% and 50% of
each prompt by default), and writes ``report.html`` (tables, an accuracy-vs-budget curve) and
``results.json`` into a folder, printing a summary table.

The core alone is enough: the prompts come from :mod:`attnkit.data.needles` and the built-in
``window`` / ``sink_window`` policies run; each installed plugin adds its policies and
analyses as more rows and sections. A policy that cannot be built at the budget, or an
analysis whose module cannot be imported, is skipped with its reason in the report.

>>> from attnkit.mainjob import main
>>> main(["--cases", "2", "--length", "512"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BEST_POLICIES",
    "DEFAULT_BUDGETS",
    "AnalysisOutcome",
    "JobContext",
    "greedy",
    "greedy_lockstep",
    "main",
    "word_recall",
]

#: The policies ``attnkit run`` answers with by default (``--cache best``), in this order, when
#: installed: the two with the best needle accuracy at 25% and 50% budgets in
#: ``attnkit eval cache`` (question-aware, SmolLM2, docs/benchmarks.md "KV-cache compression"),
#: and sink_window as the streaming baseline the others are read against.
BEST_POLICIES = ("snapkv", "adakv", "sink_window")
#: Budgets (ratios of each prompt) of the default accuracy-vs-budget curve.
DEFAULT_BUDGETS = (0.125, 0.25, 0.5)


@dataclass
class JobContext:
    """What an analysis' ``main_job`` function receives."""

    model: Any
    tokenizer: Any
    model_name: str
    cases: list[Any]
    attention: str
    attention_params: dict[str, Any]
    out_dir: Path
    seed: int = 0
    max_new_tokens: int = 24
    progress: bool = True


@dataclass
class AnalysisOutcome:
    """What an analysis' ``main_job`` function returns for the report.

    :ivar summary: numbers for ``results.json`` and the printed summary.
    :ivar cache_params: parameters this analysis provides to cache policies, by policy name
        (the retrieval-head-aware cache takes the detected heads from here): a dict merged
        with ``{"budget": budget}``, or ``(case, budget) -> dict`` giving all of them.
    """

    name: str
    summary: dict[str, Any] = field(default_factory=dict)
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[Sequence[str], Sequence[Sequence[Any]]]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    cache_params: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PromptCase:
    """A prompt without a needle (``--prompt-file``): answered, not scored."""

    input_ids: list[int]
    answer: str = ""
    question: str = ""
    length: int = 0
    depth: float = float("nan")

    def tensor(self) -> Any:
        import torch

        return torch.tensor([self.input_ids], dtype=torch.long)


def word_recall(reference: str, prediction: str) -> float:
    """ROUGE-1 recall on lower-cased words: share of the reference's words (with multiplicity)
    found in the prediction."""
    ref = re.findall(r"[a-z0-9]+", reference.lower())
    pred = re.findall(r"[a-z0-9]+", prediction.lower())
    if not ref:
        return 0.0
    pool: dict[str, int] = {}
    for w in pred:
        pool[w] = pool.get(w, 0) + 1
    hit = 0
    for w in ref:
        if pool.get(w, 0) > 0:
            pool[w] -= 1
            hit += 1
    return hit / len(ref)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    for text in ("\n", ".\n"):
        enc = tokenizer.encode(text, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(enc[0])
    return ids


def greedy(model: Any, ids: Any, cache: Any, max_new_tokens: int, stop: set[int]) -> dict[str, Any]:
    """Greedy decoding one forward at a time: generated ids and the prefill / decode seconds."""
    import torch

    out_ids: list[int] = []
    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True)
        prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        steps = 0
        while True:
            token = int(out.logits[0, -1].argmax())
            out_ids.append(token)
            if token in stop or len(out_ids) >= max_new_tokens:
                break
            out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
            steps += 1
        decode = time.perf_counter() - t0
    return {"ids": out_ids, "prefill_s": prefill, "decode_s": decode, "decode_steps": steps}


def greedy_lockstep(
    model: Any, ids: Any, caches: dict[str, Any], max_new_tokens: int, stop: set[int], *, rotate: int = 0
) -> dict[str, dict[str, Any]]:
    """:func:`greedy` for several caches on one prompt, in lockstep: every cache's prefill,
    then one decode step of every cache still answering, and so on, the order rotating each
    step. Each cache's times are sums of its own forwards; a noisy spell of a shared machine
    falls on all of them alike instead of on whichever ran then.

    :returns: ``{name: {"ids", "prefill_s", "decode_s", "decode_steps"}}`` as :func:`greedy`.
    """
    import torch

    names = list(caches)
    res = {n: {"ids": [], "prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0} for n in names}
    logits: dict[str, Any] = {}

    def order(step: int) -> list[str]:
        shift = (rotate + step) % len(names)
        return names[shift:] + names[:shift]

    with torch.no_grad():
        for n in order(0):
            t0 = time.perf_counter()
            logits[n] = model(input_ids=ids, cache=caches[n], use_cache=True).logits
            res[n]["prefill_s"] = time.perf_counter() - t0
        active = set(names)
        step = 0
        while active:
            step += 1
            for n in order(step):
                if n not in active:
                    continue
                t0 = time.perf_counter()
                token = int(logits[n][0, -1].argmax())
                res[n]["ids"].append(token)
                if token in stop or len(res[n]["ids"]) >= max_new_tokens:
                    active.discard(n)
                else:
                    logits[n] = model(input_ids=torch.tensor([[token]]), cache=caches[n], use_cache=True).logits
                    res[n]["decode_steps"] += 1
                res[n]["decode_s"] += time.perf_counter() - t0
    return res


def _cases(args: argparse.Namespace, tokenizer: Any) -> tuple[list[Any], str]:
    if args.prompt_file:
        text = Path(args.prompt_file).read_text(encoding="utf-8")
        msgs = [{"role": "user", "content": text}]
        try:
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
        except (ValueError, AttributeError):
            ids = tokenizer.encode(text)
        return [PromptCase(input_ids=list(ids), length=len(ids))], f"prompt file {args.prompt_file}"
    from attnkit.data.needles import make_case

    lengths = args.lengths or [args.length]
    cases = []
    for i in range(args.cases):
        length = lengths[i % len(lengths)]
        cases.append(make_case(tokenizer, length=length, depth=_spread_depth(i, args.cases), seed=args.seed + i))
    return cases, "needle-in-a-haystack cases generated locally (attnkit.data.needles)"


def _spread_depth(i: int, n: int) -> float:
    """Depth in percent of case ``i`` of ``n``: spread over 0-100 %, 50 % for a single case."""
    return 50.0 if n == 1 else 100.0 * i / (n - 1)


def _policies(args: argparse.Namespace) -> list[str]:
    import attnkit

    installed = [s.name for s in attnkit.list_specs("cache") if s.name != "full"]
    if args.cache in (None, "best"):
        return [n for n in BEST_POLICIES if n in installed]
    if args.cache == "all":
        return installed
    if args.cache == "none":
        return []
    names = [n for n in args.cache.split(",") if n]
    for n in names:
        try:
            attnkit.get_spec(n, "cache")
        except ValueError as exc:  # lists the installed ones
            raise SystemExit(f"--cache: {exc} (a plugin's policy runs only when that plugin is installed)") from None
    return [n for n in names if n != "full"]


def _analyses(args: argparse.Namespace) -> list[Any]:
    import attnkit

    specs = [s for s in attnkit.list_specs("analysis") if getattr(s, "main_job", None)]
    if args.analyses in (None, "all"):
        return specs
    if args.analyses == "none":
        return []
    wanted = [n for n in args.analyses.split(",") if n]
    out = []
    for n in wanted:
        try:
            spec = attnkit.get_spec(n, "analysis")
        except ValueError as exc:  # lists the installed ones
            raise SystemExit(
                f"--analyses: {exc} (a plugin's analysis runs only when that plugin is installed)"
            ) from None
        if not getattr(spec, "main_job", None):
            raise SystemExit(f"analysis {n!r} has no main-job entry; it can be used with attnkit.patch(analyses=[...])")
        out.append(spec)
    return out


def _run_analyses(specs: Sequence[Any], job: JobContext, skipped: dict[str, str]) -> list[AnalysisOutcome]:
    """Each spec's ``main_job`` on ``job``; one whose code cannot be imported is left out with
    its reason in ``skipped`` (a plugin installed without one of its own dependencies), and the
    job goes on without it. Anything else an analysis raises is a bug and propagates."""
    from attnkit.registry import resolve

    outcomes = []
    for spec in specs:
        try:
            outcomes.append(resolve(spec.main_job)(job))
        except ImportError as exc:
            skipped[f"analysis {spec.name}"] = f"{type(exc).__name__}: {exc}"
            print(f"      skipped analysis {spec.name}: {type(exc).__name__}: {exc}", flush=True)
    return outcomes


def _policy_kwargs(name: str, budget: float | int, case: Any, cache_params: dict[str, Any]) -> dict[str, Any]:
    """Parameters of policy ``name`` for one prompt: the budget, plus what analyses provided."""
    extra = cache_params.get(name, {})
    return extra(case, budget) if callable(extra) else {"budget": budget, **extra}


def _buildable(
    policies: Sequence[str],
    budget: float | int,
    cases: Sequence[Any],
    cache_params: dict[str, Any],
    skipped: dict[str, str],
) -> list[str]:
    """The policies that can be built at ``budget`` for every case; the others go to ``skipped``
    with the policy's own error (a policy needing a parameter no analysis provided, say), so
    one policy that does not fit leaves a row out rather than ending the job."""
    from attnkit.cache import build_policy

    out = []
    for name in policies:
        try:
            for case in cases:
                build_policy(name, **_policy_kwargs(name, budget, case, cache_params))
        except (ValueError, TypeError) as exc:
            skipped[f"policy {name}@{budget}"] = f"{type(exc).__name__}: {exc}"
            print(f"      skipped policy {name} at budget {budget}: {type(exc).__name__}: {exc}", flush=True)
            continue
        out.append(name)
    return out


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _lengths(text: str) -> list[int]:
    try:
        return [_positive_int(part.strip()) for part in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}") from None


def _budget(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (a ratio in (0, 1] or a token count), got {text}")
    return value


def _budgets(text: str) -> list[float | int]:
    """A comma list of budgets: ratios in (0, 1] or token counts (> 1), not a mix of both."""
    values = [_budget(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma list of budgets, got {text!r}")
    ratios = [v for v in values if v <= 1]
    if ratios and len(ratios) != len(values):
        raise argparse.ArgumentTypeError(f"give ratios of the prompt (<= 1) or token counts (> 1), not both: {text!r}")
    out: list[float | int] = [v if v <= 1 else int(v) for v in values]
    return sorted(dict.fromkeys(out))  # type: ignore[type-var]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnkit run", description=(__doc__ or "").split("\n\n")[1].replace("\n", " ").replace("``", "")
    )
    p.add_argument("--model", default="smollm2", help="embedded model (default smollm2)")
    p.add_argument("--attention", default="dense", help="attention spec every layer runs (default dense)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="attention spec parameter")
    p.add_argument(
        "--cache",
        default="best",
        help=f"cache policies: best (default: {', '.join(BEST_POLICIES)}, those installed), all (every "
        "installed one), none, or a comma list",
    )
    p.add_argument(
        "--budget",
        "--budgets",
        dest="budget",
        type=_budgets,
        default=list(DEFAULT_BUDGETS),
        help="cache budgets, a comma list of ratios of each prompt (default "
        f"{','.join(str(b) for b in DEFAULT_BUDGETS)}) or of token counts (> 1)",
    )
    p.add_argument("--analyses", default="all", help="analyses: all (default), none, or a comma list")
    p.add_argument("--prompt-file", default=None, help="answer this prompt instead of generated needle cases")
    p.add_argument(
        "--cases", type=_positive_int, default=4, help="needle cases (default 4; depths spread over 0-100%%)"
    )
    p.add_argument("--length", type=_positive_int, default=2048, help="prompt tokens per case (default 2048)")
    p.add_argument(
        "--lengths", type=_lengths, default=None, help="comma list of lengths to cycle through (e.g. 1000,2000,3000)"
    )
    p.add_argument(
        "--prefill",
        default="all",
        help="long-context kernels for the prefill table: all (default: every installed one), none, or a comma list",
    )
    p.add_argument(
        "--prefill-lengths",
        type=_lengths,
        default=None,
        help="prompt lengths for the prefill table (default: the job's prompts); --cases prompts per length; "
        "lengths beyond the model's max_position_embeddings run dense and the kernels meant to extrapolate",
    )
    p.add_argument("--max-new-tokens", type=_positive_int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="attnkit-report", help="report folder (default ./attnkit-report)")
    p.add_argument("--quick", action="store_true", help="2 cases of 512 tokens: a smoke run")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.cases, args.length, args.lengths = 2, 512, None
    if args.prompt_file and not Path(args.prompt_file).is_file():
        raise SystemExit(f"--prompt-file: no such file: {args.prompt_file}")
    budgets: list[float | int] = list(args.budget)

    import torch
    from tqdm.auto import tqdm

    import attnkit
    from attnkit.cliargs import parse_param
    from attnkit.hf.adapter import decode_reason
    from attnkit.models import load
    from attnkit.models.pretrained import PRETRAINED
    from attnkit.report import Report, Section

    # Every argument is checked here, before the model loads.
    if args.model not in PRETRAINED:
        raise SystemExit(f"--model: unknown model {args.model!r}; embedded models: {', '.join(sorted(PRETRAINED))}")
    progress = not args.no_progress
    try:
        spec = attnkit.get_spec(args.attention, "attention")
        params = dict(parse_param(p) for p in args.param)
        why = decode_reason(spec, spec.make_params(**params))
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"--attention/--param: {exc}") from None
    if why is not None:
        raise SystemExit(f"--attention: the main job generates answers, but {why}")
    policies = _policies(args)
    analysis_specs = _analyses(args)
    from attnkit.prefilljob import long_context_specs

    try:
        prefill_specs = long_context_specs(args.prefill)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    out_dir = Path(args.out)
    report = Report(out_dir, f"attnkit run: {args.model}, attention={spec.name}")

    t_start = time.perf_counter()
    print(f"[1/4] loading {args.model} ...", flush=True)
    model, tok = load(args.model)
    print("[2/4] building prompts ...", flush=True)
    cases, source = _cases(args, tok)
    job = JobContext(
        model=model,
        tokenizer=tok,
        model_name=args.model,
        cases=cases,
        attention=spec.name,
        attention_params=params,
        out_dir=out_dir,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        progress=progress,
    )
    skipped: dict[str, str] = {}
    if analysis_specs:
        print(f"[3/4] analyses: {', '.join(s.name for s in analysis_specs)}", flush=True)
    else:
        why = "--analyses none" if args.analyses == "none" else "none installed has a main-job entry"
        print(f"[3/4] analyses: none ({why})", flush=True)
    outcomes = _run_analyses(analysis_specs, job, skipped)
    cache_params: dict[str, Any] = {}
    for o in outcomes:
        for name, extra in o.cache_params.items():
            if callable(extra):
                cache_params[name] = extra
            else:
                cache_params.setdefault(name, {}).update(extra)

    at_budget = {b: _buildable(policies, b, cases, cache_params, skipped) for b in budgets}
    n_configs = sum(len(v) for v in at_budget.values())
    print(
        f"[4/4] answering {len(cases)} prompt(s) with the full cache and {n_configs} policy x budget runs ...",
        flush=True,
    )
    from transformers import DynamicCache

    from attnkit.cache import AttnkitCache, build_policy
    from attnkit.cache.bench import kv_nbytes

    stop = _stop_ids(model, tok)
    configs: list[tuple[str, Any]] = [("full", None), *((p, b) for b in budgets for p in at_budget[b])]
    rows: list[dict[str, Any]] = []
    answers: dict[str, list[str]] = {}
    bar = tqdm(total=len(configs) * len(cases), desc="answering", unit="prompt", disable=not progress)
    with attnkit.patch(model, spec.name, attention_params=params):
        # Warm-up (first-call allocations, kernel compilation) so the first policy timed is not penalised.
        greedy(model, cases[0].tensor()[:, :64], DynamicCache(config=model.config), 2, set())
        # Per prompt, the full cache and every policy answer in lockstep (one forward of each in
        # turn), so load drift on a shared machine hits them alike.
        runs: dict[str, list[tuple[Any, ...]]] = {_label(name, b): [] for name, b in configs}
        for i, case in enumerate(cases):
            caches: dict[str, Any] = {}
            for name, b in configs:
                if name == "full":
                    caches[name] = DynamicCache(config=model.config)
                else:
                    policy = build_policy(name, **_policy_kwargs(name, b, case, cache_params))
                    caches[_label(name, b)] = AttnkitCache(policy, config=model.config)
            answered = greedy_lockstep(model, case.tensor(), caches, args.max_new_tokens, stop, rotate=i)
            for name, b in configs:
                key = _label(name, b)
                r = answered[key]
                text = tok.decode(r["ids"], skip_special_tokens=True).strip()
                recall = word_recall(case.answer, text) if case.answer else float("nan")
                runs[key].append((r, text, recall, kv_nbytes(caches[key]), len(case.input_ids)))
                bar.update(1)
            del caches
        for name, b in configs:
            per_case = runs[_label(name, b)]
            answers[_label(name, b)] = [t for _, t, _, _, _ in per_case]
            scored = [rc for _, _, rc, _, _ in per_case if rc == rc]
            decode_s = sum(r["decode_s"] for r, *_ in per_case)
            steps = sum(r["decode_steps"] for r, *_ in per_case)
            rows.append(
                {
                    "policy": name,
                    "budget": b,
                    "needle_accuracy": (sum(rc > 0.5 for rc in scored) / len(scored)) if scored else None,
                    "n": len(scored),
                    "mean_recall": statistics.fmean(scored) if scored else None,
                    "decode_tokens_per_s": steps / decode_s if decode_s > 0 else None,
                    "prefill_s": statistics.fmean(r["prefill_s"] for r, *_ in per_case),
                    "kv_mib": statistics.fmean(kv for *_, kv, _ in per_case) / 2**20,
                }
            )
        full_row = rows[0]
        for row in rows:
            # speed relative to the full cache on the same prompts (1.00x = as fast; < 1 slower)
            fd, d = full_row["decode_tokens_per_s"], row["decode_tokens_per_s"]
            row["decode_vs_full"] = d / fd if fd and d else None
            row["prefill_vs_full"] = full_row["prefill_s"] / row["prefill_s"] if row["prefill_s"] > 0 else None
    bar.close()

    from attnkit.prefilljob import run_prefill_table

    prefill = None
    if prefill_specs:
        prefill_cases = cases
        if args.prefill_lengths:
            from attnkit.data.needles import make_case

            prefill_cases = [
                make_case(tok, length=length, depth=_spread_depth(i, args.cases), seed=args.seed + i)
                for length in args.prefill_lengths
                for i in range(args.cases)
            ]
        print(
            f"      prefill table: dense and {', '.join(s.name for s in prefill_specs)} on "
            f"{len(prefill_cases)} prompt(s) ...",
            flush=True,
        )
        prefill = run_prefill_table(
            model,
            tok,
            prefill_cases,
            prefill_specs,
            max_new_tokens=args.max_new_tokens,
            stop=stop,
            out_dir=out_dir,
            progress=progress,
        )
        for what, why in prefill.skipped.items():
            skipped[f"prefill {what}"] = why
    elapsed = time.perf_counter() - t_start

    # -- report -----------------------------------------------------------------------
    setup = Section(
        "Setup",
        paragraphs=[
            f"Model {args.model}; attention spec {spec.name} {params or ''}; {len(cases)} prompt(s): {source}; "
            f"prompt lengths {min(len(c.input_ids) for c in cases)}-{max(len(c.input_ids) for c in cases)} tokens; "
            f"greedy, up to {args.max_new_tokens} new tokens; cache budgets {', '.join(str(b) for b in budgets)} "
            f"({'ratios of each prompt' if isinstance(budgets[0], float) else 'tokens'}); "
            f"{torch.get_num_threads()} threads; total {elapsed:.0f} s.",
        ],
    )
    report.add(setup)
    header = [
        "policy",
        "budget",
        "needle accuracy",
        "n",
        "mean recall",
        "decode tok/s",
        "vs full",
        "prefill s",
        "vs full",
        "KV MiB",
    ]
    table_rows = [
        [
            r["policy"],
            "-" if r["budget"] is None else r["budget"],
            _opt(r["needle_accuracy"]),
            r["n"],
            _opt(r["mean_recall"]),
            _opt(r["decode_tokens_per_s"]),
            _ratio(r["decode_vs_full"]),
            r["prefill_s"],
            _ratio(r["prefill_vs_full"]),
            r["kv_mib"],
        ]
        for r in rows
    ]
    figs = [*_plot_budget_curve(rows, out_dir), *_plot_policies(rows, out_dir)]
    report.add(
        Section(
            "KV-cache policies",
            paragraphs=[
                "Needle accuracy: share of answers whose word recall of the needle answer exceeds 0.5, over the "
                "n prompts scored (with n = 4, one answer moves it by 0.25). Decode tok/s and prefill s are "
                "measured on the same prompts as the full cache (transformers' DynamicCache): on each prompt "
                "the full cache and the policies run in lockstep, one forward of each in turn; 'vs full' is "
                "the speed ratio (1.00x: as fast). A prefill is one forward per prompt, so its ratio carries "
                "the machine's noise of that moment.",
                *(f"Skipped {what}: {why}" for what, why in skipped.items()),
            ],
            tables=[(header, table_rows)],
            figures=figs,
        )
    )
    if prefill is not None:
        report.add(
            Section(
                "Long-context kernels: prefill",
                paragraphs=[
                    "Every installed long-context kernel (an attention spec declaring model_prefill) prefills the "
                    "same needle prompts as dense attention (transformers' SDPA, unpatched), the order rotating per "
                    "prompt; 'latency / dense' is the kernel's summed prefill seconds over dense's on the same "
                    "prompts (0.60 = 40% less time; one forward per prompt, so it carries the machine's noise). "
                    "Decode 'kernel': the answer is generated with the kernel too; 'dense': the kernel cannot "
                    "attend from one query over a cache, so the answer is decoded with dense attention over the "
                    "cache the kernel filled. Token counts marked * are longer than the model's "
                    "max_position_embeddings; only kernels meant to extrapolate run there, beside dense.",
                ],
                tables=[(PREFILL_HEADER, [_prefill_cells(r) for r in prefill.rows])],
                figures=prefill.figures,
            )
        )
    case0 = cases[0]
    ans_rows = [[name, texts[0]] for name, texts in answers.items()]
    report.add(
        Section(
            "First prompt's answers",
            paragraphs=[f"Question: {case0.question or '(prompt file)'}; expected: {case0.answer or '-'}"],
            tables=[(["policy", "answer"], ans_rows)],
        )
    )
    for o in outcomes:
        report.add(Section(f"Analysis: {o.name}", paragraphs=o.paragraphs, tables=o.tables, figures=o.figures))
    report.results = {
        "setup": {
            "model": args.model,
            "attention": spec.name,
            "attention_params": params,
            "budgets": budgets,
            "cases": [
                {"length": len(c.input_ids), "depth": getattr(c, "depth", None), "answer": c.answer} for c in cases
            ],
            "threads": torch.get_num_threads(),
            "seconds": elapsed,
        },
        "policies": rows,
        "answers": answers,
        "analyses": {o.name: o.summary for o in outcomes},
        "prefill": prefill.rows if prefill is not None else [],
        "skipped": skipped,
    }
    path = report.write()

    print()
    print(
        f"{'policy':<24}{'budget':>8}{'needle acc':>12}{'n':>4}{'recall':>8}{'decode tok/s':>14}{'vs full':>9}"
        f"{'prefill s':>11}{'vs full':>9}{'KV MiB':>9}"
    )
    for r in rows:
        bud = "-" if r["budget"] is None else str(r["budget"])
        print(
            f"{r['policy']:<24}{bud:>8}{_opt(r['needle_accuracy']):>12}{r['n']:>4}{_opt(r['mean_recall']):>8}"
            f"{_opt(r['decode_tokens_per_s']):>14}{_ratio(r['decode_vs_full']):>9}"
            f"{r['prefill_s']:>11.2f}{_ratio(r['prefill_vs_full']):>9}{r['kv_mib']:>9.1f}"
        )
    if prefill is not None and prefill.rows:
        print()
        print("".join(f"{h:>{w}}" if j else f"{h:<{w}}" for j, (h, w) in enumerate(zip(PREFILL_HEADER, _PREFILL_W))))
        for r in prefill.rows:
            cells = _prefill_cells(r)
            print("".join(f"{c:>{w}}" if j else f"{c:<{w}}" for j, (c, w) in enumerate(zip(cells, _PREFILL_W))))
    for o in outcomes:
        if o.summary.get("headline"):
            print(f"{o.name}: {o.summary['headline']}")
    for what, why in skipped.items():
        print(f"skipped {what}: {why}")
    print(f"\nreport: {path}  (results: {path.parent / 'results.json'})")
    return 0


PREFILL_HEADER = ["kernel", "tokens", "needle accuracy", "n", "mean recall", "prefill s", "latency / dense", "decode"]
_PREFILL_W = (22, 8, 17, 4, 13, 11, 17, 8)


def _prefill_cells(r: dict[str, Any]) -> list[str]:
    tokens = f"{r['tokens']:.0f}" + ("*" if r.get("beyond_trained") else "")
    return [
        r["kernel"],
        tokens,
        _opt(r["needle_accuracy"]),
        str(r["n"]),
        _opt(r["mean_recall"]),
        f"{r['prefill_s']:.2f}",
        f"{r['latency_vs_dense']:.2f}x",
        r["decode"],
    ]


def _opt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _label(name: str, budget: float | int | None) -> str:
    """``snapkv@0.25``; the full cache is just ``full``."""
    return name if budget is None else f"{name}@{budget}"


def _plot_budget_curve(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Needle accuracy against the budget, one line per policy, the full cache dashed."""
    from attnkit.figures import available, figure

    if not available():
        return []
    budgets = sorted({r["budget"] for r in rows if r["budget"] is not None})
    if len(budgets) < 2:
        return []
    path = out_dir / "accuracy_vs_budget.png"
    with figure(path, figsize=(6.4, 4.0), dpi=110) as (_fig, ax):
        for name in dict.fromkeys(r["policy"] for r in rows if r["budget"] is not None):
            pts = sorted((r["budget"], r["needle_accuracy"]) for r in rows if r["policy"] == name and r["budget"])
            pts = [(b, a) for b, a in pts if a is not None]
            if pts:
                ax.plot([b for b, _ in pts], [a for _, a in pts], marker="o", label=name)
        full = [r["needle_accuracy"] for r in rows if r["budget"] is None and r["needle_accuracy"] is not None]
        if full:
            ax.axhline(full[0], color="k", linestyle="--", linewidth=1, label="full cache")
        ax.set_xscale("log", base=2)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("budget (ratio of each prompt)" if isinstance(budgets[0], float) else "budget (tokens)")
        ns = sorted({r["n"] for r in rows})
        ax.set_ylabel("needle accuracy" + (f" (n={ns[0]} prompts)" if len(ns) == 1 else ""))
        ax.set_ylim(-0.05, 1.05)
        ax.set_title("needle accuracy vs KV budget", fontsize=10)
        ax.legend(fontsize=7)
    return [path]


def _plot_policies(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    from attnkit.figures import available, figure

    if not available():
        return []
    names = [_label(r["policy"], r["budget"]) for r in rows]
    path = out_dir / "policies.png"
    with figure(path, ncols=3, figsize=(13, 3.6), dpi=110) as (_fig, axes):
        series = (
            ("needle_accuracy", "needle accuracy"),
            ("decode_tokens_per_s", "decode tokens / s"),
            ("kv_mib", "KV cache MiB (end of generation)"),
        )
        for ax, (key, title) in zip(axes, series):
            vals = [r[key] if r[key] is not None else 0.0 for r in rows]
            bars = ax.bar(range(len(names)), vals, color=["#555"] + ["#3b7dd8"] * (len(names) - 1))
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            if key == "needle_accuracy":
                # how many prompts each bar stands on: with n = 4, 0.25 is one answer in four
                ax.bar_label(bars, labels=[f"n={r['n']}" for r in rows], fontsize=7, padding=2)
                ns = sorted({r["n"] for r in rows})
                title = f"{title} (n={ns[0]} prompts)" if len(ns) == 1 else f"{title} (n per bar)"
                ax.set_ylim(0, 1.15)
            ax.set_title(title, fontsize=10)
    return [path]


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
