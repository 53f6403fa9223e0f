"""The two tasks, generated locally and seeded: IOI-style prompts and Colored-Objects-style
prompts, each as clean / corrupted pairs of equal token length.

* **IOI** (Wang et al.'s indirect-object identification, the "mixed" ABBA / BABA templates):
  ``"When Mary and John went to the store, John gave a drink to"`` -> ``" Mary"``. The
  corrupted prompt replaces the second mention of the subject (S2) by a third name (the
  "ABC" corruption), so the prompt no longer says who the indirect object is. Logit
  difference: ``logit[IO] - logit[S]``; accuracy: the IO name beats the S name (chance 1/2).
* **Colored Objects** (BIG-bench ``reasoning_about_colored_objects``, one shot):
  ``"<one worked example>\\nOn the table, I see a red pen, a blue cup, and a green book. The cup is"``
  -> ``" blue"``. The corrupted prompt asks for another object of the same list (a one-token
  minimal difference), so its answer is that object's color. Logit difference:
  ``logit[clean answer] - logit[corrupted answer]``; accuracy: the right color beats the two
  other listed colors (chance 1/3).

Every filler (name, place, object, color) is one token of the tokenizer with its leading
space, so a clean prompt and its corruption have the same length; :func:`encode` checks it
and raises ``ValueError`` with both lengths otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COLORS",
    "NAMES",
    "TASKS",
    "Pair",
    "TaskBatch",
    "colored_objects_pairs",
    "encode",
    "ioi_pairs",
    "make_pairs",
]

TASKS = ("ioi", "colored_objects")

NAMES = [
    "Mary",
    "John",
    "Tom",
    "Anna",
    "Sarah",
    "David",
    "James",
    "Emma",
    "Paul",
    "Lisa",
    "Mark",
    "Kate",
    "Peter",
    "Laura",
    "Mike",
    "Alice",
    "Robert",
    "Susan",
    "Daniel",
    "Rachel",
    "Chris",
    "Amy",
    "Kevin",
    "Sophie",
    "Jack",
    "Helen",
    "George",
    "Linda",
    "Steve",
    "Julia",
    "Brian",
    "Nancy",
    "Eric",
    "Karen",
    "Adam",
    "Emily",
    "Ryan",
    "Jessica",
    "Sam",
    "Anne",
    "Ben",
    "Lucy",
    "Dan",
    "Rose",
    "Max",
    "Jane",
    "Luke",
    "Grace",
]
PLACES = ["store", "park", "school", "office", "garden", "station", "library", "beach", "restaurant", "hospital"]
GIFTS = ["drink", "book", "ball", "key", "letter", "gift", "flower", "ring"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink", "brown", "gray", "silver"]
OBJECTS = [
    "pen",
    "cup",
    "book",
    "key",
    "phone",
    "ball",
    "hat",
    "bag",
    "box",
    "lamp",
    "clock",
    "plate",
    "bowl",
    "shoe",
    "sock",
    "card",
    "coin",
    "ring",
    "fork",
    "spoon",
    "knife",
    "bottle",
    "pencil",
    "notebook",
    "wallet",
    "umbrella",
    "chair",
    "candle",
]
SURFACES = ["table", "desk", "floor", "shelf", "counter", "bed"]

#: IOI templates: {A} is the first-mentioned name, {B} the second; S2 is the last name.
IOI_TEMPLATES = (
    "When {A} and {B} went to the {P}, {S} gave a {G} to",
    "Then, {A} and {B} went to the {P}. {S} gave a {G} to",
    "After {A} and {B} went to the {P}, {S} gave a {G} to",
    "While {A} and {B} were working at the {P}, {S} gave a {G} to",
    "Friends {A} and {B} found a {G} at the {P}. {S} gave it to",
)

#: One worked example, then the question. SmolLM2-135M stays near chance (27% of 48, 3 options)
#: on BIG-bench's "What color is the X?\nA:" form; with a statement to complete ("The cup is")
#: it is well above chance (see the README).
CO_SHOT = "On the desk, I see a red pen, a blue cup, and a green book. The cup is blue.\n"
CO_TEMPLATE = "On the {W}, I see a {c0} {o0}, a {c1} {o1}, and a {c2} {o2}. The {oq} is"


@dataclass(frozen=True)
class Pair:
    """One clean / corrupted prompt pair.

    :ivar answer: the clean prompt's right continuation (``" Mary"``).
    :ivar wrong: the competitor the logit difference is taken against (``" John"``).
    :ivar candidates: every option accuracy picks among (answer first).
    """

    task: str
    clean: str
    corrupted: str
    answer: str
    wrong: str
    candidates: tuple[str, ...]


def ioi_pairs(n: int, seed: int = 0) -> list[Pair]:
    """``n`` seeded IOI pairs, ABBA and BABA orders alternating, templates cycling."""
    rng = random.Random(f"ioi-{seed}")
    out = []
    for i in range(n):
        io, s, c = rng.sample(NAMES, 3)
        a, b = (io, s) if i % 2 == 0 else (s, io)
        template = IOI_TEMPLATES[(i // 2) % len(IOI_TEMPLATES)]
        fill = {"A": a, "B": b, "P": rng.choice(PLACES), "G": rng.choice(GIFTS)}
        clean = template.format(S=s, **fill)
        corrupted = template.format(S=c, **fill)
        out.append(Pair("ioi", clean, corrupted, " " + io, " " + s, (" " + io, " " + s)))
    return out


def colored_objects_pairs(n: int, seed: int = 0) -> list[Pair]:
    """``n`` seeded one-shot Colored Objects pairs; the asked position cycles over the three
    objects so no position is favoured."""
    rng = random.Random(f"cobjs-{seed}")
    out = []
    for i in range(n):
        colors = rng.sample(COLORS, 3)
        objects = rng.sample(OBJECTS, 3)
        q = i % 3
        other = (q + 1 + rng.randrange(2)) % 3
        fill: dict[str, Any] = {"W": rng.choice(SURFACES)}
        for j in range(3):
            fill[f"c{j}"], fill[f"o{j}"] = colors[j], objects[j]
        clean = CO_SHOT + CO_TEMPLATE.format(oq=objects[q], **fill)
        corrupted = CO_SHOT + CO_TEMPLATE.format(oq=objects[other], **fill)
        cands = (" " + colors[q], *(" " + colors[j] for j in range(3) if j != q))
        out.append(Pair("colored_objects", clean, corrupted, " " + colors[q], " " + colors[other], cands))
    return out


def make_pairs(task: str, n: int, seed: int = 0) -> list[Pair]:
    """``n`` pairs of ``task`` (one of :data:`TASKS`)."""
    if task == "ioi":
        return ioi_pairs(n, seed)
    if task == "colored_objects":
        return colored_objects_pairs(n, seed)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


@dataclass
class TaskBatch:
    """Token ids of pairs that share one length ``T``.

    :ivar clean: ``(N, T)`` int64.
    :ivar corrupted: ``(N, T)`` int64.
    :ivar answer: ``(N,)`` token id of the right continuation.
    :ivar wrong: ``(N,)`` token id of the logit-difference competitor.
    :ivar candidates: ``(N, C)`` token ids accuracy picks among (column 0 is the answer).
    """

    task: str
    clean: Any
    corrupted: Any
    answer: Any
    wrong: Any
    candidates: Any

    def __len__(self) -> int:
        return int(self.clean.shape[0])


def _one_token(tok: Any, text: str, what: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{what} {text!r} is {len(ids)} tokens for this tokenizer; the tasks need one token")
    return int(ids[0])


def encode(pairs: list[Pair], tok: Any) -> list[TaskBatch]:
    """Tokenise ``pairs`` into batches of equal length (one per length met, longest first).

    :raises ValueError: when a clean prompt and its corruption differ in length, or an
        answer is not one token.
    """
    import torch

    if not pairs:
        raise ValueError("pairs is empty")
    groups: dict[int, list[tuple[list[int], list[int], int, int, list[int]]]] = {}
    for i, p in enumerate(pairs):
        clean = tok(p.clean, add_special_tokens=False)["input_ids"]
        corrupted = tok(p.corrupted, add_special_tokens=False)["input_ids"]
        if len(clean) != len(corrupted):
            raise ValueError(
                f"pairs[{i}]: clean prompt is {len(clean)} tokens, corrupted {len(corrupted)}; they must be equal"
            )
        cands = [_one_token(tok, c, f"pairs[{i}] candidate") for c in p.candidates]
        row = (clean, corrupted, cands[0], _one_token(tok, p.wrong, f"pairs[{i}].wrong"), cands)
        groups.setdefault(len(clean), []).append(row)
    out = []
    for _, rows in sorted(groups.items(), reverse=True):
        out.append(
            TaskBatch(
                task=pairs[0].task,
                clean=torch.tensor([r[0] for r in rows]),
                corrupted=torch.tensor([r[1] for r in rows]),
                answer=torch.tensor([r[2] for r in rows]),
                wrong=torch.tensor([r[3] for r in rows]),
                candidates=torch.tensor([r[4] for r in rows]),
            )
        )
    return out
