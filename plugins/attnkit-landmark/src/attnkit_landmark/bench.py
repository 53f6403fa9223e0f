"""``attnkit bench landmark`` / ``attnkit bench landmark.retrieval``: the numba backend side by
side with masked SDPA and a matmul of the same useful FLOPs (float32, ``B=1``, ``H=8``,
``D=64``, causal, ``block_size=64`` as the paper's LLaMA setting; how each is measured:
:mod:`attnkit.kernels.bench`). ``--quick`` runs one tiny shape.

Neither spec has a flex rule or a brute-force mask, so :class:`LandmarkBench` builds the dense
mask from :func:`attnkit_landmark.reference.grouped_logits` on the shape's seeded inputs: the
keys whose logit each row uses (current section, gated blocks and their landmarks). SDPA
under that mask does the same (query, key) products but a plain softmax, so it is the cost
peer, not an equal result. There is no compiled-flex peer (README, "Backends").
"""

from __future__ import annotations

from typing import Any

from attnkit.kernels.bench import KernelBench, Shape

__all__ = ["BENCH", "RETRIEVAL_BENCH", "LandmarkBench", "run", "run_retrieval"]


class LandmarkBench(KernelBench):
    def dense_mask(self, shape: Shape, chunk: int = 1024) -> Any:
        import torch

        from attnkit_landmark.reference import grouped_logits

        q, k, _ = shape.inputs()
        params = self._spec().make_params(**shape.params)
        top_k = getattr(params, "top_k", None)
        n = shape.tokens
        scale = shape.head_dim**-0.5
        rows = []
        with torch.no_grad():
            for i0 in range(0, n, chunk):
                scores = (q[0, :, i0 : i0 + chunk] * scale) @ k[0].transpose(-1, -2)  # (H, c, N)
                _, uses, _ = grouped_logits(scores, params.block_size, bool(shape.is_causal), top_k, offset=i0)
                rows.append(uses)
        mask = torch.cat(rows, dim=1)
        return mask if top_k is not None else mask[:1]  # landmark: one mask for every head


def _shapes(params: dict[str, Any]) -> list[Shape]:
    extra = "".join(f" {k}={v}" for k, v in params.items())
    return [Shape(f"T={t}{extra} causal", (t,), params, is_causal=True) for t in (4096, 16384)]


_QUICK = {"heads": 2, "head_dim": 16, "is_causal": True}

BENCH = LandmarkBench(
    spec="landmark",
    title="landmark, float32 causal forward (grouped softmax, block_size=64)",
    shapes=_shapes({"block_size": 64}),
    quick=[Shape("T=256 block_size=16 causal", (256,), {"block_size": 16}, **_QUICK)],
    backends=("numba",),
)
RETRIEVAL_BENCH = LandmarkBench(
    spec="landmark.retrieval",
    title="landmark.retrieval, float32 causal forward (top-k blocks by landmark, block_size=64)",
    shapes=_shapes({"block_size": 64, "top_k": 4}),
    quick=[Shape("T=256 block_size=16 top_k=2 causal", (256,), {"block_size": 16, "top_k": 2}, **_QUICK)],
    backends=("numba",),
)
run = BENCH.run
run_retrieval = RETRIEVAL_BENCH.run
