"""kvpress's presses on attnkit's needle cases, as rows of ``attnkit eval cache``'s table.

Runs in a separate environment where NVIDIA's ``kvpress`` is installed (it pins
``transformers<5.3``), beside attnkit's core (``pip install -e packages/attnkit``, no plugins
needed): it loads the same SmolLM2-135M-Instruct weights that ``attnkit.models.load("smollm2")``
converted into the attnkit cache folder (plain transformers reads that folder), builds the
same needle cases with the same split into context and question
(:func:`attnkit.evaluate.prompts.make_needle_cases`), and answers each one in kvpress's
question-agnostic pipeline (``KVPressTextGenerationPipeline``): the context is prefilled
under the press (compressed once), then the question is a second forward and the answer is
decoded greedily by the pipeline's own ``generate_answer``, over a cache that keeps every
token after the context. The budget is ``1 - compression_ratio``.

Rows have the keys of :data:`attnkit.evaluate.cache.ROW_KEYS` (``source="kvpress"``,
``task="needle"``, ``setting="question-agnostic"``), so the lead can merge
``results.json``'s rows with them: ``attnkit.evaluate.report.table_text(rows)``.

    python tools/kvpress_rows.py --lengths 2048 --cases 4 --budgets 0.25,0.5 --out kvpress_rows.json

Answers are cut at their first newline (attnkit's runs stop there) before scoring; accuracy
and recall are the same as attnkit's (word recall of the needle > 0.5). KV bytes are sampled
after every forward (a forward hook on the model); decode tokens/s counts the pipeline's
one-token forwards, and ``decode_vs_full`` compares with the same pipeline without a press
on the same cases (run in turn, the order rotating per case).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PRESSES = (
    "StreamingLLMPress",
    "SnapKVPress",
    "TOVAPress",
    "KnormPress",
    "ExpectedAttentionPress",
    "ObservedAttentionPress",
)
#: Presses that read the attention weights (need eager attention).
EAGER = {"ObservedAttentionPress"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kvpress_rows.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="2048", help="needle context lengths (default 2048)")
    p.add_argument("--cases", type=int, default=4, help="cases per length (default 4)")
    p.add_argument("--budgets", default="0.25,0.5", help="kept share of the context (default 0.25,0.5)")
    p.add_argument("--presses", default=",".join(PRESSES), help=f"comma list (default {','.join(PRESSES)})")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model-dir", default=None, help="converted SmolLM2 folder (default: found in the attnkit cache)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="kvpress_rows.json")
    return p


def _model_dir(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
    else:
        from attnkit.models.pretrained import cache_dir

        found = sorted(p for p in cache_dir().glob("smollm2-*") if (p / "model.safetensors").is_file())
        if not found:
            raise SystemExit(
                f"no converted smollm2 folder under {cache_dir()}: run `attnkit.models.load('smollm2')` once in "
                "the attnkit environment (it converts the GGUF there), or pass --model-dir"
            )
        path = found[-1]
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model-dir: {path} holds no config.json")
    return path


def _kv_bytes(cache: Any) -> int:
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total


class _Meter:
    """Forward hooks on the model: the cache's bytes after every forward, and the seconds of
    every one-token forward."""

    def __init__(self, model: Any) -> None:
        self.kv: list[int] = []
        self.decode_s = 0.0
        self.decode_steps = 0
        self._t0 = 0.0
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True),
        ]

    def _pre(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self._t0 = time.perf_counter()

    def _post(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        seconds = time.perf_counter() - self._t0
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[-1] == 1:
            self.decode_s += seconds
            self.decode_steps += 1
        cache = kwargs.get("past_key_values")
        if cache is not None:
            self.kv.append(_kv_bytes(cache))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _answer(pipe: Any, model: Any, case: Any, press: Any, max_new_tokens: int) -> dict[str, Any]:
    """kvpress's ``_forward`` for one question, with our token ids: the context under the
    press, then ``generate_answer`` (the question forward and greedy decoding)."""
    import contextlib

    import torch
    from transformers import DynamicCache

    context = torch.tensor([case.context_ids])
    question = torch.tensor([case.question_ids])
    cache = DynamicCache()
    meter = _Meter(model)
    try:
        with torch.no_grad():
            with press(model) if press is not None else contextlib.nullcontext():
                model(input_ids=context, past_key_values=cache)
            text = pipe.generate_answer(
                question_ids=question, cache=cache, context_length=context.shape[1], max_new_tokens=max_new_tokens
            )
    finally:
        meter.close()
    return {
        "text": text.split("\n")[0].strip(),
        "kv": meter.kv,
        "decode_s": meter.decode_s,
        "steps": meter.decode_steps,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x]
        budgets = [float(x) for x in args.budgets.split(",") if x]
    except ValueError as exc:
        raise SystemExit(f"--lengths / --budgets: {exc}") from None
    if not lengths or min(lengths) < 64:
        raise SystemExit(f"--lengths: needle contexts need >= 64 tokens, got {args.lengths!r}")
    if not budgets or not all(0 < b <= 1 for b in budgets):
        raise SystemExit(f"--budgets: ratios in (0, 1] of the context, got {args.budgets!r}")
    if args.cases < 1:
        raise SystemExit(f"--cases must be >= 1, got {args.cases}")
    names = [n for n in args.presses.split(",") if n]
    bad = [n for n in names if n not in PRESSES]
    if bad:
        raise SystemExit(f"--presses: {bad} not among {', '.join(PRESSES)}")
    try:
        import kvpress
    except ImportError as exc:
        raise SystemExit(f"kvpress is not installed in this environment ({exc}); see this script's docstring") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from attnkit.evaluate.prompts import make_needle_cases
    from attnkit.mainjob import word_recall

    torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()
    folder = _model_dir(args.model_dir)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    models = {}
    for impl in ("sdpa", "eager") if set(names) & EAGER else ("sdpa",):
        m = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation=impl, local_files_only=True
        ).eval()
        models[impl] = (m, pipeline("kv-press-text-generation", model=m, tokenizer=tok, device="cpu"))
    cases = make_needle_cases(tok, args.cases, lengths, seed=args.seed)
    configs: list[tuple[str, float | None]] = [("full", None)] + [(n, b) for n in names for b in budgets]
    runs: dict[tuple[str, float | None], list[tuple[Any, dict[str, Any]]]] = {c: [] for c in configs}
    t_start = time.perf_counter()
    for i, case in enumerate(cases):
        shift = i % len(configs)
        for name, b in configs[shift:] + configs[:shift]:
            press = None if name == "full" else getattr(kvpress, name)(compression_ratio=1.0 - b)
            model, pipe = models["eager" if name in EAGER else "sdpa"]
            r = _answer(pipe, model, case, press, args.max_new_tokens)
            runs[(name, b)].append((case, r))
            print(f"case {i} {name}@{b}: {r['text'][:60]!r} (needle: {case.answer!r})", flush=True)
    rows = []
    for (name, b), per in runs.items():
        for length in lengths:
            at = [(c, r) for c, r in per if c.length == length]
            recalls = [word_recall(c.answer, r["text"]) for c, r in at]
            steps = sum(r["steps"] for _, r in at)
            seconds = sum(r["decode_s"] for _, r in at)
            kv = [r["kv"] for _, r in at if r["kv"]]
            rows.append(
                {
                    "source": "kvpress",
                    "task": "needle",
                    "setting": "question-agnostic",
                    "length": length,
                    "policy": name,
                    "budget": b,
                    "rerotate": False,
                    "n": len(at),
                    "accuracy": sum(rc > 0.5 for rc in recalls) / len(at),
                    "mean_recall": statistics.fmean(recalls),
                    "ppl": None,
                    "peak_kv_bytes": float(max(max(s) for s in kv)) if kv else None,
                    "mean_kv_bytes": statistics.fmean(statistics.fmean(s) for s in kv) if kv else None,
                    "decode_tokens_per_s": steps / seconds if steps and seconds > 0 else None,
                    "decode_vs_full": None,
                    "recalls": recalls,
                    "attention": "eager" if name in EAGER else "sdpa",
                }
            )
    full = {r["length"]: r for r in rows if r["policy"] == "full"}
    for r in rows:
        ref = full[r["length"]]["decode_tokens_per_s"]
        r["decode_vs_full"] = r["decode_tokens_per_s"] / ref if r["decode_tokens_per_s"] and ref else None
    setup = {
        "kvpress": getattr(kvpress, "__version__", None) or _version("kvpress"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "model_dir": str(folder),
        "lengths": lengths,
        "cases_per_length": args.cases,
        "budgets": budgets,
        "threads": torch.get_num_threads(),
        "seconds": time.perf_counter() - t_start,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    Path(args.out).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1), encoding="utf-8")
    try:
        from attnkit.evaluate.report import table_text

        print(table_text(rows))
    except ImportError:
        pass
    print(f"rows: {args.out}")
    return 0


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
