"""attnkit plugin for Thought Anchors: Which LLM Reasoning Steps Matter? (Bogdan, Macar, Nanda,
Conmy; arXiv:2506.19143).

A reasoning trace is split into sentences. Token attention is averaged into sentence x
sentence blocks; a head's *vertical score* of sentence ``j`` is the mean attention ``j``
receives from sentences at least ``P`` later, and heads whose vertical scores are
heavy-tailed (high kurtosis) are *receiver heads*: they single out a few "broadcasting"
sentences, the thought anchors. The causal side masks the keys of one sentence in every head
of every layer and measures the KL of later sentences' token distributions to the unedited run.

This module is the entry point: it only declares the spec. torch is imported by the
implementation modules on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, Paper, hookimpl
from attnkit_thought_anchors.params import ThoughtAnchorsParams

__all__ = ["PAPER", "THOUGHT_ANCHORS", "ThoughtAnchorsParams"]

PAPER = Paper(title="Thought Anchors: Which LLM Reasoning Steps Matter?", arxiv="2506.19143")

THOUGHT_ANCHORS = AnalysisSpec(
    name="thought_anchors",
    paper=PAPER,
    description=(
        "Sentence x sentence attention of the model's own reasoning traces, receiver heads (kurtosis of "
        "vertical scores), and all-layer attention suppression of the top receiver-attended sentence: KL on "
        "later sentences against a random span of the same token length."
    ),
    params=ThoughtAnchorsParams,
    factory="attnkit_thought_anchors.runtime:build",
    analyze="attnkit_thought_anchors.analysis:analyze",
    # the pattern feeds the sentence matrices; suppression edits the pre-softmax scores
    sites=("blocks.{l}.attn.hook_pattern@prefill", "blocks.{l}.attn.hook_scores@prefill"),
    default_model="smollm2",
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(THOUGHT_ANCHORS)
