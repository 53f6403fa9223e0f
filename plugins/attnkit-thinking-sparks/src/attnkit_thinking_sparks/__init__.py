"""attnkit plugin for "Thinking Sparks!: Emergent Attention Heads in Reasoning Models"
(Park, Jeong, Kang, arXiv:2509.25758).

The paper finds attention heads that become important for reasoning only after
post-training (SFT / distillation / RL): it scores every head on the base model and on
post-trained checkpoints and compares the head sets. This plugin does that on a tiny GPT it
trains itself (pretraining on Python's documentation, then SFT on written-out addition), with
zero-ablation importance per head per checkpoint, and runs the same scan on SmolLM2-135M.

This module is the entry point: it only declares the spec. torch is imported by
:mod:`attnkit_thinking_sparks.analysis` on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, Paper, hookimpl
from attnkit_thinking_sparks.params import ThinkingSparksParams

__all__ = ["PAPER", "THINKING_SPARKS", "ThinkingSparksParams"]

PAPER = Paper(
    title="Thinking Sparks!: Emergent Attention Heads in Reasoning Models",
    arxiv="2509.25758",
)

THINKING_SPARKS = AnalysisSpec(
    name="thinking_sparks",
    paper=PAPER,
    description=(
        "Head importance across checkpoints: zero-ablation importance of every head (hook_z) of a tiny GPT "
        "before and after post-training on written-out addition, the emergent heads and their ablation against "
        "random heads; the same importance scan on SmolLM2 (--model smollm2)."
    ),
    params=ThinkingSparksParams,
    analyze="attnkit_thinking_sparks.analysis:analyze",
    sites=("blocks.{l}.attn.hook_z",),
    default_model="tiny-gpt",
    models=("tiny-gpt", "smollm2"),
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(THINKING_SPARKS)
