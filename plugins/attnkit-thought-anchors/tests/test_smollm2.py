"""``attnkit analyze thought-anchors --quick`` on the embedded SmolLM2 (slow: loads the model
and generates)."""

from __future__ import annotations

import itertools
import json

import pytest


@pytest.mark.slow
def test_quick_analysis_on_smollm2(tmp_path):
    from attnkit.analyze import main

    assert main(["thought-anchors", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["analysis"] == "thought_anchors"
    assert res["summary"]["no-op edit max KL"] == 0.0
    assert len(res["receiver_heads"]) == 20
    assert (tmp_path / "report.html").is_file()
    tr = res["traces"][0]
    spans = tr["token_spans"]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(spans))
