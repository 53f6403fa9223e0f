"""``attnkit bench cache``: decode speed and KV bytes of every installed cache policy on the
embedded model, side by side in one process.

For each policy and budget: prefill the prompt into a fresh :class:`AttnkitCache`, then
decode ``--new-tokens`` tokens greedily one forward at a time; decode tokens/s is measured
over the decode steps only, prefill separately, both side by side with transformers'
``DynamicCache`` in the same process; the bytes of K/V the cache holds at the end are compared
with what the budget allows (``budget tokens x layers x 2 x KV heads x head dim x element
size``). The caches advance in lockstep, one forward of each in turn (prefills, then decode
step 1 of each, ...), so machine noise hits all of them alike; ``--repeat`` rounds, medians
reported.

Policies that need parameters only an analysis can give (the retrieval-head cache needs the
detected heads) get them from ``--cache-params``: a JSON file ``{policy: {name: value}}``. By
default (``auto``) it lives in the attnkit cache folder and is made on first use by running
the installed analyses' main-job entries (those ``attnkit run`` runs) on a few needle cases;
later runs load it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["analysis_cache_params", "kv_nbytes", "main", "measure", "measure_lockstep", "prompt_ids"]


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


def measure_lockstep(
    model: Any, ids: Any, caches: dict[Any, Any], new_tokens: int, *, rotate: int = 0, progress: Any = None
) -> dict[Any, dict[str, Any]]:
    """:func:`measure` for several caches at once, step by step: every cache's prefill, then
    decode step ``i`` of every cache, and so on, the order rotating each step. Each cache's
    times are sums of its own forwards, but a noisy spell of a shared machine (seconds long)
    falls on all of them alike instead of on whichever ran then.

    :param caches: ``{key: cache}``; each is filled from empty.
    :returns: ``{key: {"prefill_s", "decode_s", "tokens"}}``.
    """
    import torch

    keys = list(caches)
    out = {k: {"prefill_s": 0.0, "decode_s": 0.0, "tokens": []} for k in keys}
    token: dict[Any, Any] = {}

    def order(step: int) -> list[Any]:
        shift = (rotate + step) % len(keys)
        return keys[shift:] + keys[:shift]

    with torch.no_grad():
        for k in order(0):
            t0 = time.perf_counter()
            logits = model(input_ids=ids, cache=caches[k], use_cache=True).logits
            out[k]["prefill_s"] = time.perf_counter() - t0
            token[k] = logits[:, -1:].argmax(-1)
            out[k]["tokens"].append(int(token[k]))
        if progress is not None:
            progress.update(1)
        for step in range(1, new_tokens + 1):
            for k in order(step):
                t0 = time.perf_counter()
                logits = model(input_ids=token[k], cache=caches[k], use_cache=True).logits
                token[k] = logits[:, -1:].argmax(-1)
                out[k]["decode_s"] += time.perf_counter() - t0
                out[k]["tokens"].append(int(token[k]))
            if progress is not None:
                progress.update(1)
    return out


def _default_params_path(model: str) -> Path:
    from attnkit.models.pretrained import cache_dir

    return cache_dir() / "bench" / f"{model}-cache-params.json"


def analysis_cache_params(
    model: Any, tokenizer: Any, model_name: str, out_dir: Path, *, cases: int = 4, length: int = 1024
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Run every installed analysis that has a main-job entry on ``cases`` needle cases of about
    ``length`` tokens (other needles than the bench prompt's) and collect the cache-policy
    parameters they provide (``AnalysisOutcome.cache_params``, the retrieval heads ...).

    :returns: ``({policy: params}, notes)``; parameters given as a function of the case are
        left out (a file cannot hold them), and so is an analysis whose code cannot be imported,
        each with a note.
    """
    import attnkit
    from attnkit.data.needles import make_case
    from attnkit.mainjob import JobContext
    from attnkit.registry import resolve

    specs = [s for s in attnkit.list_specs("analysis") if getattr(s, "main_job", None)]
    job_cases = [
        make_case(tokenizer, length=length, depth=100.0 * i / max(cases - 1, 1), seed=100 + i) for i in range(cases)
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    job = JobContext(
        model=model,
        tokenizer=tokenizer,
        model_name=model_name,
        cases=job_cases,
        attention="dense",
        attention_params={},
        out_dir=out_dir,
        progress=False,
    )
    params: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for spec in specs:
        try:
            outcome = resolve(spec.main_job)(job)
        except ImportError as exc:
            notes.append(f"analysis {spec.name} skipped: {type(exc).__name__}: {exc}")
            continue
        for policy, extra in outcome.cache_params.items():
            if callable(extra):
                notes.append(f"analysis {spec.name}: parameters of {policy} depend on the prompt, not saved")
                continue
            params.setdefault(policy, {}).update(extra)
        if outcome.summary.get("headline"):
            notes.append(f"analysis {spec.name}: {outcome.summary['headline']}")
    return params, notes


def load_cache_params(arg: str, model: Any, tokenizer: Any, model_name: str) -> tuple[dict[str, Any], str]:
    if arg == "none":
        return {}, "none"
    path = _default_params_path(model_name) if arg == "auto" else Path(arg)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8")), f"loaded from {path}"
    print(f"making {path}: running the installed analyses' main jobs (once; later runs load it) ...", flush=True)
    t0 = time.perf_counter()
    params, notes = analysis_cache_params(model, tokenizer, model_name, path.parent / f"{model_name}-analyses")
    for note in notes:
        print(f"  {note}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(params, indent=1), encoding="utf-8")
    return params, f"made by the analyses in {time.perf_counter() - t0:.0f} s, saved to {path}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="attnkit bench cache", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--length", type=int, default=2048, help="prompt tokens (default 2048)")
    p.add_argument("--new-tokens", type=int, default=64, help="decoded tokens (default 64)")
    p.add_argument("--budgets", default="0.25,0.5", help="comma-separated budgets (ratios of the prompt)")
    p.add_argument("--policies", default=None, help="comma-separated cache specs (default: every installed one)")
    p.add_argument("--policy-param", action="append", default=[], metavar="POLICY:NAME=VALUE")
    p.add_argument(
        "--cache-params",
        default="auto",
        metavar="PATH|auto|none",
        help="JSON {policy: {name: value}} of parameters analyses provide (retrieval heads); auto (default): "
        "the attnkit cache folder's file, made by the installed analyses on first use",
    )
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
    provided, provided_from = load_cache_params(args.cache_params, model, tok, args.model)
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
        params.update(provided.get(name, {}))  # what analyses provide (--cache-params)
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
    bar = tqdm(total=args.repeat * (1 + args.new_tokens), desc="bench cache", unit="step")
    with attnkit.patch(model, "dense"):
        for rnd in range(args.repeat):
            caches = {cfg: make_cache(*cfg) for cfg in configs}
            for cfg, r in measure_lockstep(model, ids, caches, args.new_tokens, rotate=rnd, progress=bar).items():
                row = rows.setdefault(cfg, {"decode": [], "prefill": []})
                row["decode"].append(r["decode_s"])
                row["prefill"].append(r["prefill_s"])
                row["tokens"] = r["tokens"]
                row["nbytes"] = kv_nbytes(caches[cfg])
    bar.close()

    base = statistics.median(rows[("dynamic", None)]["decode"])
    base_prefill = statistics.median(rows[("dynamic", None)]["prefill"])
    results = []
    for (name, budget), row in rows.items():
        decode = statistics.median(row["decode"])
        prefill = statistics.median(row["prefill"])
        allowed = None if budget is None else max(1, int(budget * t)) * per_token
        results.append(
            {
                "policy": name,
                "budget": budget,
                "decode_tokens_per_s": args.new_tokens / decode,
                "decode_vs_full": base / decode,
                "prefill_s": prefill,
                "prefill_vs_full": base_prefill / prefill,
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
    print(f"cache parameters from analyses: {provided_from}")
    print(
        f"{'policy':<24}{'budget':>8}{'decode tok/s':>14}{'vs Dyn':>8}{'prefill s':>11}{'vs Dyn':>8}"
        f"{'KV MiB':>9}{'KV/budget':>11}{'same tokens':>13}"
    )
    for r in results:
        shown = "-" if r["budget"] is None else f"{r['budget']:.0%}"
        ratio = "-" if r["kv_vs_budget"] is None else f"{r['kv_vs_budget']:.3f}"
        label = "DynamicCache" if r["policy"] == "dynamic" else r["policy"]
        print(
            f"{label:<24}{shown:>8}{r['decode_tokens_per_s']:>14.2f}{r['decode_vs_full']:>7.2f}x"
            f"{r['prefill_s']:>11.2f}{r['prefill_vs_full']:>7.2f}x"
            f"{r['kv_bytes'] / 2**20:>9.1f}{ratio:>11}{'yes' if r['same_tokens_as_full'] else 'no':>13}"
        )
    for k, why in skipped.items():
        print(f"skipped {k}: {why}")
    if args.json:
        meta = {"model": args.model, "prompt_tokens": t, "prompt": source, "new_tokens": args.new_tokens}
        meta["cache_params"] = {"from": provided_from, "params": provided}
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
