"""``attnkit bench core_context``: the backends side by side with dense causal SDPA (the full
attention CCA replaces) and a matmul of the same useful FLOPs (float32, ``B=1``, ``H=8``,
``D=64``; how each is measured: :mod:`attnkit.kernels.bench`). ``--quick`` runs one tiny shape.

CCA attends to pooled core tokens, which no mask over the raw keys describes, so the kit's
peers are given what they need here: the useful (query, key) pairs in closed form
(:meth:`CoreContextParams.keys_seen` summed over queries: core tokens plus local window) and,
for the SDPA peer, the causal mask of full attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "run"]


@dataclass(frozen=True)
class _CoreContextBench(KernelBench):
    def dense_mask(self, shape: Shape, chunk: int = 1024) -> Any:
        """Full causal attention ``(1, N, N)``: the baseline CCA's sparsity is measured against."""
        import torch

        n = shape.tokens
        return torch.ones(1, n, n, dtype=torch.bool).tril_()

    def pairs(self, shape: Shape) -> int:
        """Keys every query attends to (core tokens + window), summed over batch and heads."""
        from attnkit_core_context.params import CoreContextParams

        p = CoreContextParams(**shape.params)
        return sum(p.keys_seen(t) for t in range(shape.tokens)) * shape.heads * shape.batch


BENCH = _CoreContextBench(
    spec="core_context",
    title="core_context (CCA-Attention), float32 forward, causal",
    shapes=[
        Shape(f"T={t} g={g} s={s}", (t,), {"group_size": g, "window": s}, is_causal=True)
        for t in (4096, 16384)
        for g, s in ((16, 256), (16, 1024))
    ],
    quick=[Shape("T=64 g=4 s=8", (64,), {"group_size": 4, "window": 8}, is_causal=True, heads=2, head_dim=16)],
    backends=("numba", "flex"),
    notes={"sdpa": "dense SDPA under the full causal (N, N) mask: the attention CCA replaces"},
)
run = BENCH.run
