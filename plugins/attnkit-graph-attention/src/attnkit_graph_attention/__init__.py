"""attnkit plugin for "Attention Mechanisms Perspective: Exploring LLM Processing of
Graph-Structured Data" (Guan et al., ICML 2025, arXiv:2505.02130).

Two specs:

* ``graph_khop`` (attention): node tokens attend only to node tokens within ``k`` hops of the
  serialised graph (``(I + A + A^T)^k > 0``), text tokens keep ordinary (causal) attention,
  optionally bidirectional among node tokens: the paper's "Global Linkage Horizon" window.
  Backends: a float64 plain-torch reference, FlexAttention (``mask_mod``) and an ONNX-traceable
  form. Use it in a model with ``attnkit.patch(model, "graph_khop", attention_params={...})``.
* ``graph_attention`` (analysis): graphs written as text, attention by hop distance (node ->
  1-hop neighbours vs non-neighbours vs random tokens, per layer; question -> node by hop from
  the asked node, as column averages over valid causal rows), with shuffled serialisations and
  a distance-matched ratio against position bias; and zero-shot graph questions answered by
  SmolLM2 with full causal attention vs ``graph_khop`` at ``k = 1, 2``, beside a control.

This module is the entry point: it only declares the specs. torch is imported by the backend
and analysis modules on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, AttentionSpec, Paper, hookimpl
from attnkit.kernels import standard_backends
from attnkit_graph_attention.params import GraphAttentionParams, GraphKhopParams

__all__ = ["GRAPH_ATTENTION", "GRAPH_KHOP", "PAPER", "GraphAttentionParams", "GraphKhopParams"]

PAPER = Paper(
    title="Attention Mechanisms Perspective: Exploring LLM Processing of Graph-Structured Data",
    arxiv="2505.02130",
)

GRAPH_KHOP = AttentionSpec(
    name="graph_khop",
    paper=PAPER,
    description="Node tokens attend only within k hops of the serialised graph ((I+A+A^T)^k > 0); "
    "text tokens causal; optional bidirectional node-node pairs.",
    params=GraphKhopParams,
    backends=standard_backends(
        "attnkit_graph_attention",
        "graph_khop_attention",
        reference={
            "supports_mask": True,
            "description": "plain torch: dense attention under the k-hop mask, float32/float64, differentiable",
        },
        flex="torch.compile(flex_attention) with the k-hop mask_mod (node / reach-table lookups); inference on CPU",
        onnx="dense attention under the k-hop mask from index arithmetic on the symbolic length",
    ),
    validate="attnkit_graph_attention.params:validate",
    mask="attnkit_graph_attention.masks:brute_force_mask",
    contract_params="attnkit_graph_attention.params:contract_params",
)

GRAPH_ATTENTION = AnalysisSpec(
    name="graph_attention",
    paper=PAPER,
    description="Graphs as text: attention to 1-hop neighbours vs non-neighbours vs random tokens per layer "
    "(shuffled, distance-matched), question->node by hop, and zero-shot graph QA with full vs graph_khop attention.",
    params=GraphAttentionParams,
    factory="attnkit_graph_attention.runtime:build",
    analyze="attnkit_graph_attention.analysis:analyze",
    sites=("blocks.{l}.attn.hook_pattern@prefill",),
    default_model="smollm2",
    models=("smollm2",),
)


@hookimpl
def attnkit_register_attention(register):  # type: ignore[no-untyped-def]
    register(GRAPH_KHOP)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(GRAPH_ATTENTION)
