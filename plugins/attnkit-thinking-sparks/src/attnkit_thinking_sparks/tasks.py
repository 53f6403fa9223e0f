"""Generated tasks, seeded and local: bytes of Python's own documentation for the base model,
multi-digit addition written out step by step for post-training, and few-shot single-digit
addition for SmolLM2.

Every task item is ``(prompt, target)`` text; a model is scored on the target's tokens with
teacher forcing (the prompt's tokens are context only).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "STEP_END",
    "ByteTokenizer",
    "addition_item",
    "addition_items",
    "docs_text",
    "few_shot_items",
]

#: Ends a step of the written-out addition (and an answer ends with a newline).
STEP_END = ";"


@dataclass(frozen=True)
class ByteTokenizer:
    """ASCII bytes as token ids (vocabulary 128): ``encode("a") == [97]``. A character outside
    ASCII becomes ``"?"``, so any text encodes and every id decodes."""

    vocab_size: int = 128

    def encode(self, text: str) -> list[int]:
        return [o if (o := ord(c)) < 128 else ord("?") for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    @property
    def eos_token_id(self) -> int:
        return ord("\n")


def docs_text() -> str:
    """The base model's corpus: every topic of ``pydoc_data.topics`` (the text ``help()``
    shows, shipped with CPython), in key order, about 460 k characters."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def addition_item(a: int, b: int, digits: int) -> tuple[str, str]:
    """``a + b`` written out digit by digit, least significant first, carry explicit::

        addition_item(37, 48, 2) == ("37+48:", "7+8+0=15;3+4+1=08;=085\\n")

    Every item of a ``digits`` size has the same length (operands zero-padded), so a batch
    needs no padding.

    :raises ValueError: naming ``a`` / ``b`` when they do not fit in ``digits`` digits.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    for name, x in (("a", a), ("b", b)):
        if not 0 <= x < 10**digits:
            raise ValueError(f"{name} must be in [0, {10**digits}) for digits={digits}, got {x}")
    sa, sb = f"{a:0{digits}d}", f"{b:0{digits}d}"
    steps, carry = [], 0
    for i in range(digits - 1, -1, -1):
        da, db = int(sa[i]), int(sb[i])
        s = da + db + carry
        steps.append(f"{da}+{db}+{carry}={s:02d}{STEP_END}")
        carry = s // 10
    return f"{sa}+{sb}:", "".join(steps) + f"={a + b:0{digits + 1}d}\n"


def addition_items(n: int, digits: int, seed: int) -> list[tuple[str, str]]:
    """``n`` seeded :func:`addition_item` problems with operands drawn uniformly."""
    rng = random.Random(seed)
    hi = 10**digits - 1
    return [addition_item(rng.randint(0, hi), rng.randint(0, hi), digits) for _ in range(n)]


def few_shot_items(n: int, seed: int, shots: int = 2) -> list[tuple[str, str]]:
    """``n`` seeded few-shot single-digit additions for a pretrained model::

        ("6+6=12\\n0+4=4\\n8+7=", "15")

    :raises ValueError: naming ``shots`` when it is negative.
    """
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pairs = [(rng.randint(0, 9), rng.randint(0, 9)) for _ in range(shots + 1)]
        context = "".join(f"{a}+{b}={a + b}\n" for a, b in pairs[:-1])
        a, b = pairs[-1]
        out.append((f"{context}{a}+{b}=", str(a + b)))
    return out
