"""``attnkit bench capture``: what capturing attention patterns costs a prefill.

On the embedded model at a given prompt length, side by side in one process and interleaved
(the order rotating per round, median of the rounds): transformers' own SDPA (no attnkit),
``attnkit.patch`` with no analysis, with one layer's ``hook_pattern`` captured (only that
layer materialises probabilities, the others keep the fused kernel), with every layer's, and
transformers' eager attention with ``output_attentions=True`` (what a user without attnkit
does to see patterns). TransformerLens (a forward, ``run_with_cache`` of one layer's pattern and of every layer's) is
added when ``transformer_lens`` is importable and builds the model from the embedded weights
offline; otherwise the output says why.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _transformer_lens_rows(model_name: str, layer: int) -> tuple[dict[str, Callable[[Any], Any]], str]:
    """TransformerLens rows on a second copy of the model (TransformerLens 4 switches the model
    it wraps to eager attention, which would change the other rows): a forward with no cache,
    ``run_with_cache`` of one layer's pattern and of every layer's. Offline, the bridge is
    booted from the loaded model and a local copy of its config; TransformerLens < 4 is built
    with ``HookedTransformer.from_pretrained(..., hf_model=)``."""
    try:
        import transformer_lens  # type: ignore[import-not-found]
    except ImportError as exc:
        return {}, f"transformer_lens is not installed here ({exc})"
    import tempfile

    from attnkit.models import load

    model, tok = load(model_name)
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        version = dist_version("transformer-lens")
    except PackageNotFoundError:
        version = getattr(transformer_lens, "__version__", "?")
    try:
        try:
            from transformer_lens.model_bridge import TransformerBridge  # type: ignore[import-not-found]
        except ImportError:
            hooked = transformer_lens.HookedTransformer.from_pretrained(
                model.config.name_or_path or "HuggingFaceTB/SmolLM2-135M-Instruct",
                hf_model=model,
                tokenizer=tok,
                device="cpu",
            )
            how = f"TransformerLens {version} HookedTransformer"
        else:
            with tempfile.TemporaryDirectory() as local:
                model.config.save_pretrained(local)  # no hub access: the config comes from here
                hooked = TransformerBridge.boot_transformers(local, hf_model=model, tokenizer=tok, device="cpu")
            how = f"TransformerLens {version} TransformerBridge (eager attention in every layer)"
    except Exception as exc:  # offline it may insist on the hub
        return (
            {},
            f"transformer_lens {version} could not build the model offline: {type(exc).__name__}: {str(exc)[:160]}",
        )
    one = f"blocks.{layer}.attn.hook_pattern"

    def forward(ids: Any) -> Any:
        return hooked(ids)

    def cache_one(ids: Any) -> Any:
        return hooked.run_with_cache(ids, names_filter=lambda n: n == one)

    def cache_all(ids: Any) -> Any:
        return hooked.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_pattern"))

    rows = {
        "TransformerLens, no cache": forward,
        f"TransformerLens run_with_cache, layer {layer}": cache_one,
        "TransformerLens run_with_cache, every layer": cache_all,
    }
    return rows, how


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="attnkit bench capture", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--length", type=int, default=1024, help="prompt tokens (default 1024)")
    p.add_argument("--layer", type=int, default=None, help="the one layer captured (default: the middle one)")
    p.add_argument("--repeat", type=int, default=5, help="rounds (median reported; default 5)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, metavar="PATH")
    p.add_argument("--quick", action="store_true", help="256 tokens, 2 rounds")
    args = p.parse_args(list(argv) if argv is not None else None)
    if args.quick:
        args.length, args.repeat = 256, 2
    if args.length < 2 or args.repeat < 1:
        raise SystemExit(f"--length must be >= 2 and --repeat >= 1, got {args.length} and {args.repeat}")

    import torch

    import attnkit
    from attnkit.cache.bench import prompt_ids
    from attnkit.models import load
    from attnkit.runtime import Capture

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load(args.model)
    n_layers = model.config.num_hidden_layers
    layer = n_layers // 2 if args.layer is None else args.layer
    if not 0 <= layer < n_layers:
        raise SystemExit(f"--layer must be in [0, {n_layers}), got {layer}")
    ids, _ = prompt_ids(tok, args.length)

    def patched(sites: list[str]) -> Callable[[Any], Any]:
        def run(x: Any) -> Any:
            analyses = [Capture(sites)] if sites else []
            with attnkit.patch(model, "dense", analyses=analyses):
                return model(input_ids=x).logits

        return run

    def unpatched(x: Any) -> Any:
        return model(input_ids=x).logits

    def eager(x: Any) -> Any:
        saved = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            return model(input_ids=x, output_attentions=True).attentions
        finally:
            model.set_attn_implementation(saved)

    rows: dict[str, Callable[[Any], Any]] = {
        "unpatched (transformers SDPA)": unpatched,
        "attnkit, no capture": patched([]),
        f"attnkit, pattern of layer {layer}": patched([f"blocks.{layer}.attn.hook_pattern"]),
        "attnkit, pattern of every layer": patched(["blocks.{l}.attn.hook_pattern"]),
        "transformers eager, output_attentions": eager,
    }
    tl_rows, tl_note = _transformer_lens_rows(args.model, layer)
    rows.update(tl_rows)
    names = list(rows)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for fn in rows.values():  # warm-up
            fn(ids[:, :32])
        for r in range(args.repeat):
            shift = r % len(names)
            for n in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                rows[n](ids)
                times[n].append(time.perf_counter() - t0)
    base = statistics.median(times["attnkit, no capture"])
    table = [
        {"run": n, "median_s": statistics.median(times[n]), "vs_no_capture": statistics.median(times[n]) / base}
        for n in names
    ]
    print(
        f"prefill of {ids.shape[1]} tokens, {args.model} ({n_layers} layers), float32, "
        f"{torch.get_num_threads()} threads, median of {args.repeat}"
    )
    print(f"{'run':<42}{'seconds':>10}{'vs no capture':>15}")
    for row in table:
        print(f"{row['run']:<42}{row['median_s']:>10.3f}{row['vs_no_capture']:>14.2f}x")
    print(f"TransformerLens: {tl_note}")
    if args.json:
        out = {
            "model": args.model,
            "tokens": int(ids.shape[1]),
            "layers": n_layers,
            "threads": torch.get_num_threads(),
            "repeat": args.repeat,
            "rows": table,
            "transformer_lens": tl_note,
        }
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
