"""Parameters of the ``circuit_reuse`` analysis. Imported by the entry-point module, so it
must not import torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from attnkit.paramcheck import check_float as _check_float
from attnkit.paramcheck import check_int as _check_int

__all__ = ["CircuitReuseParams"]


@dataclass(frozen=True)
class CircuitReuseParams:
    """Parameters of :data:`attnkit_circuit_reuse.CIRCUIT_REUSE` (the paper's values where it
    gives them, library choices otherwise).

    :param n_prompts: clean / corrupted pairs per task the circuits are found on
        (``--quick``: 4).
    :param n_eval: held-out pairs per task (another seed) for accuracy and the interventions
        (``--quick``: 8).
    :param top_frac: share of heads kept per path-patching stage (paper: top 2%); at least
        one head.
    :param n_candidates: senders of the second stage (heads -> the first stage's queries),
        the heads with the largest activation-patching effect, screened because each costs
        two forward passes per prompt.
    :param receiver_inputs: which inputs of the receiver heads the second stage patches,
        letters of ``"qkv"`` (paper's IOI stage: the name movers' queries).
    :param boost: factor on the reused heads' ``hook_z`` at [END] for the boost intervention.
    :param suppress: factor for the suppress intervention (0 ablates them).
    :param n_random: random head sets of the same size the interventions are compared with.
    :param max_rows: rows per batched decode step (memory vs speed).
    :param first_layer: senders start at this layer (``--quick``: two thirds of the depth).
    """

    n_prompts: int = 16
    n_eval: int = 48
    top_frac: float = 0.02
    n_candidates: int = 27
    receiver_inputs: str = "q"
    boost: float = 2.0
    suppress: float = 0.0
    n_random: int = 5
    max_rows: int = 384
    first_layer: int = field(default=0, metadata={"contract_invalid": [-1, "x"]})

    def __post_init__(self) -> None:
        _check_int("n_prompts", self.n_prompts, 1)
        _check_int("n_eval", self.n_eval, 1)
        _check_float("top_frac", self.top_frac, 0.0, 1.0, open_lo=True)
        _check_int("n_candidates", self.n_candidates, 1)
        if (
            not isinstance(self.receiver_inputs, str)
            or not self.receiver_inputs
            or any(c not in "qkv" for c in self.receiver_inputs)
        ):
            raise ValueError(
                f"receiver_inputs must be letters of 'qkv' (e.g. 'q', 'qkv'), got {self.receiver_inputs!r}"
            )
        _check_float("boost", self.boost, 0.0, 100.0)
        _check_float("suppress", self.suppress, 0.0, 100.0)
        _check_int("n_random", self.n_random, 1)
        _check_int("max_rows", self.max_rows, 1)
        _check_int("first_layer", self.first_layer, 0)
