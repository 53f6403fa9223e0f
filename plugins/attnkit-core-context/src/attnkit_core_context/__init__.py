"""attnkit plugin for Core Context Aware Attention for Long Context Language Modeling
(CCA-Attention, arXiv:2412.12465).

Globality-pooling attention (every complete group of ``g`` tokens is merged into one core
token, weighted by the group's last query) and locality-preserved attention (a causal window
of ``s`` to ``s + g - 1`` raw tokens), fused by one softmax over both key sets: about
``L/g + s`` keys per query instead of ``L`` (:mod:`attnkit_core_context.pooling`).

This module is the entry point: it only declares the spec. torch, numba and triton are
imported by the backend modules on first use, so listing plugins stays fast and a broken
backend cannot break it.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_core_context.params import CoreContextParams

__all__ = ["CORE_CONTEXT", "PAPER", "CoreContextParams"]

PAPER = Paper(
    title="Core Context Aware Attention for Long Context Language Modeling",
    arxiv="2412.12465",
)

CORE_CONTEXT = AttentionSpec(
    name="core_context",
    paper=PAPER,
    description="CCA-Attention: each query sees the importance-pooled core token of every complete "
    "group of g tokens before its local window plus the window's s..s+g-1 raw tokens, in one softmax "
    "(always causal).",
    params=CoreContextParams,
    backends=standard_backends(
        "attnkit_core_context",
        "core_context_attention",
        numba="core tokens pooled in torch, then a numba CPU kernel per tile of 64 query rows (BLAS logits "
        "and values over the tile's core tokens and local band, softmax per row); backward recomputes the reference",
        triton="core tokens pooled in torch, then a Triton forward over each query block's core tokens "
        "and local window (CUDA; CPU under TRITON_INTERPRET=1); backward recomputes the reference",
        flex="core tokens pooled in torch, then torch.compile(flex_attention) over [core tokens ; tokens] "
        "with the fused visibility rule as a mask_mod (inference on CPU)",
        reference={
            "traceable": True,
            "description": "plain torch: one softmax over [core tokens ; tokens] under the fused mask, "
            "float32/float64; the ONNX export path",
        },
    ),
    # No brute-force ``mask``: the spec's mask hook is over the raw keys, and CCA attends to
    # pooled core tokens that are new tensors. The contract's oracle is the float64
    # reference; the plugin's tests hold it to the mechanism written out with Python loops.
    validate="attnkit_core_context.params:validate",
    contract_params="attnkit_core_context.params:contract_params",
    bench="attnkit_core_context.bench:run",
    model_prefill="attnkit_core_context.prefill_params:for_model",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(CORE_CONTEXT)
