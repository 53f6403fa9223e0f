"""Prompt generator invariants: seeded determinism, the counterfactual's construction, equal
token lengths and entity positions between base and counterfactual."""

from __future__ import annotations

import re

import pytest

from attnkit_mixing_mechanisms.prompts import MECHANISMS, encode_pairs, make_pairs, sample_prompts


class WordTokenizer:
    """A stand-in tokenizer: a word with its leading space, or one punctuation / whitespace run."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        pieces = re.findall(r" ?\w+| ?[^\w\s]|\s+", text)
        return {"input_ids": [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]}


def test_pairs_are_seeded() -> None:
    a, b, c = make_pairs(12, 5, seed=3), make_pairs(12, 5, seed=3), make_pairs(12, 5, seed=4)
    assert a == b
    assert a != c
    assert sample_prompts(6, 4, seed=1) == sample_prompts(6, 4, seed=1)


@pytest.mark.parametrize("n_groups", [4, 6, 9])
def test_counterfactual_points_each_mechanism_at_its_group(n_groups: int) -> None:
    pairs = make_pairs(3 * n_groups, n_groups, seed=0)
    # the counterfactual's queried position cycles over every position
    assert [p.position for p in pairs] == [i % n_groups for i in range(3 * n_groups)]
    for p in pairs:
        t = p.targets
        c, w, s, q = (t[m] for m in MECHANISMS)
        assert len({c, w, s, q}) == 4
        assert p.base.query == q and p.cf.query == c
        # the cf's query name is bound, in the base, to group w (lexical) ...
        assert p.base.names.index(p.cf.names[p.cf.query]) == w
        # ... its answer object sits, in the base, in group s (reflexive) ...
        assert p.base.objects.index(p.cf.answer) == s
        # ... and the positional pointer is the cf's queried index c
        assert p.cf.query == c
        # the cf is the base with exactly two object swaps and two name swaps
        assert sorted(p.base.objects) == sorted(p.cf.objects) and sorted(p.base.names) == sorted(p.cf.names)
        assert {i for i in range(n_groups) if p.base.objects[i] != p.cf.objects[i]} == {c, s}
        assert {i for i in range(n_groups) if p.base.names[i] != p.cf.names[i]} == {c, w}
        assert p.base.demo == p.cf.demo


def test_encoded_pairs_are_token_aligned() -> None:
    tok = WordTokenizer()
    pairs = make_pairs(10, 5, seed=2)
    enc = encode_pairs(tok, pairs)
    assert enc.base.shape == enc.cf.shape
    inv = {v: k for k, v in tok.vocab.items()}
    for i, p in enumerate(pairs):
        diff = (enc.base[i] != enc.cf[i]).nonzero().flatten().tolist()
        # only the swapped names / objects and the query token differ
        assert 1 <= len(diff) <= 5
        assert inv[int(enc.base[i, enc.first_name])] == f" {p.base.names[0]}"
        assert inv[int(enc.base[i, -2])] == f" {p.base.names[p.base.query]}"
        assert inv[int(enc.cf[i, -2])] == f" {p.cf.names[p.cf.query]}"
        assert [inv[int(x)] for x in enc.candidates[i]] == [f" {o}" for o in p.base.objects]
        assert enc.targets[i].tolist() == [p.targets[m] for m in MECHANISMS]


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="n_groups"):
        make_pairs(4, 3)
    with pytest.raises(TypeError, match="n_groups"):
        make_pairs(4, "5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pairs mix token lengths"):
        encode_pairs(WordTokenizer(), make_pairs(1, 4) + make_pairs(1, 5))

    class TwoTokens(WordTokenizer):
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
            out = super().__call__(text)
            return {"input_ids": out["input_ids"] * 2} if text == " apples" else out

    with pytest.raises(ValueError, match="single tokens"):
        encode_pairs(TwoTokens(), [p for p in make_pairs(40, 4) if "apples" in p.base.objects][:1])
