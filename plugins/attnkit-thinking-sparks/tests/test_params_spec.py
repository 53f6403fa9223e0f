"""Parameter validation and registration of the spec."""

from __future__ import annotations

import pytest

import attnkit
from attnkit_thinking_sparks import THINKING_SPARKS, ThinkingSparksParams
from attnkit_thinking_sparks.analysis import QUICK, quick_params


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_layers": 0}, "n_layers"),
        ({"d_model": 30}, "d_model"),
        ({"n_heads": 3.0}, "n_heads"),
        ({"sft_steps": 2, "n_checkpoints": 3}, "n_checkpoints"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"top_k": -1}, "top_k"),
        ({"digits": 5}, "digits"),
        ({"n_eval": 1}, "n_eval"),
        ({"smol_shots": 9}, "smol_shots"),
    ],
)
def test_bad_values_name_the_parameter_and_value(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        ThinkingSparksParams(**kwargs)


def test_circuit_size_and_quick():
    assert ThinkingSparksParams().circuit_size(12) == 3
    assert ThinkingSparksParams(top_k=5).circuit_size(12) == 5
    q = quick_params(ThinkingSparksParams())
    assert all(getattr(q, k) == v for k, v in QUICK.items())
    assert quick_params(ThinkingSparksParams(n_eval=10)).n_eval == 10


def test_registered_with_models_and_sites():
    attnkit.load_plugins()
    spec = attnkit.get_spec("thinking_sparks", "analysis")
    assert spec.name == THINKING_SPARKS.name
    assert spec.default_model == "tiny-gpt" and spec.models == ("tiny-gpt", "smollm2")
    assert spec.sites == ("blocks.{l}.attn.hook_z",)


def test_entry_point_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, attnkit_thinking_sparks; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
