"""attnkit plugin: ring attention over ``torch.distributed``, the distributed multi-head
attention of "A Unified View of Long-Sequence Models towards Modeling Million-Scale
Dependencies" (Hè & Kabic, 2023; arXiv:2302.06218).

The paper publishes no code and not its exact partitioning, so this is the standard ring /
context-parallel attention (as in PyTorch's ``context_parallel``) in plain torch: contiguous
sequence shards, key/value blocks passed around the ring with ``torch.distributed``, partial
outputs merged with attnkit's LSE merge. See :mod:`attnkit_ring.distributed` and the README.

This module is the entry point: it only declares the spec. torch is imported by the backend
modules on first use, so listing plugins stays fast.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Backend, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_ring.params import RingParams

__all__ = ["PAPER", "RING", "RingParams"]

PAPER = Paper(
    title="A Unified View of Long-Sequence Models towards Modeling Million-Scale Dependencies",
    arxiv="2302.06218",
)

DISTRIBUTED = Backend(
    name="distributed",
    impl="attnkit_ring.distributed:ring_attention",
    can_run="attnkit_ring.distributed:can_run",
    dtypes=("float16", "bfloat16", "float32", "float64"),
    description="ring attention over torch.distributed (gloo on CPU, NCCL on CUDA) on each rank's "
    "contiguous shard, LSE-merged; without a process group (or with one rank) computed locally",
)

RING = AttentionSpec(
    name="ring",
    paper=PAPER,
    description="Ring attention: the sequence sharded over torch.distributed ranks, K/V blocks passed "
    "around the ring, equal to dense attention (local without a process group).",
    params=RingParams,
    backends=(
        # The distributed backend comes first and is the only one chosen automatically: the
        # reference over one rank's shard alone would be silently wrong under a process group.
        DISTRIBUTED,
        *standard_backends(
            "attnkit_ring",
            "ring_attention",
            reference={
                "traceable": True,
                "auto": False,
                "description": "single-process dense attention in plain torch (float32/float64 math), "
                "what the ring must equal; the ONNX export path; chosen only by name",
            },
        ),
    ),
    mask="attnkit_ring.masks:brute_force_mask",
    contract_params="attnkit_ring.params:contract_params",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(RING)
