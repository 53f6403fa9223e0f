"""``attnkit bench sf_attn``: numba vs dense SDPA under the equivalent mask vs compiled flex.

Shapes (float32, ``B=1``, ``H=8``, ``D=64``, causal, SinkLoRA's defaults ``G = T/4`` and
``n_sink=4``): ``T`` in {2048, 4096, 8192, 16384}, plain and shifted (S²). Per shape, in one
process:

* ``numba``: the spec forced to ``backend="numba"`` (JIT compile in the warm-up);
* ``flex``: ``backend="flex"``; the BlockMask is built and the graph compiled in the setup,
  outside the timed region;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the equivalent bool
  mask (``(T, T)``, or ``(H, T, T)`` for the shifted variant). Its math path materialises
  ``(heads, T, T)`` float32 logits, so heads go through in chunks holding at most
  ``SDPA_LOGITS_BUDGET`` bytes of logits per call; the time is the sum over chunks.

Useful FLOPs count only the allowed (query, key) pairs: ``4 * B * H * pairs * D``.
``--quick`` runs one tiny shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from attnkit.bench import Bench, Case, Variant, bench_parser

__all__ = ["cases", "run"]

BACKENDS = ("numba", "flex", "sdpa")
SDPA_LOGITS_BUDGET = 1 << 30  # bytes of float32 logits per SDPA call


def _mask(t: int, heads: int, params: dict[str, Any], causal: bool) -> Any:
    """The allowed pairs, ``(T, T)`` or ``(H, T, T)``, from the onnx backend's arithmetic
    (vectorised; the loop-built oracle in masks.py is too slow at T=16k)."""
    import torch

    from attnkit_sinklora.onnx import sf_mask
    from attnkit_sinklora.params import SFAttnParams

    p = SFAttnParams(**params)
    m = sf_mask(p, torch.empty(1, heads, t, 1), causal)
    return m if p.shifted else m[:1]


def _inputs(batch: int, heads: int, t: int, head_dim: int) -> tuple[Any, Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(batch, heads, t, head_dim, generator=gen) for _ in range(3))  # type: ignore[return-value]


def _spec_variant(name: str, batch: int, heads: int, t: int, head_dim: int, params: dict[str, Any]) -> Variant:
    def setup() -> Callable[[], Any]:
        import attnkit

        spec = attnkit.get_spec("sf_attn", "attention")
        q, k, v = _inputs(batch, heads, t, head_dim)
        spec(q, k, v, backend=name, is_causal=True, **params)  # JIT / compile / BlockMask now
        return lambda: spec(q, k, v, backend=name, is_causal=True, **params)

    note = {
        "numba": "attnkit spec, backend='numba' (JIT compile in warm-up)",
        "flex": "torch.compile(flex_attention) + cached BlockMask; mask build and compile excluded",
    }[name]
    return Variant(name=name, setup=setup, note=note)


def _sdpa_variant(batch: int, heads: int, t: int, head_dim: int, params: dict[str, Any]) -> Variant:
    chunk = max(1, min(heads, SDPA_LOGITS_BUDGET // (4 * batch * t * t)))

    def setup() -> Callable[[], Any]:
        import torch.nn.functional as F

        mask = _mask(t, heads, params, True)
        q, k, v = _inputs(batch, heads, t, head_dim)
        scale = head_dim**-0.5

        def call() -> None:
            for h0 in range(0, heads, chunk):
                m = mask[h0 : h0 + chunk] if mask.shape[0] > 1 else mask
                F.scaled_dot_product_attention(
                    q[:, h0 : h0 + chunk], k[:, h0 : h0 + chunk], v[:, h0 : h0 + chunk], attn_mask=m, scale=scale
                )

        return call

    return Variant(
        name="sdpa",
        setup=setup,
        note=f"dense SDPA with the equivalent bool mask, heads in chunks of <= {SDPA_LOGITS_BUDGET >> 20} MiB of logits",
    )


def _case(
    label: str, t: int, params: dict[str, Any], *, batch: int, heads: int, head_dim: int, backends: Sequence[str]
) -> Case:
    pairs = int(_mask(t, heads, params, True).sum()) * (1 if params.get("shifted") else heads) // heads
    variants = []
    for b in backends:
        if b == "sdpa":
            variants.append(_sdpa_variant(batch, heads, t, head_dim, params))
        else:
            variants.append(_spec_variant(b, batch, heads, t, head_dim, params))
    return Case(
        name=label,
        flops=4.0 * batch * heads * pairs * head_dim,
        variants=variants,
        info={"batch": batch, "heads": heads, "head_dim": head_dim, "T": t, **params, "pairs_per_head": pairs},
    )


def cases(*, quick: bool = False, backends: Sequence[str] = BACKENDS) -> list[Case]:
    """The benchmark cases; ``quick`` gives one tiny case."""
    if quick:
        return [_case("T=256 G=64 causal", 256, {}, batch=1, heads=2, head_dim=16, backends=backends)]
    full = functools.partial(_case, batch=1, heads=8, head_dim=64, backends=backends)
    out = []
    for t in (2048, 4096, 8192, 16384):
        out.append(full(f"T={t} G={t // 4} causal", t, {}))
        out.append(full(f"T={t} G={t // 4} causal shifted", t, {"shifted": True}))
    return out


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnkit bench sf_attn``; returns the exit code.

    :param argv: command-line arguments after the spec name (``--quick``, ``--repeat N``,
        ``--threads N``, ``--json PATH``, ``--only SUBSTRING``, ``--backends numba,flex``).
    """
    parser = bench_parser("attnkit bench sf_attn", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma list of variants to time (default {','.join(BACKENDS)})"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(BACKENDS)}")
    ratios = [(a, b) for a, b in (("numba", "sdpa"), ("numba", "flex")) if a in backends and b in backends]
    bench = Bench("SF-Attn, float32 causal forward", args, ratios=ratios)
    bench.run(cases(quick=args.quick, backends=backends))
    return bench.exit_code
