"""Sentence segmentation on fixed strings, and token spans from a decode function whose
token boundaries are known."""

from __future__ import annotations

import pytest

from attnkit_thought_anchors.segment import segment_tokens, split_sentences, token_offsets


def _pieces(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text)]


def test_terminal_marks_split_and_spans_are_stripped():
    assert _pieces("  First one. Second one!  Third one?") == ["First one.", "Second one!", "Third one?"]


def test_decimals_do_not_split():
    assert _pieces("It costs 3.50 dollars. Then 0.25 more.") == ["It costs 3.50 dollars.", "Then 0.25 more."]


def test_abbreviations_do_not_split():
    text = "Dr. Lee bought fruit, e.g. apples. She paid Mr. Kim."
    assert _pieces(text) == ["Dr. Lee bought fruit, e.g. apples.", "She paid Mr. Kim."]


def test_newlines_split_and_blank_lines_vanish():
    text = "Step one: add them\n\nStep two: subtract\nDone"
    assert _pieces(text) == ["Step one: add them", "Step two: subtract", "Done"]


def test_list_markers_stay_with_their_sentence():
    text = "1. First, add 12 and 5.\n2. Then subtract 3.\nSo the answer is 14."
    assert _pieces(text) == ["1. First, add 12 and 5.", "2. Then subtract 3.", "So the answer is 14."]


def test_runs_closers_and_lowercase_continuations():
    text = 'Wait... is it "right?" Yes it is. Meet at 3 p.m. today. **Answer: 7.** End'
    assert _pieces(text) == [
        "Wait...",
        'is it "right?"',
        "Yes it is.",
        "Meet at 3 p.m. today.",
        "**Answer: 7.**",
        "End",
    ]


def test_punctuation_only_pieces_join_a_neighbour():
    text = "**\nFirst line.\n---\nSecond line."
    assert _pieces(text) == ["**\nFirst line.\n---", "Second line."]


def test_spans_index_the_text():
    text = "A b. C d!\nE f"
    spans = split_sentences(text)
    assert spans == [(0, 4), (5, 9), (10, 13)]


def test_bad_text_type():
    with pytest.raises(TypeError, match="text"):
        split_sentences(b"bytes")  # type: ignore[arg-type]


PIECES = ["Tom", " has", " 3", ".", "5", " apples", ".", "\n\n", "He", " eats", " one", ".", " Done", "."]


def _decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def test_token_offsets_are_prefix_lengths():
    text, offsets = token_offsets(list(range(len(PIECES))), _decode)
    assert text == "".join(PIECES)
    assert offsets == [sum(len(p) for p in PIECES[:k]) for k in range(len(PIECES) + 1)]


def test_token_spans_partition_the_trace():
    sents = segment_tokens(list(range(len(PIECES))), _decode)
    assert sents.strings() == ["Tom has 3.5 apples.", "He eats one.", "Done."]
    # the "\n\n" token (7) stays with the sentence before it
    assert sents.tokens == [(0, 8), (8, 12), (12, 14)]
    assert sents.shifted(10) == [(10, 18), (18, 22), (22, 24)]


def test_offsets_never_decrease_for_a_non_prefix_decode():
    # a decode that renders a partial prefix differently (a split multi-byte character)
    def decode(ids: list[int]) -> str:
        return "ab\ufffd" if list(ids) == [0, 1] else "".join(["ab", "é", " x."][i] for i in ids)

    text, offsets = token_offsets([0, 1, 2], decode)
    assert text == "abé x."
    assert offsets == [0, 2, 2, 6]  # the bad prefix takes the previous offset


def test_empty_trace_is_refused():
    with pytest.raises(ValueError, match="ids"):
        segment_tokens([], _decode)
