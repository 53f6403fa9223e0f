"""``attnkit eval cache``: KV-cache policies and budgets on needles, perplexity and reasoning.

Runs any set of installed cache policies at any budgets, always beside the full cache (the
reference row), on three tasks, and writes ``results.json`` (one row per task, setting,
length, policy, budget and re-rotation) and a self-contained ``report.html`` with plots,
printing the table:

* ``needle``: needle-in-a-haystack cases (:mod:`attnkit.data.needles`), ``--cases`` per
  length, needle depths spread over 0-100%. ``question-aware``: the whole prompt (context and
  question) is one forward and the budget holds from then on, answer included (the main job's
  setting). ``question-agnostic``: the context alone is the first forward, compressed once to
  the budget (``compress="prompt"``), then the question is a second forward and everything
  after the compression is kept (kvpress's pipeline). Accuracy: share of answers whose word
  recall of the needle exceeds 0.5; mean recall beside it.
* ``ppl``: perplexity of long real text (Python's own documentation) fed in forwards of
  ``--ppl-chunk`` tokens, the cache evicting between them, at each ``--ppl-lengths`` length;
  a length beyond the model's ``max_position_embeddings`` shows which caches stay stable there
  (``sink_window`` with ``--rerotate``). A ratio budget is a share of the text's length, an
  integer a token count.
* ``reasoning``: generated multi-step additions answered with a worked chain of thought
  (:mod:`attnkit.evaluate.tasks`), checked exactly. The full cache answers first; a policy's
  ratio budget is a share of the full cache's final size on that problem (prompt plus its
  chain), so the cache must drop part of what the chain needs.

Peak and mean KV bytes (the keys and values of the tokens a cache keeps; ``peak_alloc_bytes``
adds the empty and spare slots allocated) are sampled after every forward; decode tokens/s count one-token
forwards only, measured in lockstep with the full cache on the same prompts (one forward of
each cache in turn), and ``vs full`` is the ratio.

>>> from attnkit.evaluate.cache import main
>>> main(["--quick"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS", "TASKS", "build_parser", "main", "row_key"]

TASKS = ("needle", "ppl", "reasoning")
SETTINGS = ("question-aware", "question-agnostic")
#: Keys every row has (kvpress rows from ``tools/kvpress_rows.py`` too), so tables merge.
ROW_KEYS = (
    "source",
    "task",
    "setting",
    "length",
    "policy",
    "budget",
    "rerotate",
    "n",
    "accuracy",
    "mean_recall",
    "ppl",
    "peak_kv_bytes",
    "mean_kv_bytes",
    "decode_tokens_per_s",
    "decode_vs_full",
)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies a row: source, task, setting, length, policy, budget, re-rotation."""
    return tuple(row.get(k) for k in ("source", "task", "setting", "length", "policy", "budget", "rerotate"))


# -- argument types ------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        out = [_positive_int(part.strip()) for part in text.split(",") if part.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected a comma list of positive integers, got {text!r}")
    return out


def _budget_list(text: str) -> list[float | int]:
    out: list[float | int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list of budgets, got {part!r} in {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"a budget is a ratio in (0, 1] or a token count >= 2, got {part}")
        if value > 1 and value != int(value):
            raise argparse.ArgumentTypeError(f"a budget above 1 is a token count and must be whole, got {part}")
        out.append(value if value <= 1 else int(value))
    if not out:
        raise argparse.ArgumentTypeError(f"expected a comma list of budgets, got {text!r}")
    return out


def _choice_list(allowed: Sequence[str], what: str) -> Any:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if names == ["all"]:
            return list(allowed)
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"{what} must be a comma list of {', '.join(allowed)} (or all), got {text!r}"
            )
        return list(dict.fromkeys(names))

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="attnkit eval cache",
        description=(__doc__ or "").split("\n\n")[0].replace("``", ""),
        epilog="Budgets: a ratio in (0, 1] (of the prompt, the context, the text or the full cache, per task) "
        "or a token count >= 2.",
    )
    p.add_argument("--model", default="smollm2", help="embedded model (default smollm2)")
    p.add_argument(
        "--policies",
        default="all",
        help="cache policies: all (default: every installed one) or a comma list; "
        "the full cache always runs as the reference row",
    )
    p.add_argument("--budgets", type=_budget_list, default=[0.25, 0.5], help="comma list (default 0.25,0.5)")
    p.add_argument(
        "--tasks", type=_choice_list(TASKS, "--tasks"), default=list(TASKS), help="needle,ppl,reasoning (default all)"
    )
    p.add_argument(
        "--setting",
        choices=("question-aware", "question-agnostic", "both"),
        default="both",
        help="needle settings (default both)",
    )
    p.add_argument(
        "--rerotate",
        nargs="?",
        const="both",
        default="off",
        choices=("off", "on", "both"),
        help="re-rotate kept keys (StreamingLLM's position shift): off (default), on, or both (bare --rerotate): "
        "every policy also runs re-rotated, as extra rows",
    )
    p.add_argument("--lengths", type=_int_list, default=[2048], help="needle context lengths (default 2048)")
    p.add_argument("--cases", type=_positive_int, default=4, help="needle cases per length (default 4)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=24, help="needle answer tokens (default 24)")
    p.add_argument(
        "--ppl-lengths", type=_int_list, default=[4096], help="text lengths in tokens for perplexity (default 4096)"
    )
    p.add_argument("--ppl-length", type=_positive_int, default=None, help="one more perplexity length (e.g. 16384)")
    p.add_argument(
        "--ppl-chunk", type=_positive_int, default=256, help="tokens per forward for perplexity (default 256)"
    )
    p.add_argument("--ppl-budgets", type=_budget_list, default=None, help="perplexity budgets (default: --budgets)")
    p.add_argument("--ppl-policies", default=None, help="policies for perplexity (default: --policies)")
    p.add_argument("--ppl-file", default=None, help="a UTF-8 text file instead of Python's documentation")
    p.add_argument("--problems", type=_positive_int, default=8, help="reasoning problems (default 8)")
    p.add_argument("--steps", type=_positive_int, default=4, help="additions per reasoning problem (default 4)")
    p.add_argument(
        "--max-addend", type=_positive_int, default=3, help="reasoning numbers are drawn from 1..N (default 3)"
    )
    p.add_argument("--reasoning-policies", default=None, help="policies for reasoning (default: --policies)")
    p.add_argument(
        "--policy-param",
        action="append",
        default=[],
        metavar="POLICY:NAME=VALUE",
        help="a parameter of one policy (repeatable; VALUE read as JSON, else a string), e.g. lazyeviction:window=16",
    )
    p.add_argument(
        "--cache-params",
        default="auto",
        metavar="PATH|auto|none",
        help="JSON {policy: {name: value}} of parameters analyses provide (the retrieval heads), as attnkit bench "
        "cache: auto (default) loads or makes the attnkit cache folder's file, only when a policy needs it",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="attnkit-eval", help="report folder (default ./attnkit-eval)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2 needle cases of 512 tokens, perplexity at 512 in chunks of 128, 2 reasoning problems",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def _parse_policy_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if ":" not in item or "=" not in item.split(":", 1)[1]:
            raise SystemExit(f"--policy-param must look like POLICY:NAME=VALUE, got {item!r}")
        policy, rest = item.split(":", 1)
        key, value = rest.split("=", 1)
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(policy, {})[key] = parsed
    return out


def _policy_names(text: str | None, option: str, installed: list[str]) -> list[str]:
    if text in (None, "all"):
        return [n for n in installed if n != "full"]
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in installed]
    if bad:
        raise SystemExit(
            f"{option}: {', '.join(map(repr, bad))} not installed; installed cache policies: {', '.join(installed)} "
            "(a plugin's policy runs only when that plugin is installed)"
        )
    return [n for n in dict.fromkeys(names) if n != "full"]


def _check_args(args: argparse.Namespace) -> dict[str, Any]:
    """Every check that needs no model; returns what the run needs. ``SystemExit`` on bad input."""
    import attnkit
    from attnkit.models.pretrained import PRETRAINED

    decoders = sorted(n for n, m in PRETRAINED.items() if m.family == "llama")
    if args.model not in decoders:
        raise SystemExit(f"--model: {args.model!r} is not an embedded decoder model; choose from {', '.join(decoders)}")
    installed = sorted(s.name for s in attnkit.list_specs("cache"))
    policies = _policy_names(args.policies, "--policies", installed)
    ppl_policies = _policy_names(args.ppl_policies, "--ppl-policies", installed) if args.ppl_policies else policies
    reasoning_policies = (
        _policy_names(args.reasoning_policies, "--reasoning-policies", installed)
        if args.reasoning_policies
        else policies
    )
    extra = _parse_policy_params(args.policy_param)
    unknown = sorted(set(extra) - set(installed))
    if unknown:
        raise SystemExit(f"--policy-param: {unknown} not installed; installed cache policies: {', '.join(installed)}")
    if args.cache_params not in ("auto", "none") and not Path(args.cache_params).is_file():
        raise SystemExit(f"--cache-params: no such file: {args.cache_params}")
    if args.ppl_file is not None and not Path(args.ppl_file).is_file():
        raise SystemExit(f"--ppl-file: no such file: {args.ppl_file}")
    if "needle" in args.tasks and min(args.lengths) < 64:
        raise SystemExit(f"--lengths: a needle context needs >= 64 tokens, got {min(args.lengths)}")
    ppl_lengths = list(dict.fromkeys([*args.ppl_lengths, *([args.ppl_length] if args.ppl_length else [])]))
    if "ppl" in args.tasks and min(ppl_lengths) < 2:
        raise SystemExit(f"--ppl-lengths: perplexity needs >= 2 tokens, got {min(ppl_lengths)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out: {out} exists and is not a folder")
    settings = list(SETTINGS) if args.setting == "both" else [args.setting]
    rerotations = {"off": [False], "on": [True], "both": [False, True]}[args.rerotate]
    return {
        "policies": policies,
        "ppl_policies": ppl_policies,
        "reasoning_policies": reasoning_policies,
        "extra": extra,
        "ppl_lengths": ppl_lengths,
        "settings": settings,
        "rerotations": rerotations,
    }


# -- policies --------------------------------------------------------------------------------
class _Policies:
    """Builds the caches of the run: parameters = budget, then what analyses provide, then
    ``--policy-param``; analysis parameters are loaded only when a policy fails without them."""

    def __init__(self, args: argparse.Namespace, extra: dict[str, dict[str, Any]], model: Any, tok: Any) -> None:
        self.args, self.extra, self.model, self.tok = args, extra, model, tok
        self.provided: dict[str, dict[str, Any]] | None = None
        self.provided_from = "not needed"
        self.skipped: dict[str, str] = {}

    def _params(self, name: str, budget: float | int) -> dict[str, Any]:
        params: dict[str, Any] = {"budget": budget}
        params.update((self.provided or {}).get(name, {}))
        params.update(self.extra.get(name, {}))
        return params

    def _load_provided(self) -> None:
        if self.provided is not None:
            return
        from attnkit.cache.bench import load_cache_params

        self.provided, self.provided_from = load_cache_params(
            self.args.cache_params, self.model, self.tok, self.args.model
        )

    def policy(self, name: str, budget: float | int, *, compress: str = "always", rerotate: bool = False) -> Any:
        from attnkit.cache import build_policy

        try:
            built = build_policy(name, **self._params(name, budget))
        except (ValueError, TypeError):
            if self.provided is not None or self.args.cache_params == "none":
                raise
            self._load_provided()
            built = build_policy(name, **self._params(name, budget))
        built.compress = compress
        built.rerotate = rerotate
        return built

    def buildable(
        self, names: Sequence[str], budgets: Sequence[float | int], rerotations: Sequence[bool], what: str
    ) -> list[tuple[str, Any, bool]]:
        """``(name, budget, rerotate)`` configurations that build; the others go to ``skipped``."""
        out: list[tuple[str, Any, bool]] = []
        for name in names:
            for b in budgets:
                try:
                    self.policy(name, b)
                except (ValueError, TypeError) as exc:
                    self.skipped[f"{what} {name}@{b}"] = f"{type(exc).__name__}: {exc}"
                    continue
                out.extend((name, b, rr) for rr in rerotations)
        return out

    def cache(self, name: str, budget: float | int, *, compress: str = "always", rerotate: bool = False) -> Any:
        from attnkit.cache import AttnkitCache

        return AttnkitCache(self.policy(name, budget, compress=compress, rerotate=rerotate), config=self.model.config)


def _label(name: str, rerotate: bool) -> str:
    return f"{name}+rerotate" if rerotate else name


def _full_cache(model: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _row(
    task: str, setting: str | None, length: int | None, policy: str, budget: Any, rerotate: bool
) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    row.update(
        source="attnkit", task=task, setting=setting, length=length, policy=policy, budget=budget, rerotate=rerotate
    )
    return row


def _kv_stats(samples: Sequence[Sequence[int]]) -> tuple[float | None, float | None]:
    """Peak over every forward of every run, and the mean of each run's mean."""
    runs = [s for s in samples if s]
    if not runs:
        return None, None
    return float(max(max(s) for s in runs)), statistics.fmean(statistics.fmean(s) for s in runs)


def _speed(results: Sequence[dict[str, Any]]) -> float | None:
    steps = sum(r["decode_steps"] for r in results)
    seconds = sum(r["decode_s"] for r in results)
    return steps / seconds if steps and seconds > 0 else None


def _relative(rows: list[dict[str, Any]], group: tuple[str, ...]) -> None:
    """``decode_vs_full`` of each row against the full row of its group."""
    full = {tuple(r[k] for k in group): r for r in rows if r["policy"] == "full"}
    for r in rows:
        ref = full.get(tuple(r[k] for k in group))
        a, b = r.get("decode_tokens_per_s"), ref.get("decode_tokens_per_s") if ref else None
        r["decode_vs_full"] = a / b if a and b else None


# -- tasks -----------------------------------------------------------------------------------
def _needle_task(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from attnkit.evaluate.generate import generate_lockstep, stop_ids
    from attnkit.evaluate.prompts import make_needle_cases
    from attnkit.mainjob import word_recall

    args, model, tok, pol = ctx["args"], ctx["model"], ctx["tok"], ctx["policies"]
    cases = make_needle_cases(tok, args.cases, args.lengths, seed=args.seed)
    configs = pol.buildable(ctx["policies_needle"], args.budgets, ctx["rerotations"], "needle")
    stop = stop_ids(model, tok)
    rows: list[dict[str, Any]] = []
    answers: dict[str, list[str]] = {}
    bar = tqdm(
        total=len(ctx["settings"]) * len(cases) * (1 + len(configs)),
        desc="needle",
        unit="answer",
        disable=not ctx["progress"],
    )
    for setting in ctx["settings"]:
        compress = "always" if setting == "question-aware" else "prompt"
        runs: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for i, case in enumerate(cases):
            caches: dict[tuple[Any, ...], Any] = {("full", None, False): _full_cache(model)}
            for name, b, rr in configs:
                caches[(name, b, rr)] = pol.cache(name, b, compress=compress, rerotate=rr)
            segments = [case.input_ids] if setting == "question-aware" else [case.context_ids, case.question_ids]
            out = generate_lockstep(model, segments, caches, args.max_new_tokens, stop, rotate=i)
            for key, r in out.items():
                text = tok.decode(r["ids"], skip_special_tokens=True).strip()
                runs.setdefault(key, []).append((case, r, text, word_recall(case.answer, text)))
                if i == 0:
                    answers[f"{setting} {_label(key[0], key[2])}@{key[1]}"] = [text]
                bar.update(1)
            del caches
        for key, per_case in runs.items():
            name, b, rr = key
            for length in args.lengths:
                at = [x for x in per_case if x[0].length == length]
                errors = [x[1]["error"] for x in at if x[1]["error"]]
                if errors:
                    pol.skipped[f"needle {setting} {_label(name, rr)}@{b} length {length}"] = errors[0]
                    continue
                row = _row("needle", setting, length, name, b, rr)
                recalls = [x[3] for x in at]
                row.update(
                    n=len(at),
                    accuracy=sum(rc > 0.5 for rc in recalls) / len(at),
                    mean_recall=statistics.fmean(recalls),
                    decode_tokens_per_s=_speed([x[1] for x in at]),
                    prefill_s=statistics.fmean(x[1]["prefill_s"] for x in at),
                    depths=[x[0].depth for x in at],
                    recalls=recalls,
                )
                row["peak_kv_bytes"], row["mean_kv_bytes"] = _kv_stats([x[1]["kv_bytes"] for x in at])
                row["peak_alloc_bytes"] = _kv_stats([x[1]["kv_alloc_bytes"] for x in at])[0]
                rows.append(row)
    bar.close()
    _relative(rows, ("setting", "length"))
    ctx["answers"]["needle"] = answers
    return rows


def _ppl_task(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    import attnkit  # noqa: F401  (plugins registered)
    from attnkit.evaluate.generate import perplexity
    from attnkit.evaluate.text import token_ids

    args, model, tok, pol = ctx["args"], ctx["model"], ctx["tok"], ctx["policies"]
    budgets = args.ppl_budgets or args.budgets
    max_pos = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    lengths = ctx["ppl_lengths"]
    configs = pol.buildable(ctx["policies_ppl"], budgets, ctx["rerotations"], "ppl")
    rows: list[dict[str, Any]] = []
    total = sum(length * (1 + len(configs)) for length in lengths)
    bar = tqdm(total=total, desc="perplexity", unit="tok", unit_scale=True, disable=not ctx["progress"])
    for length in lengths:
        ids = token_ids(tok, length, args.ppl_file)
        # the policies first, the full cache last: at long lengths it is the slow one
        for name, b, rr in [*configs, ("full", None, False)]:
            tokens = None if b is None else (b if isinstance(b, int) else max(1, round(b * length)))
            cache = _full_cache(model) if name == "full" else pol.cache(name, tokens, rerotate=rr)
            boundary = max_pos if max_pos and length > max_pos else None
            try:
                r = perplexity(model, ids, cache, args.ppl_chunk, boundary=boundary, progress=bar)
            except (ValueError, NotImplementedError) as exc:
                pol.skipped[f"ppl {_label(name, rr)}@{b} length {length}"] = f"{type(exc).__name__}: {exc}"
                continue
            row = _row("ppl", None, length, name, b, rr)
            row.update(
                n=length,
                ppl=r["ppl"],
                ppl_inside=r["ppl_inside"],
                ppl_beyond=r["ppl_beyond"],
                budget_tokens=tokens,
                tokens_per_s=length / r["seconds"] if r["seconds"] > 0 else None,
                chunk=args.ppl_chunk,
            )
            row["peak_kv_bytes"], row["mean_kv_bytes"] = _kv_stats([r["kv_bytes"]])
            rows.append(row)
            ctx["checkpoint"](rows)
            del cache
    bar.close()
    return rows


def _reasoning_task(ctx: dict[str, Any]) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from attnkit.evaluate.generate import generate_lockstep, stop_ids
    from attnkit.evaluate.tasks import check_answer, make_problems

    args, model, tok, pol = ctx["args"], ctx["model"], ctx["tok"], ctx["policies"]
    problems = make_problems(tok, args.problems, args.steps, seed=1000 + args.seed, max_addend=args.max_addend)
    stop = stop_ids(model, tok, ("\n\n",))
    max_new = 22 * args.steps + 16
    finished = re.compile(r"answer is\s*-?\d+\s*\.")

    def done(ids: list[int]) -> bool:
        return finished.search(tok.decode(ids[-12:], skip_special_tokens=True)) is not None

    # Full cache first, alone: its accuracy, and the size a ratio budget is a share of.
    bar = tqdm(total=len(problems), desc="reasoning (full)", unit="problem", disable=not ctx["progress"])
    sizes = []
    for p in problems:
        r = generate_lockstep(model, [p.input_ids], {"full": _full_cache(model)}, max_new, stop, done=done)["full"]
        sizes.append(len(p.input_ids) + len(r["ids"]))
        bar.update(1)
    bar.close()
    configs = pol.buildable(ctx["policies_reasoning"], args.budgets, ctx["rerotations"], "reasoning")
    runs: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    bar = tqdm(total=len(problems) * (1 + len(configs)), desc="reasoning", unit="answer", disable=not ctx["progress"])
    answers: dict[str, list[str]] = {}
    for i, (p, size) in enumerate(zip(problems, sizes)):
        caches: dict[tuple[Any, ...], Any] = {("full", None, False): _full_cache(model)}
        budget_tokens: dict[tuple[Any, ...], Any] = {("full", None, False): None}
        for name, b, rr in configs:
            tokens = b if isinstance(b, int) else max(1, round(b * size))
            caches[(name, b, rr)] = pol.cache(name, tokens, rerotate=rr)
            budget_tokens[(name, b, rr)] = tokens
        out = generate_lockstep(model, [p.input_ids], caches, max_new, stop, done=done, rotate=i)
        for key, r in out.items():
            text = tok.decode(r["ids"], skip_special_tokens=True).strip()
            runs.setdefault(key, []).append((p, r, text, check_answer(p, text), budget_tokens[key]))
            answers.setdefault(f"{_label(key[0], key[2])}@{key[1]}", []).append(text)
            bar.update(1)
        del caches
    bar.close()
    rows = []
    for (name, b, rr), per in runs.items():
        errors = [x[1]["error"] for x in per if x[1]["error"]]
        if errors:
            pol.skipped[f"reasoning {_label(name, rr)}@{b}"] = errors[0]
            continue
        row = _row("reasoning", None, args.steps, name, b, rr)
        row.update(
            n=len(per),
            accuracy=sum(x[3] for x in per) / len(per),
            decode_tokens_per_s=_speed([x[1] for x in per]),
            mean_generated=statistics.fmean(len(x[1]["ids"]) for x in per),
            mean_budget_tokens=None if b is None else statistics.fmean(x[4] for x in per),
            mean_full_size=statistics.fmean(sizes),
            steps=args.steps,
        )
        row["peak_kv_bytes"], row["mean_kv_bytes"] = _kv_stats([x[1]["kv_bytes"] for x in per])
        row["peak_alloc_bytes"] = _kv_stats([x[1]["kv_alloc_bytes"] for x in per])[0]
        rows.append(row)
    _relative(rows, ("task",))
    ctx["answers"]["reasoning"] = {k: v[:2] for k, v in answers.items()}
    return rows


# -- main --------------------------------------------------------------------------------------
def _write_partial(out: Path, rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "partial_rows.json").write_text(json.dumps(rows, indent=1, default=str), encoding="utf-8")


def main(argv: Sequence[str] | None = None, *, model: Any = None, tokenizer: Any = None) -> int:
    """Run ``attnkit eval cache`` with command-line ``argv``; ``model`` / ``tokenizer`` (both)
    replace the embedded model (tests pass a tiny one; ``--model`` is still checked)."""
    if (model is None) != (tokenizer is None):
        raise ValueError("model and tokenizer go together: pass both or neither")
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.cases, args.lengths = 2, [512]
        args.ppl_lengths, args.ppl_length, args.ppl_chunk = [512], None, 128
        args.problems, args.max_new_tokens = 2, 16
    checked = _check_args(args)

    import torch

    from attnkit.evaluate import report as ev_report
    from attnkit.models import load

    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    if model is None:
        print(f"loading {args.model} ...", flush=True)
        model, tok = load(args.model)
    else:
        tok = tokenizer
    pol = _Policies(args, checked["extra"], model, tok)
    ctx: dict[str, Any] = {
        "args": args,
        "model": model,
        "tok": tok,
        "policies": pol,
        "policies_needle": checked["policies"],
        "policies_ppl": checked["ppl_policies"],
        "policies_reasoning": checked["reasoning_policies"],
        "ppl_lengths": checked["ppl_lengths"],
        "settings": checked["settings"],
        "rerotations": checked["rerotations"],
        "progress": not args.no_progress,
        "answers": {},
        # rows so far, written after each perplexity run (a long one can take an hour on a CPU)
        "checkpoint": lambda part: _write_partial(Path(args.out), part),
    }
    import attnkit

    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    run = {"needle": _needle_task, "ppl": _ppl_task, "reasoning": _reasoning_task}
    with attnkit.patch(model, "dense"):
        for task in TASKS:
            if task not in args.tasks:
                continue
            t0 = time.perf_counter()
            print(f"task {task} ...", flush=True)
            rows.extend(run[task](ctx))
            seconds[task] = time.perf_counter() - t0
    setup = {
        "model": args.model,
        "max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
        "argv": list(argv) if argv is not None else None,
        "tasks": args.tasks,
        "settings": checked["settings"],
        "budgets": args.budgets,
        "ppl_budgets": args.ppl_budgets or args.budgets,
        "lengths": args.lengths,
        "cases_per_length": args.cases,
        "ppl_lengths": checked["ppl_lengths"],
        "ppl_chunk": args.ppl_chunk,
        "problems": args.problems,
        "steps": args.steps,
        "max_addend": args.max_addend,
        "policy_params": checked["extra"],
        "cache_params_from": pol.provided_from,
        "threads": torch.get_num_threads(),
        "seconds": {**seconds, "total": time.perf_counter() - t_start},
    }
    path = ev_report.write(Path(args.out), setup, rows, pol.skipped, ctx["answers"])
    print()
    print(ev_report.table_text(rows))
    for what, why in pol.skipped.items():
        print(f"skipped {what}: {why}")
    print(f"\nreport: {path}  (results: {path.parent / 'results.json'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
