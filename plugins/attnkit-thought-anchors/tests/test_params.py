"""Parameter validation, registration, and the light entry point."""

from __future__ import annotations

import subprocess
import sys

import pytest

import attnkit
from attnkit_thought_anchors import THOUGHT_ANCHORS, ThoughtAnchorsParams
from attnkit_thought_anchors.prompts import reasoning_prompts


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"proximity_ignore": 0}, "proximity_ignore"),
        ({"top_k": "3"}, "top_k"),
        ({"kl_temperature": 0.0}, "kl_temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": float("nan")}, "temperature"),
        ({"control_depth": 1}, "control_depth"),
        ({"min_sentences": 4}, "min_sentences"),
        ({"n_controls": 0}, "n_controls"),
        ({"max_new_tokens": 2}, "max_new_tokens"),
    ],
)
def test_bad_values_name_the_parameter_and_the_value(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        ThoughtAnchorsParams(**kwargs)


def test_bool_parameters_take_cli_strings():
    p = ThoughtAnchorsParams(full_matrix="false", control_depth="True")
    assert p.full_matrix is False and p.control_depth is True
    with pytest.raises(TypeError, match="full_matrix"):
        ThoughtAnchorsParams(full_matrix="maybe")


def test_defaults_follow_the_paper():
    p = ThoughtAnchorsParams()
    assert (p.proximity_ignore, p.top_k, p.kl_temperature, p.control_depth) == (4, 20, 0.6, False)


def test_registered_and_found_by_slug():
    attnkit.load_plugins()
    spec = attnkit.get_spec("thought_anchors", "analysis")
    assert spec.name == THOUGHT_ANCHORS.name and spec.default_model == "smollm2"
    from attnkit.analyze import _lookup

    assert _lookup("thought-anchors").name == "thought_anchors"


def test_prompts_are_seeded():
    assert reasoning_prompts(3, seed=1) == reasoning_prompts(3, seed=1)
    assert reasoning_prompts(3, seed=1) != reasoning_prompts(3, seed=2)
    with pytest.raises(ValueError, match="n"):
        reasoning_prompts(0)


def test_entry_point_imports_no_torch():
    code = "import sys, attnkit_thought_anchors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
