"""``attnkit bench cache``: decode speed and KV bytes of every installed cache policy on the
embedded model, side by side in one process.

For each policy and budget: prefill the prompt into a fresh :class:`AttnkitCache`, then
decode ``--new-tokens`` tokens greedily one forward at a time; decode tokens/s is measured
over the decode steps only, and the bytes of K/V the cache holds at the end are compared with
what the budget allows (``budget tokens x layers x 2 x KV heads x head dim x element size``).
Rounds interleave the policies so machine noise hits all of them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["kv_nbytes", "main", "measure", "prompt_ids"]


def _parse_policy_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        if ":" not in item or "=" not in item:
            raise SystemExit(f"--policy-param must look like POLICY:NAME=VALUE, got {item!r}")
        policy, rest = item.split(":", 1)
        key, value = rest.split("=", 1)
        try:
            parsed: Any = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(policy, {})[key] = parsed
    return out


def prompt_ids(tokenizer: Any, length: int, seed: int = 0) -> tuple[Any, str]:
    """A needle-in-a-haystack prompt of about ``length`` tokens (:mod:`attnkit.data.needles`,
    needle at 50% depth) and a line saying what it is.

    :returns: ``(ids, source)``: ``ids`` a ``(1, T)`` int64 tensor, ``source`` for the report.
    """
    from attnkit.data.needles import make_case

    case = make_case(tokenizer, length=length, depth=50.0, seed=seed)
    return case.tensor(), f"needle-in-a-haystack case ({len(case.input_ids)} tokens, depth 50%)"


def measure(model: Any, ids: Any, cache: Any, new_tokens: int) -> dict[str, float]:
    """Prefill ``ids (1, T)`` into ``cache`` then decode ``new_tokens`` greedily; seconds of each."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=ids, cache=cache, use_cache=True)
        prefill = time.perf_counter() - t0
        token = out.logits[:, -1:].argmax(-1)
        generated = [int(token)]
        t0 = time.perf_counter()
        for _ in range(new_tokens):
            out = model(input_ids=token, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
            generated.append(int(token))
        decode = time.perf_counter() - t0
    return {"prefill_s": prefill, "decode_s": decode, "tokens": generated}  # type: ignore[dict-item]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="attnkit bench cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--length", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens (default 64)")
    p.add_argument("--budgets", default="0.25,0.5", help="comma-separated budgets (ratios of the prompt)")
    p.add_argument("--policies", default=None, help="comma-separated cache specs (default: every installed one)")
    p.add_argument("--policy-param", action="append", default=[], metavar="POLICY:NAME=VALUE")
    p.add_argument("--repeat", type=int, default=1, help="rounds over all policies (median reported)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    p.add_argument("--quick", action="store_true", help="256-token prompt, 16 new tokens (a smoke run)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.length, args.new_tokens = 256, 16
    budgets = [float(b) for b in args.budgets.split(",") if b]
    extra = _parse_policy_params(args.policy_param)

    import torch
    from tqdm.auto import tqdm

    import attnkit
    from attnkit.cache import AttnkitCache, build_policy
    from attnkit.models import load

    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.policies.split(",") if args.policies else [s.name for s in attnkit.list_specs("cache")]
    model, tok = load(args.model)
    ids, source = prompt_ids(tok, args.length)
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_token = c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim * 4  # float32 K and V
    t = ids.shape[1]

    configs: list[tuple[str, float | None]] = [("dynamic", None)]
    for name in names:
        if name == "full":
            configs.append(("full", None))
        else:
            configs.extend((name, b) for b in budgets)

    def make_cache(name: str, budget: float | None) -> Any:
        if name == "dynamic":
            from transformers import DynamicCache

            return DynamicCache(config=model.config)
        params: dict[str, Any] = {} if budget is None else {"budget": budget}
        params.update(extra.get(name, {}))  # --policy-param wins, budget included
        return AttnkitCache(build_policy(name, **params), config=model.config)

    rows: dict[tuple[str, float | None], dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for cfg in list(configs):
        try:
            make_cache(*cfg)
        except (ValueError, TypeError) as exc:
            skipped[f"{cfg[0]}@{cfg[1]}"] = str(exc)
            configs.remove(cfg)
    bar = tqdm(total=len(configs) * args.repeat, desc="bench cache", unit="run")
    with attnkit.patch(model, "dense"):
        for _ in range(args.repeat):
            for name, budget in configs:
                cache = make_cache(name, budget)
                r = measure(model, ids, cache, args.new_tokens)
                row = rows.setdefault((name, budget), {"decode": [], "prefill": []})
                row["decode"].append(r["decode_s"])
                row["prefill"].append(r["prefill_s"])
                row["tokens"] = r["tokens"]
                row["nbytes"] = kv_nbytes(cache)
                bar.update(1)
    bar.close()

    base = statistics.median(rows[("dynamic", None)]["decode"])
    results = []
    for (name, budget), row in rows.items():
        decode = statistics.median(row["decode"])
        allowed = None if budget is None else max(1, int(budget * t)) * per_token
        results.append(
            {
                "policy": name,
                "budget": budget,
                "decode_tokens_per_s": args.new_tokens / decode,
                "decode_vs_full": base / decode,
                "prefill_s": statistics.median(row["prefill"]),
                "kv_bytes": row["nbytes"],
                "budget_bytes": allowed,
                "kv_vs_budget": None if allowed is None else row["nbytes"] / allowed,
                "same_tokens_as_full": row["tokens"] == rows[("dynamic", None)]["tokens"],
            }
        )
    print(
        f"\nattnkit bench cache: {args.model}, prompt {t} tokens ({source}), {args.new_tokens} new tokens, greedy, "
        f"float32, {torch.get_num_threads()} threads, {args.repeat} round(s), medians"
    )
    print(
        f"{'policy':<24}{'budget':>8}{'decode tok/s':>14}{'vs full':>9}{'KV MiB':>9}{'KV/budget':>11}{'same tokens':>13}"
    )
    for r in results:
        shown = "-" if r["budget"] is None else f"{r['budget']:.0%}"
        ratio = "-" if r["kv_vs_budget"] is None else f"{r['kv_vs_budget']:.3f}"
        print(
            f"{r['policy']:<24}{shown:>8}{r['decode_tokens_per_s']:>14.2f}{r['decode_vs_full']:>8.2f}x"
            f"{r['kv_bytes'] / 2**20:>9.1f}{ratio:>11}{'yes' if r['same_tokens_as_full'] else 'no':>13}"
        )
    for k, why in skipped.items():
        print(f"skipped {k}: {why}")
    if args.json:
        meta = {"model": args.model, "prompt_tokens": t, "prompt": source, "new_tokens": args.new_tokens}
        meta["threads"] = torch.get_num_threads()
        with open(args.json, "w") as fh:
            json.dump({"setup": meta, "results": results, "skipped": skipped}, fh, indent=1)
    return 0


def kv_nbytes(cache: Any) -> int:
    """Bytes of keys and values ``cache`` holds now.

    Works for an :class:`~attnkit.cache.AttnkitCache` (its ``nbytes()``, padding slots
    included) and for any transformers cache with ``layers`` holding ``keys`` / ``values``
    tensors (``DynamicCache``), so the full cache and a policy's are measured alike.

    :param cache: the cache after prefill / decoding.
    :returns: the byte count, 0 for a cache that holds nothing yet.
    """
    if hasattr(cache, "nbytes") and callable(cache.nbytes):
        return int(cache.nbytes())
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None and hasattr(t, "numel"):
                total += t.numel() * t.element_size()
    return total
