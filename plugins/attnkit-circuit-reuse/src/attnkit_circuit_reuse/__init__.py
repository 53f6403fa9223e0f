"""attnkit plugin for "Circuit Component Reuse Across Transformer Language Models"
(Merullo, Eickhoff, Pavlick, ICLR 2024, arXiv:2310.08744).

Path patching (sender head -> receiver heads through the residual stream) and per-head
activation patching at the final position on two tasks, IOI-style and Colored-Objects-style
prompts; the overlap of the two circuits against chance; and the paper's kind of
intervention (scale the reused heads' outputs) against random heads of the same number.

This module is the entry point: it only declares the spec. torch is imported by the
implementation modules on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, Paper, hookimpl
from attnkit_circuit_reuse.params import CircuitReuseParams

__all__ = ["CIRCUIT_REUSE", "PAPER", "CircuitReuseParams"]

PAPER = Paper(
    title="Circuit Component Reuse Across Transformer Language Models",
    arxiv="2310.08744",
)

CIRCUIT_REUSE = AnalysisSpec(
    name="circuit_reuse",
    paper=PAPER,
    description=(
        "Path patching and per-head activation patching at [END] on IOI and Colored Objects, "
        "the circuits' head overlap against chance, and boosting / suppressing the reused heads "
        "against random heads."
    ),
    params=CircuitReuseParams,
    factory="attnkit_circuit_reuse.patching:build",
    analyze="attnkit_circuit_reuse.analysis:analyze",
    sites=(
        "blocks.{l}.attn.hook_z",
        "blocks.{l}.attn.hook_q",
        "blocks.{l}.attn.hook_k",
        "blocks.{l}.attn.hook_v",
    ),
    default_model="smollm2",
    models=("smollm2",),
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(CIRCUIT_REUSE)
