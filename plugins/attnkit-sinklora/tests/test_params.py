"""Parameter validation: bad values raise ValueError/TypeError naming the parameter and the
sizes seen; contract parameter sets are valid at the lengths they are asked for."""

from __future__ import annotations

import pytest
import torch
from _sinklora_oracle import inputs

from attnkit_sinklora import SF_ATTN
from attnkit_sinklora.params import SFAttnParams, contract_params


@pytest.mark.parametrize(
    ("kw", "exc", "pattern"),
    [
        ({"group_size": 0}, ValueError, r"group_size must be >= 1, got 0"),
        ({"group_size": -3}, ValueError, r"group_size"),
        ({"group_size": 2.5}, TypeError, r"group_size must be an int"),
        ({"group_size": True}, TypeError, r"group_size"),
        ({"group_size_ratio": 0.0}, ValueError, r"group_size_ratio must be in \(0, 1\], got 0.0"),
        ({"group_size_ratio": 1.5}, ValueError, r"group_size_ratio"),
        ({"group_size_ratio": float("nan")}, ValueError, r"group_size_ratio"),
        ({"group_size_ratio": "x"}, TypeError, r"group_size_ratio"),
        ({"n_sink": -1}, ValueError, r"n_sink must be >= 0, got -1"),
        ({"n_sink": 1.0}, TypeError, r"n_sink"),
        ({"shifted": 1}, TypeError, r"shifted must be a bool"),
    ],
)
def test_bad_parameter_values(kw: dict, exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        SFAttnParams(**kw)


def test_group_larger_than_sequence_names_both_sizes() -> None:
    q, k, v = inputs((1, 2, 10, 8), 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"group_size=11 exceeds the sequence length T=10 of q \(1, 2, 10, 8\)"):
        SF_ATTN(q, k, v, group_size=11)


def test_cross_attention_lengths_are_refused() -> None:
    q, _, _ = inputs((1, 2, 10, 8), 2, dtype=torch.float32)
    _, k, v = inputs((1, 2, 12, 8), 2, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"q has 10 tokens but k has 12"):
        SF_ATTN(q, k, v)


def test_unknown_parameter_lists_the_known_ones() -> None:
    q, k, v = inputs((1, 2, 10, 8), 2, dtype=torch.float32)
    with pytest.raises(TypeError, match=r"window.*group_size, group_size_ratio, n_sink, shifted"):
        SF_ATTN(q, k, v, window=3)


@pytest.mark.parametrize("t", [1, 2, 9, 13, 64])
def test_contract_params_are_valid_at_their_length(t: int) -> None:
    q, k, v = inputs((1, 2, t, 4), 2)
    for kw in contract_params(t):
        out = SF_ATTN(q, k, v, backend="reference", **kw)
        assert out.shape == q.shape


def test_entry_point_module_imports_no_torch_numba_or_triton() -> None:
    import subprocess
    import sys

    code = (
        "import sys, attnkit_sinklora, attnkit_sinklora.params; "
        "print(sorted(m for m in ('torch', 'numba', 'triton') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_specs_are_registered_through_the_entry_point() -> None:
    import attnkit
    from attnkit.registry import resolve

    sf = attnkit.get_spec("sf_attn", "attention")
    assert sf.plugin == "attnkit-sinklora" and sf.backends == SF_ATTN.backends
    h2o = attnkit.get_spec("h2o", "cache")
    assert h2o.plugin == "attnkit-sinklora"
    policy = resolve(h2o.factory)(h2o.make_params(budget=8))
    assert type(policy).__name__ == "H2OPolicy"
