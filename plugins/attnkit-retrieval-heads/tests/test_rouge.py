"""ROUGE-1 recall against closed forms."""

from __future__ import annotations

import pytest

from attnkit_retrieval_heads.rouge import rouge1_recall, words


@pytest.mark.parametrize(
    ("reference", "prediction", "expected"),
    [
        ("eat a sandwich", "eat a sandwich", 1.0),
        ("eat a sandwich", "I would eat a big sandwich today", 1.0),
        ("eat a sandwich", "a sandwich", 2 / 3),
        ("eat a sandwich", "nothing relevant", 0.0),
        ("Eat A Sandwich!", "eat, a sandwich.", 1.0),  # case and punctuation ignored
        ("the cat and the dog", "the dog", 2 / 5),  # clipped: one "the" recalled of two
        ("the cat and the dog", "the the the dog cat and", 1.0),
        ("the the", "the", 1 / 2),
        ("", "anything", 0.0),
        ("sit in park", "", 0.0),
    ],
)
def test_rouge1_recall_closed_forms(reference: str, prediction: str, expected: float) -> None:
    assert rouge1_recall(reference, prediction) == pytest.approx(expected)


def test_recall_is_not_symmetric() -> None:
    ref, pred = "swim in a pool", "swim"
    assert rouge1_recall(ref, pred) == pytest.approx(1 / 4)
    assert rouge1_recall(pred, ref) == pytest.approx(1.0)


def test_words_rejects_non_strings() -> None:
    assert words("Dolores-Park, 2024!") == ["dolores", "park", "2024"]
    with pytest.raises(TypeError, match="text"):
        words(None)  # type: ignore[arg-type]
