"""``attnkit analyze preplan_anchor --quick`` on SmolLM2 (slow: loads the embedded model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_quick_analyze_on_smollm2(tmp_path: Path) -> None:
    from attnkit.cli import main

    assert main(["analyze", "preplan-anchor", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    cw = json.loads((tmp_path / "credit_weights.json").read_text())
    w = torch.load(tmp_path / "credit_weights.pt")
    assert w.shape[0] == len(cw["samples"]) == 2 and w.shape[1] == 3
    for i, s in enumerate(cw["samples"]):
        n = len(s["answer_tokens"])
        assert len(s["gamma_coupled"]) == len(s["waad"]) == n
        assert torch.allclose(w[i, 2, :n].double(), torch.tensor(s["gamma_coupled"], dtype=torch.float64))
        assert set(s["anchor_tokens"]) == {t for t, g in enumerate(s["gamma_global"]) if g > 1}
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["summary"]["mean span global heads"] > res["summary"]["mean span local heads"]
    for name in ("waad_sawtooth.png", "fai_along_generation.png", "head_span.png"):
        assert (tmp_path / name).stat().st_size > 0
