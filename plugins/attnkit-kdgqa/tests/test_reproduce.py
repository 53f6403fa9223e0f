"""A shortened run of examples/reproduce.py: every variant must have learned the task."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
# A reproduction (training runs): the slow tier.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "reproduce.py"


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("kdgqa_reproduce", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_reproduction(tmp_path):  # type: ignore[no-untyped-def]
    repro = _load()
    variants = ["GQA (mean-pooled)", "KDGQA", "DGQA (ema)", "PGQA"]
    args = ["--seeds", "0", "--steps", "150", "--uptrain-steps", "60", "--uptrain-lr", "3e-3", "--out", str(tmp_path)]
    results = repro.main([*args, "--variants", *variants])
    summary = {s["variant"]: s for s in results["summary"]}
    assert set(summary) == {"MHA (pre-trained)", *variants}
    for name, s in summary.items():
        # Chance is 0.1 on ten digits.
        assert s["accuracy_mean"] >= 0.5, (name, s["accuracy_mean"])
    # Attention-core FLOPs: 4 layers * 4 * H * T^2 * D with T = 17 tokens, the same for every variant.
    assert summary["KDGQA"]["attention_flops_per_image"] == 4 * 4 * 8 * 17 * 17 * 8
    assert summary["GQA (mean-pooled)"]["kv_projection_params"] == 4 * 2 * (64 * 16 + 16)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"] == results["summary"]
    assert "| KDGQA |" in (tmp_path / "results.md").read_text()
