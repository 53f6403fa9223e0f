"""attnkit plugin for "Mixing Mechanisms: How Language Models Retrieve Bound Entities
In-Context" (Gur-Arieh, Geva, Geiger, arXiv:2510.06182).

Language models retrieve the entity bound to a queried one (``Tom - pears ... Tom -`` ->
``pears``) with three mechanisms mixed: *positional* (a pointer to the group's index),
*lexical* (retrieval through the query entity) and *reflexive* (a pointer to the answer token
itself). Interchange interventions from counterfactuals built so that the three point to
different groups separate them; a mixing model of the three, fitted per position of the queried
entity, reproduces the patched answer distributions.

This module is the entry point: it only declares the spec. torch and transformers are imported
by the implementation modules on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, Paper, hookimpl
from attnkit_mixing_mechanisms.params import MixingMechanismsParams

__all__ = ["MIXING_MECHANISMS", "PAPER", "MixingMechanismsParams"]

PAPER = Paper(
    title="Mixing Mechanisms: How Language Models Retrieve Bound Entities In-Context",
    arxiv="2510.06182",
)

MIXING_MECHANISMS = AnalysisSpec(
    name="mixing_mechanisms",
    paper=PAPER,
    description=(
        "Entity-binding retrieval: unedited accuracy per position, last-token interchange interventions that "
        "separate positional / lexical / reflexive retrieval (beside a random-token control), a layer sweep, and "
        "the mixing model's weights per position of the queried entity."
    ),
    params=MixingMechanismsParams,
    analyze="attnkit_mixing_mechanisms.analysis:analyze",
    sites=("blocks.{l}.hook_resid_pre@prefill", "blocks.{l}.attn.hook_z@prefill"),
    default_model="smollm2",
    models=("smollm2",),
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(MIXING_MECHANISMS)
