"""``attnkit bench neighborhood``: numba vs compiled FlexAttention vs dense SDPA, side by side.

Shapes (float32, ``B=1``, ``H=8``, ``D=64``):

* 1D: ``T`` in {4096, 16384}, ``kernel_size`` in {127, 255}, causal and not;
* 2D: 64x64 and 128x128 tokens, kernel 7x7 and 13x13, dilation 1 and 2.

The variants (numba, flex, masked SDPA, a matmul of the same useful FLOPs) and how each is
measured are :mod:`attnkit.kernels.bench`'s. ``--quick`` runs one tiny 1D and one tiny 2D
shape.
"""

from __future__ import annotations

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "run"]


def _shapes() -> list[Shape]:
    out = []
    for t in (4096, 16384):
        for kk in (127, 255):
            for causal in (False, True):
                label = f"1d T={t} k={kk}" + (" causal" if causal else "")
                out.append(Shape(label, (t,), {"kernel_size": kk}, is_causal=causal))
    for side in (64, 128):
        for kk in (7, 13):
            for d in (1, 2):
                params = {"kernel_size": (kk, kk), "dilation": (d, d)}
                out.append(Shape(f"2d {side}x{side} k={kk}x{kk} d={d}", (side, side), params))
    return out


BENCH = KernelBench(
    spec="neighborhood",
    title="neighborhood attention, float32 forward",
    shapes=_shapes(),
    # Same flattened size and heads, so compiled FlexAttention reuses one graph for both.
    quick=(
        Shape("1d T=64 k=7 causal", (64,), {"kernel_size": 7}, is_causal=True, heads=2, head_dim=16),
        Shape("2d 8x8 k=3x3 d=2", (8, 8), {"kernel_size": (3, 3), "dilation": (2, 2)}, heads=2, head_dim=16),
    ),
)
run = BENCH.run
