"""Run-time sites, the per-run context, captures and interventions."""

from __future__ import annotations

from attnkit.runtime.capture import Capture
from attnkit.runtime.interventions import ActivationPatch, ExplicitPath, HeadEdit, PatternRedistribute, ScoreEdit
from attnkit.runtime.run import Run, expand_sites, site_name

__all__ = [
    "ActivationPatch",
    "Capture",
    "ExplicitPath",
    "HeadEdit",
    "PatternRedistribute",
    "Run",
    "ScoreEdit",
    "expand_sites",
    "site_name",
]
