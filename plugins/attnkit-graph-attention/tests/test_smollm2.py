"""On the embedded SmolLM2 (slow: loads the model): ``graph_khop`` through ``attnkit.patch``
against dense attention, and ``attnkit analyze graph_attention --quick`` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    from attnkit.models import load

    return load("smollm2")


@pytest.mark.slow
def test_khop_window_on_smollm2(smollm2) -> None:  # type: ignore[no-untyped-def]
    import attnkit
    from attnkit_graph_attention.prompts import encode
    from attnkit_graph_attention.serialize import make_questions, random_graph, serialize

    model, tok = smollm2
    rng = random.Random(0)
    g = random_graph(6, 0.2, rng)
    prompt = encode(tok, serialize(g, "edges", rng), make_questions(g, 2, rng)[0])
    ids = torch.tensor([prompt.ids])
    with torch.no_grad():
        with attnkit.patch(model, "dense"):
            want = model(ids).logits
        wide = {"spans": prompt.spans, "edges": g.edges, "hops": g.n}  # covers the whole graph
        with attnkit.patch(model, "graph_khop", attention_params=wide):
            got = model(ids).logits
        with attnkit.patch(model, "graph_khop", attention_params={**wide, "hops": 1}):
            k1 = model(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=2e-4)
    first_node = prompt.spans[0][0]
    torch.testing.assert_close(k1[:, : first_node + 1], want[:, : first_node + 1], rtol=0, atol=2e-4)
    assert (k1[:, -1] - want[:, -1]).abs().max() > 1e-3  # the question reads a changed graph


@pytest.mark.slow
def test_quick_analyze_on_smollm2(tmp_path: Path) -> None:
    from attnkit.cli import main

    assert main(["analyze", "graph_attention", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert len(res["attention_by_hop"]["node_to_node"]["1-hop"]) == 30
    assert len(res["comparisons"]) == 10
    for name in (
        "node_to_node_by_hop.png",
        "distance_matched_ratio.png",
        "question_to_node_by_hop.png",
        "qa_accuracy.png",
    ):
        assert 0 < (tmp_path / name).stat().st_size < 250_000
    assert (tmp_path / "report.html").stat().st_size > 0
