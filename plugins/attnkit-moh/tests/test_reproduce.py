"""A shortened run of examples/reproduce.py: MoH at 50% of heads learns the digits task."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
# A reproduction (training runs): the slow tier.
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "reproduce.py"


def _load_script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("moh_reproduce", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_reproduction_learns_with_half_the_heads(tmp_path):
    script = _load_script()
    from attnkit.models import digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two contending ones
    try:
        run = script.run_one("MoH 50%", 0.5, seed=0, steps=120, data=digits(seed=0))
    finally:
        torch.set_num_threads(threads)
    assert run["active_heads"] == 4
    # Chance is 0.1 on ten balanced classes.
    assert run["test_accuracy"] >= 0.5, run
    usage = run["head_usage"]
    assert len(usage) == 4, "one routed-head usage vector per MoH layer"
    for layer in usage:
        assert sum(layer) == pytest.approx(2.0), "each token picks top-2 routed heads"
        assert sum(u > 0.01 for u in layer) >= 3, f"routing collapsed onto the top-k heads: {layer}"
    # The FLOPs column: 4 layers * 4 * active heads * T^2 * D with T = 17, D = 8.
    assert run["attention_flops_per_image"] == 4 * 4 * 4 * 17 * 17 * 8


def test_script_writes_table_and_json(tmp_path):
    script = _load_script()
    threads = torch.get_num_threads()
    try:
        assert (
            script.main(
                ["--seeds", "0", "--steps", "2", "--variants", "MHA,MoH 90%", "--threads", "1", "--out", str(tmp_path)]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    table = (tmp_path / "results.md").read_text()
    assert "| MHA | 8/8 |" in table and "| MoH 90% | 7/8 |" in table
    import json

    payload = json.loads((tmp_path / "results.json").read_text())
    assert [r["variant"] for r in payload["summary"]] == ["MHA", "MoH 90%"]
