"""``attnkit bench blockrank``: numba vs compiled flex vs dense SDPA under the equivalent mask,
and a matmul of the same useful FLOPs (float32, ``B=1``, ``H=8``, ``D=64``, causal: the
paper's mask; how each is measured: :mod:`attnkit.kernels.bench`).

Layouts after the paper's (a short instruction, documents of 128 tokens, the query takes the
rest): ``T=4096`` holds 30 documents, ``T=16384`` holds 126. ``--quick`` runs one tiny shape.
"""

from __future__ import annotations

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "run"]

_DOC = 128
_INSTRUCTION = 64
_QUERY = 192


def _shape(t: int) -> Shape:
    n = (t - _INSTRUCTION - _QUERY) // _DOC
    params = {"instruction": _INSTRUCTION, "num_documents": n, "document_len": _DOC}
    return Shape(f"T={t} docs={n}x{_DOC} causal", (t,), params, is_causal=True)


BENCH = KernelBench(
    spec="blockrank",
    title="blockrank, float32 causal forward",
    shapes=[_shape(t) for t in (4096, 16384)],
    quick=[
        Shape(
            "T=64 docs=6x8 causal",
            (64,),
            {"instruction": 4, "num_documents": 6, "document_len": 8},
            is_causal=True,
            heads=2,
            head_dim=16,
        )
    ],
    backends=("numba", "flex"),
)
run = BENCH.run
