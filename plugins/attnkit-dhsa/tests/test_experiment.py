"""The SmolLM2 needle experiment's helpers (fast) and a tiny run of the script (slow)."""

import json
import statistics

import pytest

from attnkit_dhsa.experiment import PAPER_PARAMS, fit_case, summarise
from attnkit_dhsa.params import DhsaParams


class WordTokenizer:
    """One token per whitespace-separated word, no chat template."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}


@pytest.mark.parametrize("prompt_tokens", [120, 300, 1000])
def test_fit_case_prompt_fits_and_fills_the_budget(prompt_tokens):
    tok = WordTokenizer()
    case = fit_case(tok, prompt_tokens, 50.0, seed=3)
    n = len(case.input_ids)
    assert n <= prompt_tokens
    # the context is made of whole sentences (a dozen words at most each)
    assert n > prompt_tokens - 30
    needle = tok(case.needle)["input_ids"]
    ids = case.input_ids
    assert any(ids[i : i + len(needle)] == needle for i in range(n - len(needle) + 1))


def test_fit_case_refuses_a_bad_length():
    with pytest.raises(ValueError, match="prompt_tokens"):
        fit_case(WordTokenizer(), 0, 50.0, seed=0)


def test_summarise_against_hand_computed_rows():
    records = [
        {"length": 8, "dense_recall": 1.0, "dhsa_recall": 0.5, "dense_s": 2.0, "dhsa_s": 1.0},
        {"length": 8, "dense_recall": 0.6, "dhsa_recall": 1.0, "dense_s": 4.0, "dhsa_s": 3.0},
        {"length": 8, "dense_recall": 0.0, "dhsa_recall": 0.0, "dense_s": 1.0, "dhsa_s": 2.0},
        {"length": 4, "dense_recall": 1.0, "dhsa_recall": 1.0, "dense_s": 1.0, "dhsa_s": 1.0},
    ]
    rows = summarise(records)
    assert [r["length"] for r in rows] == [4, 8]
    r = rows[1]
    assert r["n"] == 3
    assert r["dense_accuracy"] == pytest.approx(2 / 3)
    assert r["dhsa_accuracy"] == pytest.approx(1 / 3)  # recall 0.5 is not > 0.5
    assert r["dhsa_mean_recall"] == pytest.approx(0.5)
    assert r["dense_prefill_s_median"] == 2.0
    assert r["latency_ratio_median"] == pytest.approx(statistics.median([0.5, 0.75, 2.0]))
    assert r["accuracy_gap_points"] == pytest.approx(100 / 3)


def test_paper_params_are_the_paper_budget():
    p = DhsaParams(**PAPER_PARAMS)
    # N_b = 1024 keys per query block of 128: 128 sinks + the block + 768 by score
    assert p.block_size == 128 and p.max_keys(is_causal=True) == 1024


@pytest.mark.slow
def test_tiny_experiment_runs_and_writes_its_results(tmp_path):
    pytest.importorskip("transformers")
    from attnkit_dhsa.experiment import main

    out = tmp_path / "r.json"
    args = ["--lengths", "400", "--cases", "1", "--max-new-tokens", "4", "--out", str(out)]
    args += ["--param", "block_size=32", "--param", "top_k=32", "--param", "sink_tokens=8"]
    assert main(args) == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["length"] == 400 and row["n"] == 1
    (rec,) = data["records"]
    assert rec["tokens"] <= 400 and rec["dense_s"] > 0 and rec["dhsa_s"] > 0
    assert data["setup"]["complete"] and data["setup"]["dhsa_params"]["top_k"] == 32
