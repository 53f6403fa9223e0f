"""The SmolLM2 passkey experiment (:mod:`attnkit_longheads.experiment`): prompt building and
summaries against a word-level tokenizer written here (fast); the model-level run on SmolLM2
(slow): with every chunk selected LongHeads' teacher-forced logits are plain SmolLM2's, and a
tiny sparse run writes its JSON."""

import json
import re

import pytest

from attnkit_longheads.experiment import (
    FILLER,
    QUESTION,
    make_passkey_case,
    passkey_key,
    summarize,
    teacher_forced,
)


class WordTokenizer:
    """One id per word or punctuation mark (a leading space does not change the id)."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, text, add_special_tokens=False):
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in re.findall(r"\w+|[^\w\s]", text)]
        return {"input_ids": ids}

    def words(self, ids):
        inv = {i: w for w, i in self.vocab.items()}
        return [inv[i] for i in ids]


@pytest.mark.parametrize("length", [80, 97, 300])
@pytest.mark.parametrize("depth", [0.0, 37.5, 100.0])
def test_passkey_case_has_the_exact_length_and_ends_with_question_and_key(length, depth):
    tok = WordTokenizer()
    case = make_passkey_case(tok, length, depth, seed=3)
    assert len(case.input_ids) == case.length == length
    words = tok.words(case.input_ids)
    assert words[-case.answer_len :] == [case.key]
    q = tok(QUESTION)["input_ids"]
    assert case.input_ids[-case.answer_len - len(q) : -case.answer_len] == q
    # The needle sits where the case says, and it holds the key twice.
    needle = tok(f"The pass key is {case.key}. Remember it. {case.key} is the pass key.")["input_ids"]
    at = case.needle_token
    assert case.input_ids[at : at + len(needle)] == needle
    assert words.count(case.key) == 3


def test_passkey_depth_puts_the_needle_among_the_filler_repeats():
    tok = WordTokenizer()
    f = len(tok(FILLER)["input_ids"])
    cases = {d: make_passkey_case(tok, 600, d, seed=1) for d in (0.0, 50.0, 100.0)}
    head = cases[0.0].needle_token
    repeats = (cases[100.0].needle_token - head) // f
    assert repeats >= 10 and (cases[100.0].needle_token - head) % f == 0
    assert cases[50.0].needle_token == head + f * round(repeats / 2)


def test_passkey_key_is_seeded_with_the_requested_digits():
    keys = [passkey_key(s) for s in range(20)]
    assert keys == [passkey_key(s) for s in range(20)]
    assert all(len(k) == 5 and k[0] != "0" for k in keys) and len(set(keys)) > 15
    assert len(passkey_key(0, digits=3)) == 3
    with pytest.raises(ValueError, match=r"digits.*0"):
        passkey_key(0, digits=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"length": 20, "depth": 50.0}, ValueError, "length must be >= .* got 20"),
        ({"length": 300, "depth": 101.0}, ValueError, "depth.*101"),
        ({"length": 300.0, "depth": 50.0}, TypeError, "length.*float"),
    ],
)
def test_passkey_case_bad_input_names_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_passkey_case(WordTokenizer(), **kwargs)


def test_summarize_counts_and_averages_per_method_and_length():
    cases = [
        {"method": "dense", "length": 10, "correct": True, "token_accuracy": 1.0, "seconds": 1.0},
        {"method": "dense", "length": 10, "correct": False, "token_accuracy": 0.5, "seconds": 3.0},
        {"method": "longheads", "length": 10, "correct": True, "token_accuracy": 1.0, "seconds": 2.0},
        {"method": "dense", "length": 40, "correct": False, "token_accuracy": 0.25, "seconds": 8.0},
    ]
    rows = {(r["method"], r["length"]): r for r in summarize(cases)}
    assert rows["dense", 10] == {
        "method": "dense", "length": 10, "n": 2, "accuracy": 0.5, "token_accuracy": 0.75, "s_per_token": 0.2,
    }  # fmt: skip
    assert rows["longheads", 10]["n"] == 1 and rows["longheads", 10]["s_per_token"] == 0.2
    assert rows["dense", 40]["accuracy"] == 0.0 and rows["dense", 40]["s_per_token"] == 0.2


class _ArgmaxModel:
    """A stand-in causal LM whose logits at position t put the maximum on ``script[t]``."""

    def __init__(self, script, vocab=50):
        self.script, self.vocab = script, vocab

    def __call__(self, input_ids, use_cache, logits_to_keep):
        import torch

        t = input_ids.shape[1]
        logits = torch.zeros(1, t, self.vocab)
        logits[0, torch.arange(t), torch.tensor(self.script[:t])] = 1.0
        return type("Out", (), {"logits": logits[:, -logits_to_keep:]})()


def test_teacher_forced_scores_each_answer_token_from_the_logits_before_it():
    tok = WordTokenizer()
    case = make_passkey_case(tok, 80, 50.0, seed=0, digits=1)
    ids = case.input_ids
    # The logits at t predict token t + 1: a model that predicts the next token everywhere is right.
    right = _ArgmaxModel([*ids[1:], 0], vocab=max(ids) + 1)
    assert teacher_forced(right, case)["correct"] and teacher_forced(right, case)["token_accuracy"] == 1.0
    # Predicting the token itself (off by one) is wrong on the answer.
    wrong = _ArgmaxModel([*ids[:-1], ids[-1] + 1], vocab=max(ids) + 2)
    r = teacher_forced(wrong, case)
    assert not r["correct"] and r["token_accuracy"] == 0.0


@pytest.mark.slow
def test_all_chunks_selected_longheads_equals_plain_smollm2_teacher_forced():
    """The spec's check at model level: with chunks * chunk_size >= the prompt, every chunk is
    selected at its own position, so LongHeads' logits are plain SmolLM2's."""
    import torch

    import attnkit
    from attnkit.hf.modelconfig import rope_theta
    from attnkit.models import load

    torch.set_num_threads(1)
    model, tok = load("smollm2")
    case = make_passkey_case(tok, 200, 50.0, seed=5)
    ids = torch.tensor([case.input_ids])
    params = {"chunk_size": 32, "chunks": 8, "rope_theta": rope_theta(model.config)}
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits
        with attnkit.patch(model, "longheads", attention_params=params):
            got = model(input_ids=ids, use_cache=False).logits
            tf = teacher_forced(model, case)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
    assert tf["predicted"] == want[0, -case.answer_len - 1 : -1].argmax(-1).tolist()


@pytest.mark.slow
def test_tiny_sparse_run_writes_consistent_json(tmp_path):
    from attnkit_longheads.experiment import run

    out = tmp_path / "passkey.json"
    data = run(out=out, lengths=[256], cases=[1], dense_cases=[1], chunk_size=16, chunks=4, progress=False)
    saved = json.loads(out.read_text())
    assert saved["summary"] == data["summary"]
    assert {(r["method"], r["n"]) for r in saved["summary"]} == {("dense", 1), ("longheads", 1)}
    assert [r["length"] for r in saved["attention_timing"]] == [256]
    for rec in saved["cases"]:
        assert rec["correct"] == (rec["token_accuracy"] == 1.0)
        assert rec["correct"] == (rec["predicted"].strip() == rec["key"])
