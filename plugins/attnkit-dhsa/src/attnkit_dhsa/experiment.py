"""SmolLM2 needle-in-a-haystack and prefill latency: DHSA prefill beside dense, side by side.

``python -m attnkit_dhsa.experiment --lengths 4096,8192 --cases 4`` loads SmolLM2-135M-Instruct
(``attnkit.models.load("smollm2")``), builds needle prompts with the core's generator
(:func:`attnkit.data.needles.make_case`; each prompt, chat template included, fits in the
requested number of tokens, so 8192 stays within the model's ``max_position_embeddings``) and
answers each one twice, in the same process, the order alternating per prompt:

- ``dense``: one forward over the prompt with transformers' SDPA attention (no patch);
- ``dhsa``: the paper's setting (legacy code, NIAH script): the prompt minus its last
  ``instruction_tokens`` (64) tokens is prefilled under ``attnkit.patch(model, "dhsa")`` at the
  paper's budget (1024 keys per query block of 128: 128 sinks, the block, top 768 by chunk
  score, chunks of 16), then the last 64 tokens (the question) are prefilled densely over
  that cache (the legacy code's instruction split: those queries attend every key), and the
  answer is decoded with dense attention (the paper's decode stage is dense SDPA).

Both prefills keep only the last position's logits (``logits_to_keep=1``: the answer needs no
more). The answer is greedy (up to ``--max-new-tokens``, stopping at EOS or a newline) and
scored as the core's main job scores it: correct when :func:`attnkit.mainjob.word_recall` of
the needle answer exceeds 0.5. Prefill latency is the wall time of each prefill (``dhsa``:
both of its forwards), on ``--threads`` threads (torch and numba); the ratio is the median over
prompts of ``dhsa / dense`` on the same prompt, so a noisy spell of a shared machine falls on
both members of a pair alike. Results go to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PAPER_PARAMS", "fit_case", "main", "summarise"]

#: The paper's NIAH budget (``--budget_prefill 1024 --block_size 128``, 128 local + 128 sink).
PAPER_PARAMS: dict[str, Any] = {
    "block_size": 128,
    "chunk_size": 16,
    "top_k": 768,
    "sink_tokens": 128,
    "local_tokens": 0,
    "share_heads": True,
}
#: The legacy code's ``instruction_tokens``: the last queries of the prompt attend densely.
INSTRUCTION_TOKENS = 64


def fit_case(tokenizer: Any, prompt_tokens: int, depth: float, *, seed: int, needle: Any = None) -> Any:
    """A :class:`~attnkit.data.needles.NeedleCase` whose whole prompt (template, question and
    all) has at most ``prompt_tokens`` tokens: :func:`~attnkit.data.needles.make_case` asks
    for a context length, so the context is shortened by what the rest of the prompt takes.

    :raises ValueError: when no context fits (``prompt_tokens`` too small for the needle).
    """
    from attnkit.data.needles import make_case

    if isinstance(prompt_tokens, bool) or not isinstance(prompt_tokens, int) or prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be an int >= 1, got {prompt_tokens!r}")
    length = prompt_tokens
    for _ in range(8):
        case = make_case(tokenizer, length, depth, needle=needle, seed=seed)
        excess = len(case.input_ids) - prompt_tokens
        if excess <= 0:
            return case
        length -= excess
    raise ValueError(f"no needle prompt of at most {prompt_tokens} tokens found (last try: {len(case.input_ids)})")


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows per prompt length from per-prompt records ``{"length", "dense_recall",
    "dhsa_recall", "dense_s", "dhsa_s"}``: accuracy (share of recalls > 0.5), mean recall,
    median prefill seconds and the median over prompts of ``dhsa_s / dense_s``."""
    out = []
    for length in sorted({r["length"] for r in records}):
        mine = [r for r in records if r["length"] == length]
        row: dict[str, Any] = {"length": length, "n": len(mine)}
        for arm in ("dense", "dhsa"):
            recalls = [r[f"{arm}_recall"] for r in mine]
            row[f"{arm}_accuracy"] = sum(x > 0.5 for x in recalls) / len(recalls)
            row[f"{arm}_mean_recall"] = statistics.fmean(recalls)
            row[f"{arm}_prefill_s_median"] = statistics.median(r[f"{arm}_s"] for r in mine)
        row["latency_ratio_median"] = statistics.median(r["dhsa_s"] / r["dense_s"] for r in mine)
        row["accuracy_gap_points"] = 100.0 * (row["dense_accuracy"] - row["dhsa_accuracy"])
        out.append(row)
    return out


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        eos = getattr(source, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    enc = tokenizer.encode("\n", add_special_tokens=False)
    if len(enc) == 1:
        ids.add(enc[0])
    return ids


def _answer(model: Any, ids: Any, arm: str, params: dict[str, Any], instruction: int, max_new: int, stop: set[int]):  # type: ignore[no-untyped-def]
    """Prefill ``ids`` with ``arm`` (timed), then decode greedily with dense attention."""
    import torch
    from transformers import DynamicCache

    import attnkit
    from attnkit.mainjob import greedy

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        t0 = time.perf_counter()
        if arm == "dense":
            logits = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
        else:
            split = ids.shape[1] - instruction if 0 < instruction < ids.shape[1] else ids.shape[1]
            with attnkit.patch(model, "dhsa", attention_params=params):
                logits = model(input_ids=ids[:, :split], cache=cache, use_cache=True, logits_to_keep=1).logits
            if split < ids.shape[1]:
                logits = model(input_ids=ids[:, split:], cache=cache, use_cache=True, logits_to_keep=1).logits
        prefill = time.perf_counter() - t0
        token = int(logits[0, -1].argmax())
        out = [token]
        if token not in stop and max_new > 1:
            out += greedy(model, torch.tensor([[token]]), cache, max_new - 1, stop)["ids"]
    return out, prefill


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnkit_dhsa.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="4096,8192", help="prompt tokens, comma list (default 4096,8192)")
    p.add_argument("--cases", type=int, default=4, help="prompts per length, depths spread over 0-100%% (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch and numba threads (default 1)")
    p.add_argument("--instruction-tokens", type=int, default=INSTRUCTION_TOKENS)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="override a dhsa parameter")
    p.add_argument("--out", default="results/smollm2_needle.json")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(list(argv) if argv is not None else None)
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--lengths: expected a comma list of integers, got {args.lengths!r}") from None
    if not lengths or min(lengths) < 1 or args.cases < 1 or args.threads < 1 or args.instruction_tokens < 0:
        raise SystemExit("--lengths, --cases and --threads must be positive, --instruction-tokens >= 0")
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))

    import numba
    import torch

    from attnkit.cliargs import parse_param
    from attnkit.data.needles import NEEDLES
    from attnkit.mainjob import word_recall
    from attnkit.models import load
    from attnkit_dhsa.params import DhsaParams

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    params = {**PAPER_PARAMS, **dict(parse_param(x) for x in args.param)}
    DhsaParams(**params)  # bad parameters fail before the model loads

    t_start = time.perf_counter()
    model, tok = load("smollm2")
    model.eval()
    stop = _stop_ids(model, tok)
    cases = []
    for i in range(args.cases):  # lengths fastest, so a cut run has every length
        for length in lengths:
            depth = 50.0 if args.cases == 1 else 100.0 * i / (args.cases - 1)
            seed = args.seed * 7919 + i
            cases.append(
                (length, fit_case(tok, length, depth, seed=seed, needle=NEEDLES[(args.seed + i) % len(NEEDLES)]))
            )
    # warm-up: numba compilation and first-call allocations of both arms
    warm = cases[0][1].tensor()[:, :512]
    for arm in ("dense", "dhsa"):
        _answer(model, warm, arm, params, args.instruction_tokens, 2, stop)

    out = Path(args.out)

    def write(done: bool) -> dict[str, Any]:
        result = {
            "setup": {
                "model": "smollm2 (SmolLM2-135M-Instruct, float32, CPU)",
                "dhsa_params": params,
                "instruction_tokens": args.instruction_tokens,
                "decode": "dense (greedy)",
                "threads": args.threads,
                "cases_per_length": args.cases,
                "max_new_tokens": args.max_new_tokens,
                "seed": args.seed,
                "seconds": time.perf_counter() - t_start,
                "complete": done,
                "command": "python -m attnkit_dhsa.experiment " + " ".join(argv if argv is not None else sys.argv[1:]),
            },
            "rows": summarise(records),
            "records": records,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")  # after every prompt: a cut run keeps its part
        return result

    records: list[dict[str, Any]] = []
    for i, (length, case) in enumerate(cases):
        ids = case.tensor()
        rec: dict[str, Any] = {
            "length": length,
            "tokens": len(case.input_ids),
            "depth": case.depth,
            "answer": case.answer,
        }
        for arm in ("dense", "dhsa") if i % 2 == 0 else ("dhsa", "dense"):
            answer, secs = _answer(model, ids, arm, params, args.instruction_tokens, args.max_new_tokens, stop)
            text = tok.decode(answer, skip_special_tokens=True).strip()
            rec[f"{arm}_text"] = text
            rec[f"{arm}_recall"] = word_recall(case.answer, text)
            rec[f"{arm}_s"] = secs
        records.append(rec)
        write(False)
        if args.progress:
            print(
                f"{rec['tokens']:>6} tokens depth {case.depth:5.1f}: dense {rec['dense_s']:.1f} s "
                f"recall {rec['dense_recall']:.2f} | dhsa {rec['dhsa_s']:.1f} s recall {rec['dhsa_recall']:.2f}",
                file=sys.stderr,
                flush=True,
            )
    result = write(True)
    for row in result["rows"]:
        print(
            f"{row['length']:>6}  n={row['n']}  accuracy dense {row['dense_accuracy']:.2f} dhsa {row['dhsa_accuracy']:.2f}"
            f"  prefill dense {row['dense_prefill_s_median']:.1f} s dhsa {row['dhsa_prefill_s_median']:.1f} s"
            f"  ratio {row['latency_ratio_median']:.2f}"
        )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
