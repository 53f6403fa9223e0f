"""The analysis end to end on SmolLM2-135M (slow: loads the embedded model)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_quick_analyze_writes_the_report(tmp_path):
    from attnkit.analyze import main

    assert main(["circuit_reuse", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    summary = results["summary"]
    # SmolLM2 solves IOI well above chance on the held-out pairs
    assert summary["ioi_accuracy_unedited"] > 0.75
    assert summary["ioi_ld_clean"] > summary["ioi_ld_corrupt"]
    for name in ("patching_heatmaps.png", "circuit_overlap.png", "interventions.png", "report.html"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(results["comparisons"]) == 8
    ioi = results["circuits"]["ioi"]
    assert len(ioi["stage1_to_logits"]) >= 1 and len(ioi["activation_patching"]) == 30
