"""Needle-in-a-haystack prompts, generated locally and seeded (nothing is downloaded).

The main job (``attnkit run``), ``attnkit bench cache`` and the retrieval-heads plugin all ask
a model to find one fact in a long context; this module builds those prompts. It follows the
retrieval-head paper (Wu et al. 2024, arXiv:2404.15574) except for the haystack: the paper's
haystacks are Paul Graham essays; here the haystack is synthetic prose assembled from word
lists, so runs are offline and reproducible. The needle follows the paper's
``needles.jsonl``: "The best thing to do in <city> is <activity>.", asked back as "What is the
best thing to do in <city>?", with the activity as the answer (the paper's ``real_needle``).
The needle goes in at a sentence boundary at the requested depth, and the prompt is
"<context> Based on the content of the book, Question: <q>\\nAnswer:" as the user turn
of the tokenizer's chat template (plain text when the tokenizer has no template).

Everything is a function of its arguments: the same ``seed``, ``length`` and tokenizer give
the same token ids. Importing this module imports neither torch nor transformers (only
:meth:`NeedleCase.tensor` needs torch); any object with the Hugging Face tokenizer call
``tokenizer(text, add_special_tokens=False)["input_ids"]`` works.

>>> from attnkit.data.needles import make_case
>>> case = make_case(tokenizer, length=1024, depth=50.0, seed=0)  # doctest: +SKIP
>>> case.tensor().shape, case.answer  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["NEEDLES", "NeedleCase", "find_needle_span", "haystack_sentences", "make_case", "make_cases"]

#: (city, activity) pairs; the activity is the answer a retrieval must copy.
NEEDLES: tuple[tuple[str, str], ...] = (
    ("Beijing", "eat dumplings and walk along the old city wall at dawn"),
    ("San Francisco", "eat a sandwich and sit in Dolores Park on a sunny day"),
    ("Lisbon", "ride the yellow tram and listen to fado music at night"),
    ("Kyoto", "visit the bamboo forest and drink green tea in a quiet garden"),
    ("Nairobi", "watch giraffes at the sanctuary and eat roasted maize"),
    ("Reykjavik", "swim in a geothermal pool and watch the northern lights"),
    ("Buenos Aires", "dance tango in a small club and eat grilled steak"),
    ("Istanbul", "take a ferry across the Bosphorus and drink strong coffee"),
    ("Montreal", "eat fresh bagels and skate on the frozen canal"),
    ("Hanoi", "drink egg coffee and watch the scooters around the lake"),
    ("Oslo", "ski through the forest and eat brown cheese on bread"),
    ("Cairo", "climb the great pyramid and sail a felucca on the Nile"),
)

_ADJ = (
    "quiet",
    "old",
    "careful",
    "bright",
    "patient",
    "small",
    "distant",
    "heavy",
    "simple",
    "curious",
    "gentle",
    "narrow",
    "modest",
    "steady",
    "pale",
    "sturdy",
    "clever",
    "plain",
    "broad",
    "humble",
)
_NOUN = (
    "farmer",
    "engineer",
    "river",
    "committee",
    "teacher",
    "machine",
    "garden",
    "letter",
    "council",
    "painter",
    "bridge",
    "merchant",
    "library",
    "student",
    "harbor",
    "clock",
    "village",
    "writer",
    "factory",
    "orchard",
)
_VERB = (
    "studied",
    "repaired",
    "described",
    "ignored",
    "measured",
    "followed",
    "painted",
    "questioned",
    "built",
    "noticed",
    "carried",
    "counted",
    "cleaned",
    "admired",
    "watched",
    "recorded",
    "tested",
    "moved",
)
_PLACE = (
    "the valley",
    "the market",
    "the old mill",
    "the hills",
    "the workshop",
    "the coast",
    "the square",
    "the station",
    "the archive",
    "the meadow",
    "the shipyard",
    "the school",
)
_TIME = (
    "in the morning",
    "after the storm",
    "during the long winter",
    "before the harvest",
    "every Tuesday",
    "late at night",
    "for many years",
    "at the end of the season",
    "once a month",
    "since the war",
)
_ABSTRACT = (
    "patience",
    "progress",
    "trade",
    "memory",
    "craft",
    "weather",
    "distance",
    "habit",
    "silence",
    "effort",
)


def _sentence(rng: random.Random) -> str:
    a, n, v, p, t = rng.choice(_ADJ), rng.choice(_NOUN), rng.choice(_VERB), rng.choice(_PLACE), rng.choice(_TIME)
    a2, n2, x = rng.choice(_ADJ), rng.choice(_NOUN), rng.choice(_ABSTRACT)
    forms = (
        f"The {a} {n} {v} the {a2} {n2} near {p} {t}.",
        f"{t.capitalize()}, a {a} {n} {v} {p}.",
        f"Nobody in {p} {v} the {n} as carefully as the {a2} {n2}.",
        f"Some say that {x} matters more to a {n} than to a {n2}.",
        f"The {n} near {p} was {a}, and the {n2} was {a2}.",
        f"It is often said that {x} and {rng.choice(_ABSTRACT)} grow together {t}.",
        f"A {a} {n2} once {v} every {n} in {p}.",
    )
    return rng.choice(forms)


def haystack_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` filler sentences, the same for the same ``seed``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


@dataclass(frozen=True)
class NeedleCase:
    """One needle-in-a-haystack instance.

    :ivar input_ids: the full prompt token ids (chat template applied), ``(T,)`` as a list.
    :ivar span: ``(s, e)``: the answer tokens inside ``input_ids`` are ``input_ids[s:e]``.
    :ivar answer: the needle answer (the activity), the ROUGE reference.
    :ivar question: the question asked.
    :ivar needle: the inserted needle sentence.
    :ivar length: requested context length in tokens.
    :ivar context_tokens: measured context length (haystack plus needle) in tokens.
    :ivar depth: requested depth in percent.
    :ivar needle_token: where the needle starts in the context, in tokens (measured).
    :ivar needle_tokens: tokens of the needle sentence.
    """

    input_ids: list[int]
    span: tuple[int, int]
    answer: str
    question: str
    needle: str
    length: int
    context_tokens: int
    depth: float
    needle_token: int
    needle_tokens: int

    def tensor(self) -> Any:
        """``input_ids`` as a ``(1, T)`` int64 tensor."""
        import torch

        return torch.tensor([self.input_ids], dtype=torch.long)

    @property
    def actual_depth(self) -> float:
        """Measured depth of the needle start in percent of the haystack tokens."""
        hay = self.context_tokens - self.needle_tokens
        return 100.0 * self.needle_token / max(1, hay)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def find_needle_span(
    input_ids: Sequence[int], tokenizer: Any, answer: str, min_overlap: float = 0.9
) -> tuple[int, int]:
    """Locate ``answer`` in ``input_ids`` the paper's way: the first window of the answer's token
    length whose token *set* covers more than ``min_overlap`` of the answer's token set.

    Set overlap tolerates a different tokenisation at the window's edges, but a repeated
    phrase can be found at the wrong place (the paper's trap); of equally good windows the
    first wins, which is also the paper's choice.

    :raises ValueError: naming the best overlap seen when no window passes.
    """
    ids = list(input_ids)
    best, best_at = -1.0, (0, 0)
    for variant in (" " + answer, answer):
        target = _ids(tokenizer, variant)
        want = set(target)
        n = len(target)
        if n == 0 or n > len(ids):
            continue
        for s in range(len(ids) - n + 1):
            overlap = len(set(ids[s : s + n]) & want) / len(want)
            if overlap > best:
                best, best_at = overlap, (s, s + n)
            if overlap == 1.0:
                break
        if best > min_overlap:
            return best_at
    raise ValueError(
        f"answer {answer!r} not found in input_ids (length {len(ids)}): best token-set overlap {best:.2f} <= {min_overlap}"
    )


def _prompt_ids(tokenizer: Any, context: str, question: str, answer_prefix: str | None) -> list[int]:
    user = f"{context}\n\nBased on the content of the book, Question: {question}\nAnswer:"
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True
        )
        ids = list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    else:
        ids = _ids(tokenizer, user)
    if answer_prefix:
        ids += _ids(tokenizer, answer_prefix)
    return ids


def make_case(
    tokenizer: Any,
    length: int,
    depth: float,
    *,
    needle: tuple[str, str] | None = None,
    seed: int = 0,
    answer_prefix: bool = False,
) -> NeedleCase:
    """One case with a context of about ``length`` tokens and the needle at ``depth`` percent.

    The context is haystack sentences plus the needle, measured with ``tokenizer``; it stays
    within one sentence (about 25 tokens) below ``length``. The needle goes at the sentence
    boundary closest to ``depth`` percent of the haystack tokens (0: first, 100: last).

    :param tokenizer: a Hugging Face tokenizer (chat template used when it has one).
    :param length: context length in tokens of ``tokenizer`` (the chat template adds a few).
    :param depth: where the needle goes, in percent of the haystack.
    :param needle: ``(city, activity)``; default: from :data:`NEEDLES` by ``seed``.
    :param seed: picks the haystack sentences (and the needle when ``needle`` is ``None``).
    :param answer_prefix: start the answer with "The best thing to do in <city> is" after the
        generation prompt (helps very small models; the paper does not).
    :raises TypeError: for a ``length`` that is not an int.
    :raises ValueError: for a length too short for the needle and one sentence, or a depth
        outside [0, 100].
    """
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"length must be an int number of tokens, got {type(length).__name__}")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0 <= depth <= 100:
        raise ValueError(f"depth must be a percentage in [0, 100], got {depth!r}")
    city, activity = needle if needle is not None else NEEDLES[seed % len(NEEDLES)]
    needle_text = f"The best thing to do in {city} is {activity}."
    question = f"What is the best thing to do in {city}?"
    needle_len = len(_ids(tokenizer, " " + needle_text))
    if length < needle_len + 8:
        raise ValueError(
            f"length must be >= {needle_len + 8} tokens for this needle ({needle_len} tokens), got {length}"
        )
    rng_seed = seed * 1_000_003 + length
    pool: list[str] = []
    sizes: list[int] = []
    total = 0
    batch = 0
    # Sentences are measured one by one with their leading space; BPE keeps " word" tokens
    # intact across the join, so the sum matches the joined text to within a token or two.
    while total + needle_len < length:
        for s in haystack_sentences(64, seed=rng_seed + batch):
            n = len(_ids(tokenizer, " " + s))
            if total + n + needle_len > length:
                break
            pool.append(s)
            sizes.append(n)
            total += n
        else:
            batch += 1
            continue
        break
    cum = list(itertools.accumulate([0, *sizes]))
    target = depth / 100.0 * total
    k = min(range(len(cum)), key=lambda i: (abs(cum[i] - target), i))
    context = " ".join([*pool[:k], needle_text, *pool[k:]])
    context_ids = _ids(tokenizer, context)
    answer = activity
    ids = _prompt_ids(tokenizer, context, question, f"The best thing to do in {city} is" if answer_prefix else None)
    span = find_needle_span(ids, tokenizer, answer)
    # Where the needle sentence starts inside the context, measured on the joined text.
    needle_token = len(_ids(tokenizer, " ".join(pool[:k]))) if k else 0
    return NeedleCase(
        input_ids=ids,
        span=span,
        answer=answer,
        question=question,
        needle=needle_text,
        length=length,
        context_tokens=len(context_ids),
        depth=float(depth),
        needle_token=needle_token,
        needle_tokens=needle_len,
    )


def make_cases(
    tokenizer: Any,
    n_cases: int,
    lengths: Sequence[int],
    depths: Sequence[float],
    seed: int = 0,
    answer_prefix: bool = False,
) -> list[NeedleCase]:
    """``n_cases`` cases cycling over ``depths`` × ``lengths`` (lengths fastest), each with its own needle and
    haystack (needles cycle through :data:`NEEDLES`, shifted by ``seed``)."""
    if isinstance(n_cases, bool) or not isinstance(n_cases, int) or n_cases < 1:
        raise ValueError(f"n_cases must be an int >= 1, got {n_cases!r}")
    if not lengths or not depths:
        raise ValueError(f"lengths and depths must be non-empty, got {len(lengths)} lengths and {len(depths)} depths")
    # lengths vary fastest, so a few cases already span every length
    grid = [(length, depth) for depth in depths for length in lengths]
    out = []
    for i in range(n_cases):
        length, depth = grid[i % len(grid)]
        out.append(
            make_case(
                tokenizer,
                int(length),
                float(depth),
                needle=NEEDLES[(seed + i) % len(NEEDLES)],
                seed=seed * 7919 + i,
                answer_prefix=answer_prefix,
            )
        )
    return out
