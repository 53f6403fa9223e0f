"""``attnkit bench lazyeviction``: quality and KV size of LazyEviction beside other policies.

On the embedded SmolLM2-135M-Instruct: a prompt of ``--length`` tokens of real text (the Python
documentation shipped with the standard library, ``pydoc_data.topics``), then the next
``--new-tokens`` tokens of the same text fed one at a time through the cache (teacher forcing:
every policy sees the same tokens). For each policy it reports the negative log-likelihood of
those tokens (and the perplexity) beside a full ``DynamicCache``, how often its top-1 token
equals the full cache's, and the cache size at every forward through
:class:`~attnkit_lazyeviction.usage.KVUsage`: peak and mean slots per sequence and KV head, and
peak and mean bytes of real keys and of allocated buffers. ``--json`` writes everything.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "prompt_tokens", "run_policy"]


def prompt_tokens(tokenizer: Any, length: int, new_tokens: int, topic: str = "compound") -> tuple[Any, str]:
    """``(1, length + new_tokens)`` token ids of a ``pydoc_data.topics`` entry and its name."""
    import pydoc_data.topics as topics

    text = topics.topics[topic]
    ids = tokenizer(text, return_tensors="pt").input_ids
    need = length + new_tokens
    if ids.shape[1] < need:
        raise ValueError(f"topic {topic!r} has {ids.shape[1]} tokens, fewer than length + new_tokens = {need}")
    return ids[:, :need], f"pydoc_data.topics[{topic!r}] (Python {_py()} docs), first {need} tokens"


def _py() -> str:
    import sys

    return ".".join(map(str, sys.version_info[:2]))


def run_policy(model: Any, ids: Any, prompt: int, cache: Any, usage: Any = None) -> dict[str, Any]:
    """Prefill ``ids[:, :prompt]`` into ``cache`` then feed the rest one token at a time.

    :returns: ``nll`` (mean over the fed tokens' predictions), ``top1`` (argmax ids), seconds.
    """
    import torch

    logp: list[float] = []
    top1: list[int] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        logits = model(input_ids=ids[:, :prompt], cache=cache, use_cache=True).logits[:, -1]
        for i in range(prompt, ids.shape[1]):
            lp = torch.log_softmax(logits.double(), dim=-1)
            logp.append(float(lp[0, ids[0, i]]))
            top1.append(int(lp[0].argmax()))
            if i + 1 < ids.shape[1]:
                logits = model(input_ids=ids[:, i : i + 1], cache=cache, use_cache=True).logits[:, -1]
    seconds = time.perf_counter() - t0
    nll = -sum(logp) / len(logp)
    return {"nll": nll, "ppl": math.exp(nll), "top1": top1, "seconds": seconds}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="attnkit bench lazyeviction", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--length", type=int, default=1024, help="prompt tokens (default 1024)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens fed after the prompt (default 256)")
    p.add_argument("--budget", type=float, default=0.25, help="ratio of the prompt (default 0.25)")
    p.add_argument("--windows", default="101,32", help="LazyEviction W values (default 101,32; 101 is the paper's)")
    p.add_argument("--alpha", type=float, default=1e-4)
    p.add_argument("--policies", default="h2o,sink_window,window", help="other cache specs to compare")
    p.add_argument("--topic", default="compound", help="pydoc_data.topics entry (default compound)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--no-keep", action="store_true", help="leave out the prefill='keep' (paper) row")
    p.add_argument("--quick", action="store_true", help="256-token prompt, 32 new tokens")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.length, args.new_tokens = 256, 32

    import torch
    from transformers import DynamicCache

    import attnkit
    from attnkit.cache import AttnkitCache, build_policy
    from attnkit.cache.bench import kv_nbytes
    from attnkit.models import load
    from attnkit_lazyeviction.usage import KVUsage

    torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    ids, source = prompt_tokens(tok, args.length, args.new_tokens, args.topic)
    installed = {s.name for s in attnkit.list_specs("cache")}
    configs: list[tuple[str, str, dict[str, Any]]] = []
    windows = [int(x) for x in args.windows.split(",") if x]
    for w in windows:
        configs.append((f"lazyeviction W={w}", "lazyeviction", {"window": w, "alpha": args.alpha}))
    if windows and not args.no_keep:  # the paper's prefill: the prompt is kept until step W
        w = windows[0]
        configs.append(
            (f"lazyeviction W={w} keep", "lazyeviction", {"window": w, "alpha": args.alpha, "prefill": "keep"})
        )
    for name in (n for n in args.policies.split(",") if n):
        if name in installed:
            configs.append((name, name, {}))
        else:
            print(f"skipped {name}: not installed")
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    slot = 2 * head_dim * 4  # float32 key + value, one token and KV head
    per_token = c.num_hidden_layers * c.num_key_value_heads * slot
    budget_tokens = max(1, math.floor(args.budget * args.length))

    results: list[dict[str, Any]] = []
    with attnkit.patch(model, "dense"):
        full_cache = DynamicCache(config=model.config)
        full = run_policy(model, ids, args.length, full_cache)
        full_bytes = kv_nbytes(full_cache)
        print(f"full (DynamicCache): ppl {full['ppl']:.3f} in {full['seconds']:.0f} s", flush=True)
        for label, name, extra in configs:
            policy = build_policy(name, budget=args.budget, **extra)
            cache = AttnkitCache(policy, config=model.config)
            with KVUsage(cache) as usage:
                r = run_policy(model, ids, args.length, cache)
            s = usage.summary()
            agree = sum(a == b for a, b in zip(r["top1"], full["top1"])) / len(full["top1"])
            row = {
                "policy": label,
                "spec": name,
                "params": {"budget": args.budget, **extra},
                "nll": r["nll"],
                "ppl": r["ppl"],
                "delta_nll_vs_full": r["nll"] - full["nll"],
                "top1_agreement_with_full": agree,
                "seconds": r["seconds"],
                **s,
                "peak_over_budget": s["peak_attended_slots"] / budget_tokens,
                "mean_over_budget": s["mean_held_slots"] / budget_tokens,
            }
            results.append(row)
            print(
                f"{label}: ppl {r['ppl']:.3f} (dNLL {row['delta_nll_vs_full']:+.4f}), top-1 = full {agree:.1%}, "
                f"peak {s['peak_attended_slots']} / mean {s['mean_held_slots']:.1f} slots per KV head "
                f"(budget {budget_tokens}), {r['seconds']:.0f} s",
                flush=True,
            )

    print(
        f"\nattnkit bench lazyeviction: {args.model}, {source}; prompt {args.length}, {args.new_tokens} tokens fed, "
        f"budget {args.budget:g} = {budget_tokens} tokens per KV head, float32, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"{'policy':<22}{'ppl':>8}{'dNLL':>9}{'top1=full':>11}{'peak slots':>12}{'mean slots':>12}"
        f"{'peak/budget':>13}{'mean/budget':>13}{'mean KV MiB':>13}"
    )
    print(
        f"{'full':<22}{full['ppl']:>8.3f}{0:>+9.4f}{1:>11.1%}{'-':>12}{'-':>12}{'-':>13}{'-':>13}{full_bytes / 2**20:>13.2f}"
    )
    for r in results:
        print(
            f"{r['policy']:<22}{r['ppl']:>8.3f}{r['delta_nll_vs_full']:>+9.4f}{r['top1_agreement_with_full']:>11.1%}"
            f"{r['peak_attended_slots']:>12}{r['mean_held_slots']:>12.1f}{r['peak_over_budget']:>13.3f}"
            f"{r['mean_over_budget']:>13.3f}{r['mean_held_bytes'] / 2**20:>13.2f}"
        )
    if args.json:
        setup = {
            "model": args.model,
            "source": source,
            "prompt_tokens": args.length,
            "new_tokens": args.new_tokens,
            "budget": args.budget,
            "budget_tokens": budget_tokens,
            "bytes_per_token_all_layers": per_token,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        }
        full_row = {"nll": full["nll"], "ppl": full["ppl"], "kv_bytes_end": full_bytes, "seconds": full["seconds"]}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"setup": setup, "full": full_row, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
