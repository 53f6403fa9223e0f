"""``attnkit bench neighborhood``: numba vs compiled FlexAttention vs dense SDPA, side by side.

Shapes (float32, ``B=1``, ``H=8``, ``D=64``):

* 1D: ``T`` in {4096, 16384}, ``kernel_size`` in {127, 255}, causal and not;
* 2D: 64x64 and 128x128 tokens, kernel 7x7 and 13x13, dilation 1 and 2.

Per shape, in one process:

* ``numba``: the spec forced to ``backend="numba"`` (its JIT compile is in the warm-up);
* ``flex``: ``backend="flex"``; the BlockMask is built and the graph compiled in the setup,
  outside the timed region;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the equivalent
  ``(N, N)`` boolean mask. Its math path materialises ``(heads, N, N)`` float32 logits (8 GiB
  per batch entry at N=16384, H=8), so heads go through in chunks holding at most
  ``SDPA_LOGITS_BUDGET`` bytes of logits per call (one head per call at N=16384) and the
  time is the sum over chunks: the same work, measured without running out of memory.

Useful FLOPs count only the (query, key) pairs the neighbourhood allows:
``4 * B * H * pairs * D`` with ``pairs = N * prod(kernel_size)`` for non-causal inputs (fewer
for causal ones, whose first queries see shorter windows). GFLOP/s are compared with a float32
matmul probe measured in the same run. ``--quick`` runs one tiny 1D and one tiny 2D shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from attnkit.bench import Bench, Case, Variant, bench_parser

__all__ = ["cases", "run"]

BACKENDS = ("numba", "flex", "sdpa", "matmul")
SDPA_LOGITS_BUDGET = 1 << 30  # bytes of float32 logits per SDPA call


def _pairs(
    spatial: tuple[int, ...], kernel: tuple[int, ...], dilation: tuple[int, ...], causal: tuple[bool, ...]
) -> int:
    """Allowed (query, key) pairs: the per-axis window lengths multiply, so their sums do."""
    from attnkit_neighborhood.windows import axis_window

    total = 1
    for n, kk, d, c in zip(spatial, kernel, dilation, causal):
        _, valid = axis_window(n, kk, d, c)
        total *= int(valid.sum())
    return total


def _inputs(batch: int, heads: int, spatial: tuple[int, ...], head_dim: int) -> tuple[Any, Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(0)
    shape = (batch, heads, *spatial, head_dim)
    return tuple(torch.randn(shape, generator=gen) for _ in range(3))  # type: ignore[return-value]


Axes = tuple[int, ...]


def _spec_variant(
    name: str,
    batch: int,
    heads: int,
    spatial: Axes,
    head_dim: int,
    params: dict[str, Any],
    causal: bool | tuple[bool, ...],
) -> Variant:
    def setup() -> Callable[[], Any]:
        import attnkit

        spec = attnkit.get_spec("neighborhood", "attention")
        q, k, v = _inputs(batch, heads, spatial, head_dim)
        if name == "flex":
            from attnkit_neighborhood.flex import block_mask

            block_mask(spatial, spec.make_params(**params), causal, q.device)  # cached, off the clock
        spec(q, k, v, backend=name, is_causal=causal, **params)  # compile / JIT now, not in timing
        return lambda: spec(q, k, v, backend=name, is_causal=causal, **params)

    note = {
        "numba": "attnkit spec, backend='numba' (JIT compile in warm-up)",
        "flex": "torch.compile(flex_attention) + cached BlockMask; mask build and compile excluded",
    }[name]
    return Variant(name=name, setup=setup, note=note)


def _sdpa_variant(
    batch: int, heads: int, spatial: Axes, head_dim: int, kernel: Axes, dilation: Axes, causal: tuple[bool, ...]
) -> Variant:
    n = math.prod(spatial)
    chunk = max(1, min(heads, SDPA_LOGITS_BUDGET // (4 * batch * n * n)))

    def setup() -> Callable[[], Any]:
        import torch
        import torch.nn.functional as F

        from attnkit_neighborhood.windows import flat_windows

        idx, valid = flat_windows(spatial, kernel, dilation, causal)
        mask = torch.zeros(n, n, dtype=torch.bool)
        rows = torch.arange(n)[:, None].expand_as(idx)
        mask[rows[valid], idx[valid]] = True  # (N, N): True = may attend
        q, k, v = (x.reshape(batch, heads, n, head_dim) for x in _inputs(batch, heads, spatial, head_dim))
        scale = head_dim**-0.5

        def call() -> None:
            for h0 in range(0, heads, chunk):
                F.scaled_dot_product_attention(
                    q[:, h0 : h0 + chunk], k[:, h0 : h0 + chunk], v[:, h0 : h0 + chunk], attn_mask=mask, scale=scale
                )

        return call

    return Variant(
        name="sdpa",
        setup=setup,
        note=f"dense SDPA with the (N, N) bool mask, heads in chunks of <= {SDPA_LOGITS_BUDGET >> 20} MiB of logits",
    )


def _matmul_variant(batch: int, heads: int, n: int, head_dim: int, pairs: int) -> Variant:
    """A float32 matmul of similar size: the same ``(B*H, N, D)`` queries against a dense block
    of ``W = pairs // N`` keys each, then ``(B*H, N, W) @ (B*H, W, D)``; the useful FLOPs of the
    neighbourhood with every query sharing one dense window."""
    width = max(1, pairs // n)

    def setup() -> Callable[[], Any]:
        import torch

        gen = torch.Generator().manual_seed(0)
        q = torch.randn(batch * heads, n, head_dim, generator=gen)
        kt = torch.randn(batch * heads, head_dim, width, generator=gen)
        v = torch.randn(batch * heads, width, head_dim, generator=gen)
        s = torch.empty(batch * heads, n, width)
        o = torch.empty(batch * heads, n, head_dim)

        def call() -> None:
            torch.bmm(q, kt, out=s)
            torch.bmm(s, v, out=o)

        return call

    return Variant(
        name="matmul",
        setup=setup,
        flops=4.0 * batch * heads * n * width * head_dim,
        note="float32 torch.bmm of similar size: (B*H, N, D) @ (B*H, D, W) then (B*H, N, W) @ (B*H, W, D), W = pairs / N",
    )


def _case(
    label: str,
    spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
    *,
    batch: int,
    heads: int,
    head_dim: int,
    backends: Sequence[str],
) -> Case:
    params = {
        "kernel_size": kernel if len(kernel) > 1 else kernel[0],
        "dilation": dilation if len(dilation) > 1 else dilation[0],
    }
    is_causal: bool | tuple[bool, ...] = causal if len(causal) > 1 else causal[0]
    pairs = _pairs(spatial, kernel, dilation, causal)
    variants = []
    for b in backends:
        if b == "sdpa":
            variants.append(_sdpa_variant(batch, heads, spatial, head_dim, kernel, dilation, causal))
        elif b == "matmul":
            variants.append(_matmul_variant(batch, heads, math.prod(spatial), head_dim, pairs))
        else:
            variants.append(_spec_variant(b, batch, heads, spatial, head_dim, params, is_causal))
    return Case(
        name=label,
        flops=4.0 * batch * heads * pairs * head_dim,
        variants=variants,
        info={
            "batch": batch,
            "heads": heads,
            "head_dim": head_dim,
            "spatial": list(spatial),
            "kernel_size": list(kernel),
            "dilation": list(dilation),
            "is_causal": list(causal),
            "pairs": pairs,
            "dtype": "float32",
        },
    )


def cases(*, quick: bool = False, backends: Sequence[str] = BACKENDS) -> list[Case]:
    """The benchmark cases; ``quick`` gives one tiny 1D and one tiny 2D case."""
    out = []
    if quick:
        # Same flattened size and heads, so compiled FlexAttention reuses one graph for both.
        tiny = functools.partial(_case, batch=1, heads=2, head_dim=16, backends=backends)
        out.append(tiny("1d T=64 k=7 causal", (64,), (7,), (1,), (True,)))
        out.append(tiny("2d 8x8 k=3x3 d=2", (8, 8), (3, 3), (2, 2), (False, False)))
        return out
    full = functools.partial(_case, batch=1, heads=8, head_dim=64, backends=backends)
    for t in (4096, 16384):
        for kk in (127, 255):
            for c in (False, True):
                label = f"1d T={t} k={kk}" + (" causal" if c else "")
                out.append(
                    full(
                        label,
                        (t,),
                        (kk,),
                        (1,),
                        (c,),
                    )
                )
    for side in (64, 128):
        for kk in (7, 13):
            for d in (1, 2):
                label = f"2d {side}x{side} k={kk}x{kk} d={d}"
                out.append(
                    full(
                        label,
                        (side, side),
                        (kk, kk),
                        (d, d),
                        (False, False),
                    )
                )
    return out


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnkit bench neighborhood``; returns the exit code.

    :param argv: command-line arguments after the spec name (``--quick``, ``--repeat N``,
        ``--threads N``, ``--json PATH``, ``--only SUBSTRING``, ``--backends numba,flex``).
    """
    parser = bench_parser("attnkit bench neighborhood", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma list of variants to time (default {','.join(BACKENDS)})",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown or not backends:
        parser.error(f"--backends: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(BACKENDS)}")
    ratios = [(a, b) for a, b in (("numba", "flex"), ("numba", "sdpa")) if a in backends and b in backends]
    gflops_ratios = [("numba", "matmul")] if "numba" in backends and "matmul" in backends else []
    bench = Bench("neighborhood attention, float32 forward", args, ratios=ratios, gflops_ratios=gflops_ratios)
    bench.run(cases(quick=args.quick, backends=backends))
    return bench.exit_code
