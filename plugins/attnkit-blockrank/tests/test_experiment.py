"""The ranking experiment's helpers against independent oracles (fast), and a tiny run of it
on SmolLM2 (slow)."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch
from scipy.stats import kendalltau

from attnkit_blockrank import BlockrankParams
from attnkit_blockrank.experiment import (
    Layout,
    attended_pairs,
    chance,
    doc_scores,
    kendall_tau,
    layout,
    make_list,
    paper_layer,
    permutation_invariant_positions,
    position_calibrated,
    rank_of,
    summarise,
)
from attnkit_blockrank.masks import brute_force_mask


class CharTokenizer:
    """One token per character (its code point)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


@pytest.mark.parametrize("seed", range(6))
def test_make_list_exactly_one_document_answers(seed):
    item = make_list(7, seed)
    assert len(item.documents) == 7 and 0 <= item.relevant < 7
    for i, doc in enumerate(item.documents):
        assert doc.startswith(f"[{i + 1}] ")
    if item.kind == "by_name":
        name = item.query.split("main export of ")[1].split("?")[0]
        hits = [i for i, d in enumerate(item.documents) if f"] {name} is a" in d]
    else:
        good = item.query.split("main export is ")[1].split("?")[0]
        hits = [i for i, d in enumerate(item.documents) if f"main export is {good}," in d]
    assert hits == [item.relevant]
    assert make_list(7, seed) == item  # seeded
    assert item.query.endswith("document [")


def test_make_list_refuses_bad_input():
    with pytest.raises(ValueError, match="num_documents"):
        make_list(0, 1)
    with pytest.raises(ValueError, match="kind"):
        make_list(3, 1, kind="by_colour")


def test_layout_concatenates_segments_at_exact_borders():
    item = make_list(5, 3)
    lay = layout(CharTokenizer(), item)
    text = "".join(chr(c) for c in lay.input_ids)
    assert text == item.instruction + "".join(item.documents) + item.query
    b = lay.bounds
    assert b[0] == len(item.instruction) and b[-1] + lay.query == len(text)
    for d, (lo, hi) in zip(item.documents, itertools.pairwise(b)):
        assert text[lo:hi] == d
    assert lay.attention_params == {"instruction": b[0], "documents": tuple(len(d) for d in item.documents)}


def test_permutation_invariant_positions_by_hand():
    lay = Layout(tuple(range(2 + 3 + 1 + 2)), instruction=2, documents=(3, 1), query=2)
    assert permutation_invariant_positions(lay) == [0, 1, 2, 3, 4, 2, 5, 6]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("inst", "docs", "query"), [(2, (3, 1, 2), 3), (0, (4, 4), 1), (3, (), 2), (1, (1,) * 6, 4)])
def test_attended_pairs_counts_the_brute_force_mask(inst, docs, query, causal):
    t = inst + sum(docs) + query
    mask = brute_force_mask(
        BlockrankParams(instruction=inst, documents=docs or None), (1, 1, t, 1), (1, 1, t, 1), causal
    )
    assert attended_pairs(inst, docs, query, causal=causal) == int(mask.sum())


def test_attended_pairs_grow_linearly_in_documents():
    counts = [attended_pairs(40, (30,) * n, 0) for n in range(1, 8)]
    steps = {b - a for a, b in itertools.pairwise(counts)}
    assert steps == {30 * 40 + 30 * 31 // 2}


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_chance_mrr_is_the_mean_reciprocal_rank_of_a_uniform_rank(n):
    # The exact expectation over every permutation of n documents (the relevant one is 0).
    rrs = [1.0 / (perm.index(0) + 1) for perm in itertools.permutations(range(min(n, 6)))]
    if n <= 6:
        assert chance(n)["mrr"] == pytest.approx(sum(rrs) / len(rrs), rel=1e-12)
    assert chance(n)["accuracy_at_1"] == pytest.approx(1 / n)
    # Monte Carlo agreement for the larger n.
    rng = random.Random(n)
    mc = sum(1.0 / rng.randint(1, n) for _ in range(40000)) / 40000
    assert chance(n)["mrr"] == pytest.approx(mc, abs=0.01)
    with pytest.raises(ValueError, match="num_documents"):
        chance(0)


def test_rank_of_counts_strictly_better_documents():
    assert rank_of([0.1, 0.5, 0.3], 1) == 1
    assert rank_of([0.1, 0.5, 0.3], 0) == 3
    assert rank_of([0.2, 0.2, 0.1], 1) == 1  # a tie does not push the document down


@pytest.mark.parametrize("seed", range(4))
def test_kendall_tau_matches_scipy_without_ties(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.rand(9, generator=g).tolist(), torch.rand(9, generator=g).tolist()
    assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)
    assert kendall_tau(a, a) == 1.0 and kendall_tau(a, [-x for x in a]) == -1.0
    with pytest.raises(ValueError, match="same length"):
        kendall_tau(a, b[:3])


def test_doc_scores_equal_a_float64_softmax_written_out():
    g = torch.Generator().manual_seed(0)
    lay = Layout(tuple(range(3 + 4 + 2 + 5 + 3)), instruction=3, documents=(4, 2, 5), query=3)
    t = len(lay.input_ids)
    q = torch.randn(1, 6, 2, 8, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, t, 8, generator=g, dtype=torch.float64)
    got = doc_scores(q, k, lay)[0]
    want = torch.zeros(3, dtype=torch.float64)
    for h in range(6):
        for r in range(2):
            logits = [float(q[0, h, r] @ k[0, h // 3, j]) / math.sqrt(8) for j in range(3, 14)]
            e = [math.exp(x) for x in logits]
            p = [x / sum(e) for x in e]
            for d, (lo, hi) in enumerate([(0, 4), (4, 6), (6, 11)]):
                want[d] += sum(p[lo:hi]) / 12
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert float(got.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tokens"):
        doc_scores(q, k[:, :, :-1], lay)


def test_summarise_against_hand_computed_metrics():
    recs = [
        {"relevant": 0, "scores": {"full": {"3": [0.5, 0.3, 0.2]}, "blockrank": {"3": [0.2, 0.5, 0.3]}}},
        {"relevant": 2, "scores": {"full": {"3": [0.1, 0.6, 0.3]}, "blockrank": {"3": [0.1, 0.7, 0.2]}}},
    ]
    s = summarise(recs, 3, ["full", "blockrank"])
    assert s["full"]["accuracy_at_1"]["mean"] == 0.5
    assert s["full"]["mrr"]["mean"] == pytest.approx((1 + 1 / 2) / 2)
    assert s["blockrank"]["mrr"]["mean"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    vs = s["blockrank"]["vs_full"]
    assert vs["top1_agreement"]["mean"] == 0.5  # list 1: full picks 0, blockrank 1; list 2: both 1
    assert vs["mrr_of_full_top1"]["mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert vs["kendall_tau"]["mean"] == pytest.approx((-1 / 3 + 1) / 2)


def test_paper_layer_is_the_papers_relative_depth():
    assert paper_layer(32) == 20
    assert paper_layer(30) == 19


@pytest.mark.slow
def test_tiny_run_on_smollm2(tmp_path):
    pytest.importorskip("transformers")
    from attnkit_blockrank.experiment import main

    out = tmp_path / "r.json"
    assert (
        main(
            [
                "--lists",
                "2",
                "--docs",
                "3",
                "--cost-docs",
                "3",
                "--cost-reps",
                "1",
                "--prefill-max-docs",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert len(res["records"]) == 2 and res["layer"] == 19
    for rec in res["records"]:
        for cond in ("full", "blockrank", "blockrank_pi"):
            scores = rec["scores"][cond]["19"]
            assert len(scores) == 3 and sum(scores) == pytest.approx(1.0, abs=1e-5)
            assert sum(rec["scores_query"][cond]["19"]) == pytest.approx(1.0, abs=1e-5)
        assert rec["scores"]["full"]["19"] != rec["scores"]["blockrank"]["19"]
    assert {"summary", "summary_cal", "summary_query", "summary_query_cal"} <= set(res)
    row = res["cost"][0]
    assert row["pairs_blockrank"] < row["pairs_full"]


@pytest.mark.slow
def test_blockrank_documents_are_encoded_alone_and_scores_follow_a_permutation():
    """On SmolLM2 under the BlockRank mask: a document's keys do not change when another
    document changes (they do under full attention); with permutation-invariant positions, permuting the documents permutes
    the scores; and the scores equal those from the core's own ``hook_pattern`` capture."""
    pytest.importorskip("transformers")
    import attnkit
    from attnkit.models import load
    from attnkit.runtime import Capture
    from attnkit_blockrank.experiment import QueryKeyTap, _score_list

    model, tok = load("smollm2")
    item = make_list(3, 5)
    lay = layout(tok, item)

    def keys(lay_, attention):
        # permutation-invariant positions: a document's positions do not depend on the others'
        ids = torch.tensor([lay_.input_ids])
        pos = torch.tensor([permutation_invariant_positions(lay_)])
        tap = QueryKeyTap(layers=[10])
        params = lay_.attention_params if attention == "blockrank" else None
        with torch.inference_mode(), attnkit.patch(model, attention, attention_params=params, analyses=[tap]):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos, use_cache=False)
        return tap.k[10]

    other_docs = (
        item.documents[0],
        "[2] A different and rather longer passage about nothing at all.\n",
        item.documents[2],
    )
    other = layout(tok, type(item)(item.instruction, other_docs, item.query, 0, item.kind))
    b1, b2 = lay.bounds, other.bounds
    for attention in ("blockrank", "dense"):
        k1, k2 = keys(lay, attention), keys(other, attention)
        torch.testing.assert_close(k1[:, :, : b1[1]], k2[:, :, : b2[1]], rtol=1e-4, atol=1e-4)  # instruction, doc 1
        third_same = torch.allclose(k1[:, :, b1[2] : b1[3]], k2[:, :, b2[2] : b2[3]], rtol=1e-4, atol=1e-4)
        assert third_same == (attention == "blockrank")  # doc 3 sees doc 2 only under full attention
        assert not torch.allclose(k1[:, :, -lay.query :], k2[:, :, -other.query :], atol=1e-3)  # the query sees it

    base = _score_list(model, lay, "blockrank_pi", 30)[0]["19"]
    perm = (2, 0, 1)
    docs = [item.documents[i] for i in perm]
    swapped = layout(tok, type(item)(item.instruction, tuple(docs), item.query, 0, item.kind))
    moved = _score_list(model, swapped, "blockrank_pi", 30)[0]["19"]
    # (the "[i]" labels move with the documents: they are part of each document's tokens)
    torch.testing.assert_close(torch.tensor(moved), torch.tensor([base[i] for i in perm]), rtol=1e-3, atol=1e-4)

    cap = Capture(["blocks.19.attn.hook_pattern@prefill"])
    with (
        torch.inference_mode(),
        attnkit.patch(model, "blockrank", attention_params=lay.attention_params, analyses=[cap]),
    ):
        model(input_ids=torch.tensor([lay.input_ids]), use_cache=False)
    a = lay.bounds[0]
    pat = cap.first("blocks.19.attn.hook_pattern")[0, :, -2:, a : lay.bounds[-1]].double()
    pat = (pat / pat.sum(-1, keepdim=True)).mean(dim=(0, 1))
    want = [float(pat[lo - a : hi - a].sum()) for lo, hi in itertools.pairwise(lay.bounds)]
    got = _score_list(model, lay, "blockrank", 30)[0]["19"]
    torch.testing.assert_close(
        torch.tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64), rtol=1e-3, atol=1e-4
    )


def test_position_calibration_divides_by_the_leave_one_out_position_mean():
    recs = [
        {"relevant": 0, "kind": "by_name", "scores": {"full": {"0": [0.2, 0.8]}}},
        {"relevant": 1, "kind": "by_name", "scores": {"full": {"0": [0.1, 0.9]}}},
        {"relevant": 0, "kind": "by_name", "scores": {"full": {"0": [0.3, 0.7]}}},
    ]
    cal = position_calibrated(recs)
    # list 0: baselines (0.1 + 0.3) / 2 = 0.2 and (0.9 + 0.7) / 2 = 0.8
    assert cal[0]["scores"]["full_cal"]["0"] == pytest.approx([1.0, 1.0])
    assert cal[2]["scores"]["full_cal"]["0"] == pytest.approx([0.3 / 0.15, 0.7 / 0.85])
    assert cal[1]["relevant"] == 1 and "full" not in cal[1]["scores"]
    with pytest.raises(ValueError, match="2 lists"):
        position_calibrated(recs[:1])
