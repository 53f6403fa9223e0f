"""ROUGE-1 recall, the paper's success test for a needle answer.

The paper calls ``rouge_score``'s ROUGE-1 with the Porter stemmer; this plain version
lowercases, splits on anything that is not a letter or digit and does not stem, so
"parks" and "park" differ here. Counts are clipped (a reference word used twice must be
produced twice to count twice).
"""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["rouge1_recall", "words"]

_NON_WORD = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    """Lowercased alphanumeric words of ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return [w for w in _NON_WORD.split(text.lower()) if w]


def rouge1_recall(reference: str, prediction: str) -> float:
    """Share of ``reference`` words (with multiplicity) that ``prediction`` contains, in [0, 1].

    An empty reference gives 0.0 (nothing can be recalled from it).
    """
    ref = Counter(words(reference))
    total = sum(ref.values())
    if total == 0:
        return 0.0
    pred = Counter(words(prediction))
    return sum(min(n, pred[w]) for w, n in ref.items()) / total
