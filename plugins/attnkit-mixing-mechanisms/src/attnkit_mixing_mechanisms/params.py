"""Parameters of the ``mixing_mechanisms`` analysis. Imports no torch: the entry point imports
this module when attnkit loads plugins."""

from __future__ import annotations

from dataclasses import dataclass, field

from attnkit.paramcheck import check_int as _check_int

__all__ = ["SITE_CHOICES", "MixingMechanismsParams"]

#: What is patched: the residual stream entering block ``layer`` or that block's per-head
#: attention outputs (all heads, before ``o_proj``).
SITE_CHOICES = ("resid_pre", "z")


def _layers(name: str, value: object) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            value = tuple(int(x) for x in value.replace(" ", "").split(",") if x)
        except ValueError:
            raise ValueError(f"{name} must be comma-separated layer indices, got {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of layer indices, got {type(value).__name__} {value!r}")
    for x in value:
        _check_int(f"{name}[i]", x, 0)
    return tuple(sorted({int(x) for x in value}))


@dataclass(frozen=True)
class MixingMechanismsParams:
    """Parameters of the ``mixing_mechanisms`` analysis (defaults: measured on SmolLM2-135M-
    Instruct, see the plugin README).

    :param n_groups: entity groups per prompt (>= 4: the positional, lexical, reflexive and
        no-effect targets are four distinct groups).
    :param n_pairs: base / counterfactual pairs at ``layer`` (``--quick``: 16).
    :param layer: block whose input (``site="resid_pre"``) or attention output (``"z"``) is
        patched at the last token.
    :param sweep_layers: blocks of the layer sweep, run on the first ``sweep_pairs`` pairs
        (empty: no sweep).
    :param sweep_pairs: pairs of the layer sweep (``--quick``: 8).
    :param site: ``"resid_pre"`` (the paper's) or ``"z"``.
    :param only_correct: fit the mixing model (and report shares) on the pairs whose base and
        counterfactual the unedited model answers correctly, as the paper does; shares over all
        pairs are reported too.
    :param batch_size: prompts per forward pass.
    """

    n_groups: int = field(default=4, metadata={"min": 4})
    n_pairs: int = 128
    layer: int = field(default=20, metadata={"min": 0})
    sweep_layers: tuple[int, ...] = (16, 18, 19, 20, 21, 22, 24)
    sweep_pairs: int = 32
    site: str = field(default="resid_pre", metadata={"contract_invalid": ["resid_post", ""]})
    only_correct: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        from attnkit_mixing_mechanisms.prompts import max_groups

        _check_int("n_groups", self.n_groups, 4)
        if self.n_groups > max_groups():
            raise ValueError(f"n_groups must be <= {max_groups()} (the entity pools' size), got {self.n_groups}")
        _check_int("n_pairs", self.n_pairs, 1)
        _check_int("layer", self.layer, 0)
        object.__setattr__(self, "sweep_layers", _layers("sweep_layers", self.sweep_layers))
        _check_int("sweep_pairs", self.sweep_pairs, 1)
        if self.site not in SITE_CHOICES:
            raise ValueError(f"site must be one of {SITE_CHOICES}, got {self.site!r}")
        if not isinstance(self.only_correct, bool):
            raise TypeError(
                f"only_correct must be a bool, got {type(self.only_correct).__name__} {self.only_correct!r}"
            )
        _check_int("batch_size", self.batch_size, 1)
