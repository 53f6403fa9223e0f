"""End-to-end runs of ``attnkit analyze thinking_sparks`` (slow: training, and SmolLM2)."""

from __future__ import annotations

import json

import pytest

from attnkit.analyze import main


@pytest.mark.slow
def test_quick_tiny_gpt_run_writes_the_report(tmp_path):
    assert main(["thinking_sparks", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "report.html").is_file()
    assert (tmp_path / "importance_per_checkpoint.png").is_file() and (tmp_path / "importance_change.png").is_file()
    ckpts = results["checkpoints"]
    assert [c["step"] for c in ckpts] == [0, 40, 80]
    for c in ckpts:
        assert abs(sum(sum(row) for row in c["importance"]) - 1) < 1e-9
    assert results["summary"]["circuit_size"] == 3
    assert any(c["intervention"].startswith("zero-ablate") for c in results["comparisons"])


@pytest.mark.slow
def test_quick_smollm2_scan(tmp_path):
    assert main(["thinking_sparks", "--model", "smollm2", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["layers_scanned"] == [0, 15, 29]
    assert results["summary"]["heads_scanned"] == 27
    assert len(results["top_heads"]) == 10
    assert (tmp_path / "smollm2_importance.png").is_file()
