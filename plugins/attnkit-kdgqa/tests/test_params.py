"""Bad parameters raise errors naming the parameter and the sizes seen; the entry point stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import attnkit
from attnkit.modules import ModuleConfig, build_module


@pytest.mark.parametrize(
    ("spec", "kwargs", "exc", "match"),
    [
        ("kdgqa", {"norm_scope": "global"}, ValueError, "norm_scope"),
        ("kdgqa", {"norm_scope": 1}, TypeError, "norm_scope"),
        ("kdgqa", {"min_queries": -1}, ValueError, "min_queries must be >= 0, got -1"),
        ("kdgqa", {"min_queries": True}, TypeError, "min_queries"),
        ("kdgqa", {"kv_heads": 0}, ValueError, "kv_heads must be >= 1"),
        ("dgqa", {"form": "sum"}, ValueError, "form"),
        ("dgqa", {"beta": 1.5}, ValueError, "beta must be in"),
        ("dgqa", {"beta": "0.9"}, TypeError, "beta"),
        ("dgqa", {"window": 0}, ValueError, "window must be >= 1, got 0"),
        ("dgqa", {"window": 2.0}, TypeError, "window"),
        ("pgqa", {"kv_heads": -2}, ValueError, "kv_heads"),
        ("pgqa", {"noise": 1}, TypeError, "unknown parameter"),
    ],
)
def test_bad_params(spec, kwargs, exc, match):  # type: ignore[no-untyped-def]
    with pytest.raises(exc, match=match):
        attnkit.get_spec(spec).make_params(**kwargs)


@pytest.mark.parametrize(
    ("spec", "config", "kwargs", "match"),
    [
        ("kdgqa", ModuleConfig(dim=16, heads=4, kv_heads=4), {}, r"heads=4, kv_heads=4"),
        ("dgqa", ModuleConfig(dim=16, heads=4, kv_heads=2), {"kv_heads": 1}, r"kv_heads=1 disagrees .*kv_heads=2"),
        ("kdgqa", ModuleConfig(dim=16, heads=4, kv_heads=2), {"min_queries": 3}, r"min_queries=3 .*heads=4; at most 2"),
        ("pgqa", ModuleConfig(dim=16, heads=4, kv_heads=4), {}, r"heads=4, kv_heads=4"),
    ],
)
def test_params_against_config(spec, config, kwargs, match):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        build_module(spec, config, **kwargs)


def test_bad_input_shape():
    import torch

    m = build_module("kdgqa", ModuleConfig(dim=16, heads=4, kv_heads=2))
    with pytest.raises(ValueError, match=r"E=16\), got \(2, 3, 8\)"):
        m(torch.zeros(2, 3, 8))


def test_entry_point_imports_no_torch():
    code = "import sys, attnkit_kdgqa; bad = [m for m in ('torch', 'numba', 'triton') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_specs_registered():
    names = {s.name for s in attnkit.list_specs("module")}
    assert {"kdgqa", "dgqa", "pgqa"} <= names
