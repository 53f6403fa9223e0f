"""Sentence segmentation of a reasoning trace, and the token span of every sentence.

The paper splits a chain of thought into sentences ("chunks") and works on token ranges
``[start_i, end_i)``. Its code maps characters to tokens by re-tokenising each prefix
``text[:char]``, which assumes prefix-stable tokenisation (false for BPE merges across a
boundary). Here token boundaries come from the generated ids themselves: the character offset
of token ``k`` is ``len(decode(ids[:k]))``, so the spans index exactly the tokens the model
produced.

Pure Python: no torch import.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["ABBREVIATIONS", "Sentences", "segment_tokens", "split_sentences", "token_offsets"]

#: Words whose trailing period does not end a sentence (compared lower-case, without the dot).
ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al",
        "approx", "fig", "eq", "eqn", "no", "vol", "inc", "ltd", "co", "mt", "ft", "in", "lb", "oz",
    }
)  # fmt: skip
_TERMINAL = ".!?"
#: Characters that may close a sentence after its terminal mark: quotes, brackets, markdown bold.
_CLOSERS = "\"')]}*»”’"
_WORD_BEFORE = re.compile(r"([A-Za-z]+(?:\.[A-Za-z]+)*)$")
_LIST_MARKER = re.compile(r"^\s*(\d{1,3}|[A-Za-z])$")


def _period_ends_sentence(text: str, sent_start: int, dot: int, after: int) -> bool:
    """Whether the single ``.`` at ``dot`` (followed by whitespace or the end at ``after``)
    ends the sentence that began at ``sent_start``."""
    before = text[sent_start:dot]
    # "1. First, ..." / "a. ..." : a list marker is not a sentence of its own
    if _LIST_MARKER.match(before):
        return False
    word = _WORD_BEFORE.search(before)
    if word and word.group(1).lower() in ABBREVIATIONS:
        return False
    # "3 p.m. today": a lower-case continuation after a period is not a new sentence
    rest = text[after:].lstrip(" \t")
    return not (rest[:1].islower())


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans ``[(start, end), ...]`` of the sentences of ``text``.

    A sentence ends at a newline, or at ``.`` / ``!`` / ``?`` (runs such as ``?!`` or ``...``
    included, then closing quotes, brackets or ``*``) followed by whitespace or the end of the
    text. A period does not end a sentence inside a number (``3.5``), after an abbreviation
    (``e.g.``, ``Dr.``: :data:`ABBREVIATIONS`), after a list marker at the start of a sentence
    (``1.``) or before a lower-case word. Spans are stripped of surrounding whitespace; a piece
    without any letter or digit (``**``, ``---``) joins the sentence before it (the next one
    when it comes first).

    :param text: the reasoning trace.
    :returns: non-overlapping spans in order; every non-whitespace character lies in one.
    :raises TypeError: when ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    raw: list[tuple[int, int]] = []
    n = len(text)
    start: int | None = None
    i = 0
    while i < n:
        c = text[i]
        if c == "\n":
            if start is not None:
                raw.append((start, i))
                start = None
            i += 1
            continue
        if start is None:
            if c.isspace():
                i += 1
                continue
            start = i
        if c in _TERMINAL:
            j = i + 1
            while j < n and text[j] in _TERMINAL:
                j += 1
            while j < n and text[j] in _CLOSERS:
                j += 1
            at_break = j == n or text[j].isspace()
            single_dot = c == "." and j - i >= 1 and text[i:j].rstrip(_CLOSERS) == "."
            if at_break and (not single_dot or _period_ends_sentence(text, start, i, j)):
                raw.append((start, j))
                start = None
            i = j
            continue
        i += 1
    if start is not None:
        raw.append((start, n))
    spans = [(s, s + len(text[s:e].rstrip())) for s, e in raw]
    spans = [(s, e) for s, e in spans if e > s]
    # punctuation-only pieces join a neighbour
    merged: list[tuple[int, int]] = []
    pending: int | None = None  # start of leading punctuation-only pieces
    for s, e in spans:
        if not any(ch.isalnum() for ch in text[s:e]):
            if merged:
                merged[-1] = (merged[-1][0], e)
            elif pending is None:
                pending = s
            continue
        if pending is not None:
            s, pending = pending, None
        merged.append((s, e))
    if pending is not None:  # nothing but punctuation: one sentence
        merged.append((pending, spans[-1][1]))
    return merged


def token_offsets(ids: Sequence[int], decode: Callable[[list[int]], str]) -> tuple[str, list[int]]:
    """``(text, offsets)``: the decoded text of ``ids`` and the character offset where each
    token starts (``offsets[k] = len(decode(ids[:k]))``, plus ``len(text)`` at the end).

    A prefix whose decoding is not a prefix of the whole text (a byte-level token split inside
    a multi-byte character) takes the previous offset, so offsets never decrease.

    :param ids: the token ids, ``(T,)``.
    :param decode: ``list[int] -> str`` (e.g. a tokenizer's ``decode`` with
        ``skip_special_tokens=False``).
    :returns: the text and ``T + 1`` offsets.
    """
    ids = [int(i) for i in ids]
    text = decode(ids)
    offsets = [0]
    for k in range(1, len(ids)):
        prefix = decode(ids[:k])
        off = len(prefix) if text.startswith(prefix) else offsets[-1]
        offsets.append(max(off, offsets[-1]))
    offsets.append(len(text))
    return text, offsets


@dataclass(frozen=True)
class Sentences:
    """The sentences of one trace.

    :ivar text: the decoded trace.
    :ivar chars: character span of every sentence.
    :ivar tokens: token span ``[start, end)`` of every sentence, relative to the trace's first
        token; the spans partition the trace (every token is in exactly one).
    """

    text: str
    chars: list[tuple[int, int]]
    tokens: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.tokens)

    def strings(self) -> list[str]:
        return [self.text[s:e] for s, e in self.chars]

    def shifted(self, offset: int) -> list[tuple[int, int]]:
        """Token spans as absolute positions of a sequence whose trace starts at ``offset``."""
        return [(s + offset, e + offset) for s, e in self.tokens]


def segment_tokens(ids: Sequence[int], decode: Callable[[list[int]], str]) -> Sentences:
    """Split the trace ``ids`` into sentences and give each its token span.

    A token belongs to the sentence holding its first non-whitespace character; a token of
    whitespace only (``"\\n\\n"``) stays with the sentence before it (the first sentence when
    it leads). A sentence left without a token of its own (one token covering its whole text
    and the end of the previous sentence) is merged into that previous sentence.

    :raises ValueError: for an empty trace or one without any non-whitespace text.
    """
    if len(ids) == 0:
        raise ValueError("ids must hold at least one token, got 0")
    text, offsets = token_offsets(ids, decode)
    chars = split_sentences(text)
    if not chars:
        raise ValueError(f"the trace has no sentence (decoded text {text[:60]!r})")
    starts = [s for s, _ in chars]
    owner: list[int] = []
    for k in range(len(ids)):
        piece = text[offsets[k] : offsets[k + 1]]
        lead = len(piece) - len(piece.lstrip())
        if lead == len(piece):  # whitespace only (or empty)
            owner.append(owner[-1] if owner else 0)
        else:
            owner.append(max(0, bisect.bisect_right(starts, offsets[k] + lead) - 1))
    # monotone by construction of offsets; guard against a decode that is not
    for k in range(1, len(owner)):
        owner[k] = max(owner[k], owner[k - 1])
    tok_spans: list[tuple[int, int]] = []
    char_spans: list[tuple[int, int]] = []
    for idx in sorted(set(owner)):
        first = owner.index(idx)
        last = len(owner) - owner[::-1].index(idx)
        tok_spans.append((first, last))
        char_spans.append(chars[idx])
    # sentences without tokens: their text joins the previous owner's span
    merged_chars: list[tuple[int, int]] = []
    owners = sorted(set(owner))
    for n, idx in enumerate(owners):
        nxt = owners[n + 1] if n + 1 < len(owners) else len(chars)
        merged_chars.append((chars[idx][0], chars[nxt - 1][1]))
    if owners[0] != 0:  # a leading sentence without tokens joins the first
        merged_chars[0] = (chars[0][0], merged_chars[0][1])
    return Sentences(text=text, chars=merged_chars, tokens=tok_spans)
