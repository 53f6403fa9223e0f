"""``attnkit bench dhsa``: every backend side by side with masked SDPA and a matmul of the
same useful FLOPs (float32, ``B=1``, ``H=8``, ``D=64``, causal prefill; how each is measured:
:mod:`attnkit.kernels.bench`). ``--quick`` runs one tiny shape.

DHSA's mask depends on the inputs, so :meth:`DhsaBench.dense_mask` computes the selection of
the shape's seeded inputs (the ones every variant is timed on) instead of reading the flex
rule on meta tensors. The numba and flex timings include the selection step.
"""

from __future__ import annotations

from typing import Any

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "DhsaBench", "run"]


class DhsaBench(KernelBench):
    def dense_mask(self, shape: Shape, chunk: int = 1024) -> Any:
        from attnkit_dhsa.selection import select

        q, k, _ = shape.inputs()
        params = self._spec().make_params(**shape.params)
        mask = select(q, k, params, bool(shape.is_causal)).dense(shape.tokens, shape.tokens)[0]  # (Hs, N, N)
        if mask.shape[0] != 1:
            mask = mask.repeat_interleave(shape.heads // mask.shape[0], dim=0)
        return mask


_QUICK = {"block_size": 16, "chunk_size": 4, "sink_tokens": 8, "local_tokens": 0, "top_k": 24}
_PAPER = {"block_size": 128, "chunk_size": 16, "sink_tokens": 128, "local_tokens": 0, "top_k": 768}

BENCH = DhsaBench(
    spec="dhsa",
    title="dhsa, float32 causal prefill forward (paper budget: 1024 keys per query block)",
    shapes=[Shape(f"T={t} budget=1024 causal", (t,), _PAPER, is_causal=True) for t in (4096, 16384)],
    quick=[
        Shape(
            "T=256 budget=48 causal",
            (256,),
            {"block_size": 16, "chunk_size": 4, "sink_tokens": 8, "local_tokens": 0, "top_k": 24},
            is_causal=True,
            heads=2,
            head_dim=16,
        )
    ],
)
run = BENCH.run
