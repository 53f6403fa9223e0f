"""Task generation (equal clean / corrupted lengths, the planted answers), parameters, and the
spec's registration."""

from __future__ import annotations

import pytest

import attnkit
from attnkit.testing import WordTokenizer
from attnkit_circuit_reuse import CIRCUIT_REUSE, CircuitReuseParams
from attnkit_circuit_reuse.circuits import n_top
from attnkit_circuit_reuse.tasks import Pair, colored_objects_pairs, encode, ioi_pairs, make_pairs


def test_ioi_pairs_answer_the_indirect_object_and_corrupt_s2():
    for p in ioi_pairs(20, seed=3):
        io, s = p.answer.strip(), p.wrong.strip()
        assert p.clean.count(io) == 1 and p.clean.count(s) == 2
        assert p.clean.endswith(" to") and p.corrupted.endswith(" to")
        # ABC corruption: the second subject mention becomes a third name, nothing else changes
        diff = [(a, b) for a, b in zip(p.clean.split(), p.corrupted.split()) if a != b]
        assert len(diff) == 1 and diff[0][0].strip(",.") == s and diff[0][1].strip(",.") not in (io, s)


def test_colored_objects_pairs_ask_for_another_object_of_the_list():
    for p in colored_objects_pairs(12, seed=1):
        question = p.clean.rsplit("\n", 1)[1]
        asked = question.split("The ")[-1].removesuffix(" is")
        assert f"{p.answer.strip()} {asked}" in question  # the answer is the asked object's color
        assert p.answer != p.wrong and p.wrong in p.candidates and len(set(p.candidates)) == 3
        assert p.clean.split()[:-2] == p.corrupted.split()[:-2] and p.clean != p.corrupted


def test_encode_gives_equal_lengths_and_answer_ids():
    tok = WordTokenizer()
    for task in ("ioi", "colored_objects"):
        pairs = make_pairs(task, 15, seed=0)
        batches = encode(pairs, tok)
        assert sum(len(b) for b in batches) == 15
        for b in batches:
            assert b.clean.shape == b.corrupted.shape
            assert (b.candidates[:, 0] == b.answer).all()
            assert (b.clean != b.corrupted).sum(1).eq(1).all()  # one-token minimal difference
            assert b.answer.tolist() == [tok(" " + tok.decode([int(a)]))["input_ids"][0] for a in b.answer]


def test_encode_refuses_unequal_lengths_and_multi_token_answers():
    tok = WordTokenizer()
    bad = Pair("ioi", "a b c", "a b c d", " x", " y", (" x", " y"))
    with pytest.raises(ValueError, match="3 tokens, corrupted 4"):
        encode([bad], tok)
    bad2 = Pair("ioi", "a b", "a c", " x y", " y", (" x y", " y"))
    with pytest.raises(ValueError, match="2 tokens"):
        encode([bad2], tok)
    with pytest.raises(ValueError, match="task"):
        make_pairs("arithmetic", 3)


def test_pairs_are_seeded():
    assert ioi_pairs(5, 7) == ioi_pairs(5, 7) and ioi_pairs(5, 7) != ioi_pairs(5, 8)
    assert colored_objects_pairs(5, 7) == colored_objects_pairs(5, 7)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_prompts", 0),
        ("top_frac", 0.0),
        ("top_frac", 1.5),
        ("receiver_inputs", "qx"),
        ("boost", -1.0),
        ("n_random", 0),
        ("first_layer", -1),
        ("max_rows", 0),
        ("n_eval", "x"),
    ],
)
def test_bad_params_name_the_argument(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        CircuitReuseParams(**{name: value})


def test_stage_size_is_the_top_two_percent():
    assert n_top(0.02, 270) == 6 and n_top(0.02, 10) == 1 and n_top(1.0, 8) == 8


def test_registered_through_attnkit():
    attnkit.load_plugins()
    spec = attnkit.get_spec("circuit_reuse", "analysis")
    assert spec.name == CIRCUIT_REUSE.name == "circuit_reuse"
    assert spec.default_model == "smollm2" and spec.analyze == "attnkit_circuit_reuse.analysis:analyze"
