"""Seeded, locally generated label-likelihood tasks (nothing is downloaded).

Two families, chosen because SmolLM2-135M-Instruct solves them often but not always:

* ``sentiment``: a one- or two-clause review ("At first the hotel seemed bland, but in the
  end it was lovely."), labels `` positive`` / `` negative``;
* ``antonym``: four words are listed and the model picks the opposite of a given word,
  labels the four words.

An item is scored as the released code scores classification: the next-token logits at the
last prompt position, restricted to the first token of each label, argmax.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["Item", "make_items", "split_items"]

_POS = ["wonderful", "excellent", "delightful", "great", "superb", "lovely", "fantastic", "charming"]
_NEG = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "bland", "poor"]
_NOUNS = ["movie", "meal", "hotel", "concert", "book", "service", "show", "trip", "game", "museum"]
_ANTONYMS = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "light": "dark",
    "tall": "short",
    "rich": "poor",
    "old": "young",
    "hard": "soft",
    "early": "late",
    "full": "empty",
    "wet": "dry",
    "loud": "quiet",
    "strong": "weak",
    "open": "closed",
    "thick": "thin",
}


@dataclass(frozen=True)
class Item:
    """One task item: ``prompt``, the label strings ``choices`` and the right one's index."""

    prompt: str
    choices: tuple[str, ...]
    label: int
    family: str


def _sentiment(rng: random.Random) -> Item:
    noun, label = rng.choice(_NOUNS), rng.randrange(2)
    good, bad = rng.choice(_POS), rng.choice(_NEG)
    final, first = (good, bad) if label == 0 else (bad, good)
    if rng.random() < 0.5:
        text = f"The {noun} was {final}."
    else:
        text = f"At first the {noun} seemed {first}, but in the end it was {final}."
    return Item(f"Review: {text}\nSentiment (positive or negative):", (" positive", " negative"), label, "sentiment")


def _antonym(rng: random.Random) -> Item:
    words = rng.sample(sorted(_ANTONYMS), 4)
    label = rng.randrange(4)
    options = [_ANTONYMS[w] for w in words]
    prompt = f'Words: {", ".join(options)}.\nWhich of these words is the opposite of "{words[label]}"? Answer:'
    return Item(prompt, tuple(" " + o for o in options), label, "antonym")


def make_items(n: int, seed: int = 0, task: str = "mixed") -> list[Item]:
    """``n`` distinct items (distinct prompts), seeded; ``task`` ``"mixed"`` alternates the
    families.

    :raises ValueError: for an unknown ``task`` or when ``n`` distinct items cannot be made.
    """
    makers = {"sentiment": [_sentiment], "antonym": [_antonym], "mixed": [_sentiment, _antonym]}
    if task not in makers:
        raise ValueError(f"task must be one of {', '.join(makers)}, got {task!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    rng = random.Random(seed)
    fams = makers[task]
    out: list[Item] = []
    seen: set[str] = set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 100:
            raise ValueError(f"could not make {n} distinct {task} items (made {len(out)})")
        item = fams[len(out) % len(fams)](rng)
        if item.prompt in seen:
            continue
        seen.add(item.prompt)
        out.append(item)
    return out


def split_items(n_cal: int, n_test: int, seed: int = 0, task: str = "mixed") -> tuple[list[Item], list[Item]]:
    """Disjoint calibration and held-out splits (no prompt in both)."""
    items = make_items(n_cal + n_test, seed, task)
    rng = random.Random(seed + 1)
    rng.shuffle(items)
    return items[:n_cal], items[n_cal:]
