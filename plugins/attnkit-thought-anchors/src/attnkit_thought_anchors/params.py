"""Parameters of the ``thought_anchors`` analysis.

Imported by the entry-point module when attnkit loads plugins, so it must not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnkit.paramcheck import as_bool as _as_bool
from attnkit.paramcheck import check_float as _check_float
from attnkit.paramcheck import check_int as _check_int

__all__ = ["ThoughtAnchorsParams"]


@dataclass(frozen=True)
class ThoughtAnchorsParams:
    """Parameters of :data:`attnkit_thought_anchors.THOUGHT_ANCHORS` (the paper's defaults
    where its code has one, library choices otherwise).

    :param proximity_ignore: ``P``: sentence ``j``'s vertical score averages the attention it
        receives from sentences ``i >= j + P`` only (4 in the paper's receiver-head code).
    :param control_depth: replace each row of the sentence matrix by its ranks among the
        row's valid entries before averaging (the paper's ``control_depth``, off by default).
    :param top_k: receiver heads = the ``top_k`` heads of highest mean kurtosis (20 in the
        paper's code).
    :param kl_temperature: temperature applied to both distributions before the KL of the
        suppression effect (0.6 in the paper).
    :param n_prompts: reasoning traces generated (``--quick`` uses 1).
    :param max_new_tokens: tokens generated per trace (``--quick`` uses 64).
    :param temperature: sampling temperature of the traces (0 is greedy).
    :param top_p: nucleus sampling of the traces.
    :param min_sentences: traces with fewer sentences are skipped: a head has ``n - P``
        vertical scores, and a kurtosis of a handful of values says little (``--quick`` keeps
        ``P + 2``).
    :param n_controls: random spans of the anchor's token length suppressed as controls, per
        trace.
    :param full_matrix: also suppress every sentence once to fill the paper's
        ``[n_sent, n_sent]`` suppression matrix (one forward per sentence).
    """

    proximity_ignore: int = 4
    control_depth: bool = False
    top_k: int = 20
    kl_temperature: float = 0.6
    n_prompts: int = 4
    max_new_tokens: int = 224
    temperature: float = 0.6
    top_p: float = 0.95
    min_sentences: int = 10
    n_controls: int = 3
    full_matrix: bool = True

    def __post_init__(self) -> None:
        _check_int("proximity_ignore", self.proximity_ignore, 1)
        object.__setattr__(self, "control_depth", _as_bool("control_depth", self.control_depth))
        _check_int("top_k", self.top_k, 1)
        _check_float("kl_temperature", self.kl_temperature, 0.0, 100.0, open_lo=True)
        _check_int("n_prompts", self.n_prompts, 1)
        _check_int("max_new_tokens", self.max_new_tokens, 8)
        _check_float("temperature", self.temperature, 0.0, 10.0)
        _check_float("top_p", self.top_p, 0.0, 1.0, open_lo=True)
        _check_int("min_sentences", self.min_sentences, 2)
        _check_int("n_controls", self.n_controls, 1)
        object.__setattr__(self, "full_matrix", _as_bool("full_matrix", self.full_matrix))
        if self.min_sentences <= self.proximity_ignore:
            raise ValueError(
                f"min_sentences ({self.min_sentences}) must exceed proximity_ignore ({self.proximity_ignore}): "
                "a shorter trace has no sentence pair far enough apart for a vertical score"
            )
