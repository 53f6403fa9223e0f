"""``attnkit bench sf_attn``: numba vs compiled flex vs dense SDPA under the equivalent mask.

Shapes (float32, ``B=1``, ``H=8``, ``D=64``, causal, SinkLoRA's defaults ``G = T/4`` and
``n_sink=4``): ``T`` in {2048, 4096, 8192, 16384}, plain and shifted (S²). The variants and
how each is measured are :mod:`attnkit.kernels.bench`'s; useful FLOPs count the allowed pairs
of every head (the shifted heads' groups differ). ``--quick`` runs one tiny shape.
"""

from __future__ import annotations

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "run"]

BENCH = KernelBench(
    spec="sf_attn",
    title="SF-Attn, float32 causal forward",
    shapes=[
        Shape(f"T={t} G={t // 4} causal" + (" shifted" if shifted else ""), (t,), params, is_causal=True)
        for t in (2048, 4096, 8192, 16384)
        for shifted, params in ((False, {}), (True, {"shifted": True}))
    ],
    quick=[Shape("T=256 G=64 causal", (256,), {}, is_causal=True, heads=2, head_dim=16)],
)
run = BENCH.run
