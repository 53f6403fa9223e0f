"""Parameter validation names the argument and the value."""

from __future__ import annotations

import pytest

from attnkit_mixing_mechanisms import MIXING_MECHANISMS, MixingMechanismsParams


def test_defaults_and_parsing() -> None:
    p = MixingMechanismsParams(sweep_layers="20, 8,8")  # type: ignore[arg-type]
    assert p.sweep_layers == (8, 20)
    assert MIXING_MECHANISMS.make_params().n_groups == 4


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"n_groups": 3}, ValueError, "n_groups"),
        ({"n_groups": 99}, ValueError, "n_groups"),
        ({"n_pairs": 0}, ValueError, "n_pairs"),
        ({"layer": -1}, ValueError, "layer"),
        ({"layer": 1.5}, TypeError, "layer"),
        ({"sweep_layers": (3, -2)}, ValueError, "sweep_layers"),
        ({"sweep_layers": "a,b"}, ValueError, "sweep_layers"),
        ({"site": "resid_post"}, ValueError, "site"),
        ({"only_correct": 1}, TypeError, "only_correct"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_bad_values_raise_naming_the_argument(kwargs: dict, exc: type, name: str) -> None:
    with pytest.raises(exc, match=name):
        MixingMechanismsParams(**kwargs)
