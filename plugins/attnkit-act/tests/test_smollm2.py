"""The default-model run (slow: loads SmolLM2-135M-Instruct)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_analyze_writes_the_report(tmp_path):
    from attnkit.analyze import main

    out = tmp_path / "act"
    assert main(["act", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert (out / "report.html").is_file()
    res = json.loads((out / "results.json").read_text())
    s = res["summary"]
    for key in ("held-out accuracy unedited", "held-out accuracy ACT (searched heads)", "searched heads kept"):
        assert key in s
    assert 0.0 <= s["held-out accuracy unedited"] <= 1.0
    # SmolLM2 has hidden sinks beyond the first token in some head
    assert s["hidden sinks per head and sequence (abs rule)"] > 0
    assert len(res["comparisons"]) >= 2
    for name in ("hidden_sinks.png", "example_map.png", "head_search.png", "heldout_accuracy.png"):
        assert (out / name).stat().st_size < 250_000
