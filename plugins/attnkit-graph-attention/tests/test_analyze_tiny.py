"""``analyze`` end to end on a tiny random Llama with a character tokenizer (fast): the report's
pieces are there and the numbers are consistent with each other. Plotting is stubbed out here
(matplotlib costs more than the tiny model); the slow SmolLM2 test draws the real figures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _graph_attention_fakes import CharTokenizer

from attnkit.analyze import AnalyzeContext
from attnkit.testing import tiny_causal_lm
from attnkit_graph_attention import GRAPH_ATTENTION, GraphAttentionParams
from attnkit_graph_attention.analysis import analyze


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from attnkit_graph_attention import plots

    out = tmp_path_factory.mktemp("ga")
    mp = pytest.MonkeyPatch()

    def stub(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"png")
        return path

    mp.setattr(plots, "layer_lines", stub)
    mp.setattr(plots, "bars", stub)
    ctx = AnalyzeContext(
        spec=GRAPH_ATTENTION,
        params=GraphAttentionParams(n_graphs=2, n_nodes=5, questions=4, khops=(1, 2)),
        model_name="smollm2",
        prompts=None,
        out_dir=out,
        quick=True,
        progress=False,
    )
    ctx._loaded = (tiny_causal_lm(seed=0), CharTokenizer())
    try:
        yield analyze(ctx), out
    finally:
        mp.undo()


def test_report_pieces(outcome) -> None:  # type: ignore[no-untyped-def]
    res, _ = outcome
    assert {Path(f).name for f in res.figures} == {
        "node_to_node_by_hop.png",
        "distance_matched_ratio.png",
        "question_to_node_by_hop.png",
        "qa_accuracy.png",
    }
    # 4 accuracy metrics + log-prob per k, each beside its control and the unedited baseline
    assert len(res.comparisons) == 10
    for c in res.comparisons:
        assert c.baseline is not None and c.n > 0 and not math.isnan(c.effect) and not math.isnan(c.control)
    assert res.summary["questions (QA part)"] == 12  # 2 graphs x 3 kinds x 2 (quick)


def test_numbers_are_consistent(outcome) -> None:  # type: ignore[no-untyped-def]
    res, _ = outcome
    qa = res.results["qa"]
    for v in qa.values():
        correct = v["correct"]
        assert v["accuracy"]["all"] == pytest.approx(sum(correct) / len(correct))
    hop = res.results["attention_by_hop"]
    assert len(hop["node_to_node"]["1-hop"]) == 2  # tiny model layers
    assert hop["pairs"]["1-hop"] > 0
    shares = res.results["masked_share"]
    assert shares["1"]["graph_khop"] >= shares["2"]["graph_khop"]  # a wider window masks less


@pytest.mark.parametrize("attention", ["dense", "graph_khop"])
def test_prefix_cached_scores_equal_full_forwards(attention: str) -> None:
    """Scoring continues each question from the graph's cached prefix: the result must be what
    one full forward of each prompt alone gives."""
    import random

    import torch

    import attnkit
    from attnkit_graph_attention.analysis import answer_scores, khop_params
    from attnkit_graph_attention.prompts import encode
    from attnkit_graph_attention.serialize import make_questions, random_graph, serialize

    model, tok = tiny_causal_lm(seed=1), CharTokenizer()
    rng = random.Random(0)
    g = random_graph(5, 0.2, rng)
    ser = serialize(g, "edges", rng)
    prompts = [encode(tok, ser, q) for q in make_questions(g, 2, rng)]
    params = None
    if attention == "graph_khop":
        shared = khop_params(prompts[0], g, 1, False)
        params = [shared] * len(prompts)
    correct, logp = answer_scores(model, prompts, attention, params)
    for i, pr in enumerate(prompts):
        kwargs = {} if params is None else {"attention_params": params[i]}
        with torch.no_grad(), attnkit.patch(model, attention, **kwargs):
            scores = model(torch.tensor([pr.ids])).logits[0, -1, list(pr.choice_tokens)].double()
        right = list(pr.question.answers)
        assert correct[i] == (int(scores.argmax()) in right)
        want = float(torch.logsumexp(torch.log_softmax(scores, -1)[right], -1))
        assert logp[i] == pytest.approx(want, abs=1e-4)
