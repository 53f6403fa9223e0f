"""attnkit plugin for SinkLoRA's SF-Attn and the H2O KV-cache policy.

Paper: "SinkLoRA: Enhanced Efficiency and Chat Capabilities for Long-Context Large Language
Models" (Hengyu Zhang; arXiv:2406.05678). SF-Attn's code is unpublished; this plugin
implements the [inferred] definition (fixed groups of ``G`` tokens plus ``n_sink`` global sink
keys, causal), and LongLoRA's S²-Attn shifted variant as an option, see the README.

The H2O policy ("H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large
Language Models", arXiv:2306.14048), which SinkLoRA uses at inference, is registered as the
``h2o`` KV-cache spec.

This module is the entry point: it only declares specs. torch, numba and triton are imported
by the backend modules on first use.
"""

from __future__ import annotations

from attnkit import AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_sinklora.params import SFAttnParams

__all__ = ["H2O_PAPER", "PAPER", "SF_ATTN", "SFAttnParams"]

PAPER = Paper(
    title="SinkLoRA: Enhanced Efficiency and Chat Capabilities for Long-Context Large Language Models",
    arxiv="2406.05678",
)
H2O_PAPER = Paper(
    title="H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language Models",
    arxiv="2306.14048",
)

SF_ATTN = AttentionSpec(
    name="sf_attn",
    paper=PAPER,
    description="Causal attention inside fixed groups of G tokens plus n_sink global sink keys (S2 shift optional).",
    params=SFAttnParams,
    backends=standard_backends(
        "attnkit_sinklora",
        "sf_attention",
        numba="blockwise numba CPU forward (each group: own keys + sink block); "
        "backward recomputes the blockwise torch form",
        triton={
            "differentiable": False,
            "description": "Triton forward kernel (CUDA; CPU under TRITON_INTERPRET=1 for tests)",
        },
        reference="plain torch, blockwise (group reshape + sink concat); float32/float64 math",
        flex="torch.compile(flex_attention) with a head-dependent mask_mod (inference on CPU)",
        onnx="export-friendly formulation (mask from index arithmetic on the symbolic length)",
    ),
    validate="attnkit_sinklora.params:validate",
    mask="attnkit_sinklora.masks:brute_force_mask",
    contract_params="attnkit_sinklora.params:contract_params",
    bench="attnkit_sinklora.bench:run",
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(SF_ATTN)


@hookimpl
def attnkit_register_caches(register):  # type: ignore[no-untyped-def]
    from attnkit.registry import KVCacheSpec
    from attnkit_sinklora.h2o_params import H2OParams

    register(
        KVCacheSpec(
            name="h2o",
            description="Keep the newest tokens plus the heavy hitters by accumulated attention, within a token budget.",
            params=H2OParams,
            factory="attnkit_sinklora.h2o:build",
            paper=H2O_PAPER,
        )
    )
