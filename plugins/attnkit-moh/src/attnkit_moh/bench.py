"""``attnkit bench moh``: forward time of an MoH layer against a dense MHA layer of the same size.

Shape: ``x (B=8, T=256, E=512)``, 8 heads of 64, float32, CPU, encoder (``--causal`` for a
decoder). One case per active share (50%, 75%, 90% asked; with 8 heads and 2 shared heads
that is top-2, top-4 and top-5 of 6 routed: 4/8, 6/8 and 7/8 heads). Per case, in one process:

* ``mha``: :class:`attnkit.modules.MultiHeadAttention` with the ``dense`` kernel (SDPA);
* ``moh``: :class:`~attnkit_moh.module.MoHAttention`, ``path="gather"``: only the picked
  (token, head) pairs get a query projection and attention;
* ``moh-masked``: the same weights, ``path="masked"``: every head, then gates (what the paper
  code does; shows what the gather saves).

The router is freshly initialised (random ``W_r``), so routing is close to balanced; a trained
router that sends most tokens to few heads pads the gather block and costs more. Useful FLOPs
count the attention core of the active heads (:func:`attnkit.modules.attention_flops`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from attnkit.bench import Bench, Case, Variant, bench_parser

__all__ = ["cases", "run"]

FRACTIONS = (0.5, 0.75, 0.9)
SHARED = 2


def _variant(name: str, batch: int, seq: int, dim: int, heads: int, causal: bool, fraction: float) -> Variant:
    def setup() -> Callable[[], Any]:
        import torch

        from attnkit.modules import ModuleConfig, MultiHeadAttention
        from attnkit_moh.module import MoHAttention
        from attnkit_moh.params import MoHParams

        config = ModuleConfig(dim=dim, heads=heads, causal=causal)
        torch.manual_seed(0)
        module: torch.nn.Module
        if name == "mha":
            module = MultiHeadAttention(config, kernel="dense")
        else:
            path = "masked" if name == "moh-masked" else "gather"
            params = MoHParams(shared_heads=min(SHARED, heads - 1), active_fraction=fraction, path=path)
            module = MoHAttention(config, params)
        module.eval()
        x = torch.randn(batch, seq, dim, generator=torch.Generator().manual_seed(1))
        return lambda: module(x)

    notes = {
        "mha": "attnkit MultiHeadAttention, kernel='dense' (SDPA), all heads",
        "moh": "MoHAttention path='gather': q projection + attention only for picked (token, head) pairs",
        "moh-masked": "MoHAttention path='masked': every head computed, then gated (paper code formulation)",
    }
    return Variant(name=name, setup=setup, note=notes[name])


def cases(*, quick: bool = False, causal: bool = False) -> list[Case]:
    """One case per active share; ``quick``: a tiny shape for a smoke run."""
    from attnkit.modules import ModuleConfig, attention_flops
    from attnkit_moh.params import MoHParams, resolve_layout

    batch, seq, dim, heads = (2, 32, 64, 8) if quick else (8, 256, 512, 8)
    out = []
    for fraction in FRACTIONS:
        layout = resolve_layout(MoHParams(shared_heads=SHARED, active_fraction=fraction), heads)
        config = ModuleConfig(dim=dim, heads=heads, causal=causal)
        label = (
            f"{int(fraction * 100)}% asked: {layout.active}/{heads} heads (shared {layout.shared}, top-{layout.top_k})"
        )
        variants = [_variant(n, batch, seq, dim, heads, causal, fraction) for n in ("mha", "moh", "moh-masked")]
        out.append(
            Case(
                name=label + (" causal" if causal else ""),
                flops=batch * attention_flops(config, seq, active_heads=layout.active),
                variants=variants,
                info={
                    "batch": batch,
                    "seq": seq,
                    "dim": dim,
                    "heads": heads,
                    "shared_heads": layout.shared,
                    "top_k": layout.top_k,
                    "active_heads": layout.active,
                    "causal": causal,
                    "dtype": "float32",
                },
            )
        )
    return out


def run(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attnkit bench moh``; returns the exit code.

    :param argv: arguments after the spec name (``--quick``, ``--repeat N``, ``--threads N``,
        ``--json PATH``, ``--only SUBSTRING``, ``--causal``).
    """
    parser = bench_parser("attnkit bench moh", description=__doc__.splitlines()[0])
    parser.add_argument("--causal", action="store_true", help="decoder (causal) layers instead of encoder ones")
    args = parser.parse_args(list(argv) if argv is not None else None)
    bench = Bench(
        "MoH layer vs dense MHA layer, float32 forward",
        args,
        ratios=[("moh", "mha"), ("moh", "moh-masked")],
    )
    bench.run(cases(quick=args.quick, causal=args.causal))
    return bench.exit_code
