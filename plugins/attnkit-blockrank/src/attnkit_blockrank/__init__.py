"""attnkit plugin for BlockRank, "Scalable In-context Ranking with Generative Models"
(arXiv:2510.05396; code: nilesh2797/BlockRank).

The keys are laid out as ``[instruction | document 1 .. n | query]``; the instruction attends
to itself, each document to the instruction and to itself (never to another document), the
query to everything; ``is_causal=True`` adds causality inside that, which is the paper's mask.

This module is the entry point: it only declares the spec. torch, numba and triton are
imported by the backend modules on first use, so listing plugins stays fast and a broken
backend cannot break it.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_blockrank.params import BlockrankParams

__all__ = ["BLOCKRANK", "BlockrankParams"]

PAPER = Paper(
    title="Scalable In-context Ranking with Generative Models",
    arxiv="2510.05396",
    url="https://github.com/nilesh2797/BlockRank",
)

BLOCKRANK = AttentionSpec(
    name="blockrank",
    paper=PAPER,
    description="Instruction | documents | query: documents see the instruction and themselves, the query sees all.",
    params=BlockrankParams,
    backends=standard_backends(
        "attnkit_blockrank",
        "blockrank_attention",
        numba="numba CPU kernel over segment-aligned query tiles and their own key ranges (linear in documents); "
        "backward recomputes the reference",
        triton="Triton forward over each query block's key ranges (CUDA; CPU under TRITON_INTERPRET=1); "
        "backward recomputes the reference",
        reference="plain torch, one segment at a time over its visible keys (the paper's eager form); float32/float64",
        flex="torch.compile(flex_attention) with the BlockRank mask_mod (inference on CPU)",
        onnx={
            "can_run": "attnkit_blockrank.onnx:can_run",
            "description": "dense attention under an index-arithmetic mask; dynamic length with query=None",
        },
    ),
    validate="attnkit_blockrank.params:validate",
    mask="attnkit_blockrank.masks:brute_force_mask",
    contract_params="attnkit_blockrank.params:contract_params",
    bench="attnkit_blockrank.bench:run",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(BLOCKRANK)
