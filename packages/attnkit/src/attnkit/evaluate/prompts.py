"""Needle-in-a-haystack prompts for ``attnkit eval cache``, each split into the context and
the question.

The cases are :func:`attnkit.data.needles.make_case`'s (the main job's generator); the prompt
is "<context>\\n\\nBased on the content of the book, Question: <q>\\nAnswer:" inside the chat
template. For the question-agnostic setting (kvpress's: the context is compressed before the
question is known) the same token ids are cut where the question part starts, so both
settings feed the model exactly the same tokens: question-aware in one forward, question-
agnostic as the context forward, then the question forward. The cut is found on the token
ids themselves (the longest tail whose decoded text still starts with the question part), so
it works for any tokenizer and never re-tokenises across the boundary.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MARKER", "SplitCase", "make_needle_cases", "question_start", "split_case"]

#: The first words of the question part of a needle prompt (:mod:`attnkit.data.needles`).
MARKER = "Based on the content of the book"
_SQUASHED = re.sub(r"\s+", "", MARKER)


@dataclass(frozen=True)
class SplitCase:
    """A needle case and where its question starts.

    :ivar case: the :class:`attnkit.data.needles.NeedleCase`.
    :ivar cut: ``case.input_ids[:cut]`` is the context (chat-template prefix included),
        ``case.input_ids[cut:]`` the question part (the blank line before it included).
    """

    case: Any
    cut: int

    @property
    def input_ids(self) -> list[int]:
        return list(self.case.input_ids)

    @property
    def context_ids(self) -> list[int]:
        return list(self.case.input_ids[: self.cut])

    @property
    def question_ids(self) -> list[int]:
        return list(self.case.input_ids[self.cut :])

    @property
    def answer(self) -> str:
        return str(self.case.answer)

    @property
    def length(self) -> int:
        return int(self.case.length)

    @property
    def depth(self) -> float:
        return float(self.case.depth)


def question_start(input_ids: Sequence[int], tokenizer: Any, marker: str = MARKER) -> int:
    """The index of the first token of the question part of ``input_ids``: the smallest
    ``s`` such that ``decode(input_ids[s:])`` holds ``marker`` but ``decode(input_ids[s + 1:])``
    no longer starts with it, moved back over whitespace-only tokens before it (the blank
    line). Whitespace is ignored in the comparison (word-level tokenizers decode with spaces).

    :raises ValueError: when ``marker`` is not in the decoded ids.
    """
    ids = list(input_ids)
    squashed = re.sub(r"\s+", "", marker)

    def tail(s: int) -> str:
        return re.sub(r"\s+", "", tokenizer.decode(ids[s:], skip_special_tokens=False))

    if squashed not in tail(0):
        raise ValueError(f"the question marker {marker!r} is not in the prompt ({len(ids)} tokens)")
    # the question part is short: scan from the end for the last start that still holds the marker
    s = len(ids) - 1
    while s > 0 and squashed not in tail(s):
        s -= 1
    while s > 0 and not tokenizer.decode([ids[s - 1]], skip_special_tokens=False).strip():
        s -= 1
    return s


def split_case(case: Any, tokenizer: Any) -> SplitCase:
    """``case`` with its context / question cut (:func:`question_start`)."""
    cut = question_start(case.input_ids, tokenizer)
    if cut < 1 or cut >= len(case.input_ids):
        raise ValueError(f"cannot split a {len(case.input_ids)}-token prompt at {cut}")
    return SplitCase(case=case, cut=cut)


def make_needle_cases(tokenizer: Any, cases: int, lengths: Sequence[int], seed: int = 0) -> list[SplitCase]:
    """``cases`` needle cases per length, the needle depths spread evenly over 0-100% (one case:
    50%), each with its own needle and haystack, split for both settings."""
    from attnkit.data.needles import NEEDLES, make_case

    if isinstance(cases, bool) or not isinstance(cases, int) or cases < 1:
        raise ValueError(f"cases must be an int >= 1, got {cases!r}")
    if not lengths:
        raise ValueError("lengths must be non-empty")
    out = []
    for length in lengths:
        for i in range(cases):
            depth = 50.0 if cases == 1 else 100.0 * i / (cases - 1)
            case = make_case(
                tokenizer, int(length), depth, needle=NEEDLES[(seed + i) % len(NEEDLES)], seed=seed * 7919 + i
            )
            out.append(split_case(case, tokenizer))
    return out
