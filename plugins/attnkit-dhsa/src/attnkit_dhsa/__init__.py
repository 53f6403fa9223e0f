"""attnkit plugin for Dynamic Hierarchical Sparse Attention for Long-Context LLM Prefill
(DHSA, arXiv:2510.24606): training-free, prefill.

Each query block scores uniform key chunks by the dot product of length-normalised block and
chunk representations, upsamples the chunk scores to tokens, keeps its sink, local and top-k
keys, and attends only to them (:mod:`attnkit_dhsa.selection`).

This module is the entry point: it only declares the spec. torch, numba and triton are
imported by the backend modules on first use, so listing plugins stays fast and a broken
backend cannot break it.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_dhsa.params import DhsaParams

__all__ = ["DHSA", "PAPER", "DhsaParams"]

PAPER = Paper(
    title="Dynamic Hierarchical Sparse Attention for Long-Context LLM Prefill",
    arxiv="2510.24606",
)

DHSA = AttentionSpec(
    name="dhsa",
    paper=PAPER,
    description="Each query block keeps its sink, local and top-k keys by chunk-level similarity "
    "(length-normalised chunk representations), then attends only to them.",
    params=DhsaParams,
    backends=standard_backends(
        "attnkit_dhsa",
        "dhsa_attention",
        numba="torch selection, then a numba CPU kernel per (head, query block) over its gathered keys; "
        "backward recomputes the reference",
        triton="torch selection, then a Triton forward over each query block's gathered keys "
        "(CUDA; CPU under TRITON_INTERPRET=1); backward recomputes the reference",
        reference="plain torch: the selection as a dense mask, then dense attention under it; float32/float64",
        flex="torch.compile(flex_attention), mask_mod over the captured selection (inference on CPU)",
        onnx="traceable selection, then each query over its own K keys (gathered_attention); used while exporting",
    ),
    # DHSA's selection depends on q and k, so the brute force is an ``input_mask``: the
    # contract holds every backend (the reference included) to dense attention under it.
    input_mask="attnkit_dhsa.masks:brute_force_mask",
    contract_params="attnkit_dhsa.params:contract_params",
    bench="attnkit_dhsa.bench:run",
    model_prefill="attnkit_dhsa.prefill_params:for_model",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(DHSA)
