"""attnkit plugin for the preplan-and-anchor rhythm of reasoning.

Paper: "Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables
Fine-Grained Policy Optimization" (Li et al., arXiv:2510.13554, v2). Locally focused heads
show a sawtooth near the diagonal (Windowed Average Attention Distance, WAAD): its breaks mark
*preplan* tokens that open a new chunk. Globally focused heads single out *anchor* tokens that
many later tokens attend to (Future Attention Influence, FAI). The paper turns both into
per-token credit weights for RL.

This module is the entry point: it only declares the spec. torch is imported by the
implementation modules on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, Paper, hookimpl
from attnkit_preplan_anchor.params import PreplanAnchorParams

__all__ = ["PAPER", "PREPLAN_ANCHOR", "PreplanAnchorParams"]

PAPER = Paper(
    title="Attention Illuminates LLM Reasoning: The Preplan-and-Anchor Rhythm Enables Fine-Grained Policy Optimization",
    arxiv="2510.13554",
)

PREPLAN_ANCHOR = AnalysisSpec(
    name="preplan_anchor",
    paper=PAPER,
    description=(
        "WAAD and FAI per token on the model's own generations, local/global heads, preplan and "
        "anchor tokens, and per-token RL credit weights (credit_weights.json / .pt)."
    ),
    params=PreplanAnchorParams,
    factory="attnkit_preplan_anchor.runtime:build",
    analyze="attnkit_preplan_anchor.analysis:analyze",
    sites=("blocks.{l}.attn.hook_pattern@prefill",),
    default_model="smollm2",
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(PREPLAN_ANCHOR)
