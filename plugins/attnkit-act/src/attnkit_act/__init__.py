"""attnkit plugin for ACT, "Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large
Language Models without Training through Attention Calibration" (Yu et al., ICML 2024,
arXiv:2406.15765).

Attention sinks are keys that receive far more attention than their content warrants: the
first token, and (the paper's finding) *hidden* sinks later in the input. ACT finds them per
head from the causal column mean of the post-softmax map, multiplies the attention they get
by ``beta`` and hands the rest to the other keys in proportion, only in heads a search on a
calibration set found to benefit.

This module is the entry point: it only declares the spec. torch is imported by
:mod:`attnkit_act.sinks`, :mod:`attnkit_act.runtime` and :mod:`attnkit_act.analysis` on first
use, so listing plugins stays fast and a broken dependency cannot break it.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, Paper, hookimpl
from attnkit_act.params import ActParams

__all__ = ["ACT", "PAPER", "ActParams"]

PAPER = Paper(
    title="Unveiling and Harnessing Hidden Attention Sinks: Enhancing Large Language Models without Training "
    "through Attention Calibration",
    arxiv="2406.15765",
)

ACT = AnalysisSpec(
    name="act",
    paper=PAPER,
    description=(
        "Hidden attention sinks per layer and head (absolute THRES and alpha/N rules), and ACT's attention "
        "calibration on heads searched on a calibration split, with held-out accuracy beside random heads."
    ),
    params=ActParams,
    factory="attnkit_act.runtime:build",
    analyze="attnkit_act.analysis:analyze",
    sites=("blocks.{l}.attn.hook_pattern@prefill",),
    default_model="smollm2",
    models=("smollm2",),
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(ACT)
