"""``attnkit bench longheads``: every backend side by side with masked SDPA and a matmul of the
same useful FLOPs (float32, ``B=1``, ``H=8``, ``D=64``, causal prefill; how each is measured:
:mod:`attnkit.kernels.bench`). ``--quick`` runs one tiny shape.

LongHeads' mask depends on the inputs, so :meth:`LongheadsBench.dense_mask` computes the
selection of the shape's seeded inputs (the ones every variant is timed on). The numba timing
includes the selection step.
"""

from __future__ import annotations

from typing import Any

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "LongheadsBench", "run"]


class LongheadsBench(KernelBench):
    def dense_mask(self, shape: Shape, chunk: int = 1024) -> Any:
        from attnkit_longheads.selection import select

        q, k, v = shape.inputs()
        params = self._spec().make_params(**shape.params)
        sel = select(q, k, v, params, bool(shape.is_causal), q.shape[-1] ** -0.5)
        return sel.dense(shape.tokens, bool(shape.is_causal))[0]  # (Hq, N, N)


# The paper's chunk (256) with a 1024-key budget per query and head (its 4096 would be
# dense at T=4096); the paper's chunk representation.
_PARAMS = {"chunk_size": 256, "chunks": 4, "representation": "attention"}

BENCH = LongheadsBench(
    spec="longheads",
    title="longheads, float32 causal prefill forward (1024 keys per query and head)",
    # No flex backend (see the README): numba against masked SDPA and the matmul.
    backends=("numba",),
    shapes=[Shape(f"T={t} w=256 chunks=4 causal", (t,), _PARAMS, is_causal=True) for t in (4096, 16384)],
    quick=[
        Shape(
            "T=256 w=16 chunks=4 causal",
            (256,),
            {"chunk_size": 16, "chunks": 4},
            is_causal=True,
            heads=2,
            head_dim=16,
        )
    ],
)
run = BENCH.run
