"""Seeded entity-binding prompts and their counterfactuals.

A prompt binds ``n`` names to ``n`` objects and asks for the object of one name::

    Pairs: Alan - cups, Ruth - hats, Carl - pens, Dave - toys. Again: Ruth - hats

    Pairs: Ann - apples, Tom - pears, Bob - grapes, Sam - nuts. Again: Tom -

(the first paragraph is a worked example drawn from a separate pool, so a 135M model answers
with a listed object; without it SmolLM2-135M is near chance). Every entity is one token with
its leading space, so swapping entities keeps the token count and every position: the
counterfactual pair has equal lengths, which residual patching at the last token needs.

The counterfactual follows the paper's design (upstream ``ppkn_simpler_counterfactual_template_
split_key_loc``, rebuilt here from its description): for a base prompt querying group ``q``,
the counterfactual queries another group ``c`` and, relative to the base,

* swaps the *objects* of groups ``c`` and ``s``, so its answer is the base's object of ``s``;
* swaps the *names* of groups ``c`` and ``w``, so its query name is the base's name of ``w``.

After the counterfactual's last-token state is patched into the base, each mechanism points to
a different base group: positional -> ``c`` (the index), lexical -> ``w`` (the query name),
reflexive -> ``s`` (the answer token itself), no effect -> ``q``. Upstream allows ``w == s``;
here ``q, c, s, w`` are kept distinct so the three mechanisms are separable (``n >= 4``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEMO_NAMES",
    "DEMO_OBJECTS",
    "MECHANISMS",
    "NAMES",
    "OBJECTS",
    "BindingPrompt",
    "CounterfactualPair",
    "EncodedPairs",
    "encode_pairs",
    "encode_prompt",
    "make_pairs",
    "max_groups",
    "sample_prompts",
]

#: Name and object pools: one token each (with the leading space) in SmolLM2's tokenizer.
NAMES = [
    "Ann",
    "Tom",
    "Bob",
    "Mary",
    "John",
    "Sam",
    "Kate",
    "Jack",
    "Lucy",
    "Mark",
    "Paul",
    "Emma",
    "Mike",
    "Dan",
    "Ben",
    "Joe",
    "Amy",
    "Lisa",
    "Tim",
    "Max",
]
OBJECTS = [
    "apples",
    "pears",
    "grapes",
    "lemons",
    "cherries",
    "peaches",
    "bananas",
    "oranges",
    "carrots",
    "onions",
    "beans",
    "nuts",
    "eggs",
    "cakes",
    "books",
    "coins",
    "shoes",
    "bikes",
    "boats",
    "dolls",
]
#: The worked example's pools, disjoint from the main ones (its entities are never candidates).
DEMO_NAMES = ("Alan", "Ruth", "Carl", "Dave", "Eric", "Rose")
DEMO_OBJECTS = ("cups", "hats", "pens", "toys", "cars", "dogs")
DEMO_GROUPS = 4

#: Where the patched run's answer can point, as base groups: the three mechanisms and "no effect".
MECHANISMS = ("positional", "lexical", "reflexive", "no_effect")


@dataclass(frozen=True)
class BindingPrompt:
    """One binding prompt: ``names[i]`` is bound to ``objects[i]``; the question asks for
    ``objects[query]``. ``demo`` is the worked example ``(names, objects, query)``."""

    names: tuple[str, ...]
    objects: tuple[str, ...]
    query: int
    demo: tuple[tuple[str, ...], tuple[str, ...], int]

    @property
    def answer(self) -> str:
        return self.objects[self.query]

    def text(self) -> str:
        """The prompt string (ends right before the answer token)."""
        return "".join(piece for piece, _ in self.pieces())

    def pieces(self) -> list[tuple[str, str]]:
        """The prompt as ``(text, role)`` pieces; roles ``"name{i}"`` / ``"object{i}"`` /
        ``"query"`` / ``"demo"`` mark entity tokens (one token each), ``""`` the template."""
        dn, do, dq = self.demo
        out: list[tuple[str, str]] = [("Pairs:", "")]
        for i, (n, o) in enumerate(zip(dn, do)):
            out += [("," if i else "", ""), (f" {n}", "demo"), (" -", ""), (f" {o}", "demo")]
        out += [(". Again:", ""), (f" {dn[dq]}", "demo"), (" -", ""), (f" {do[dq]}", "demo"), ("\n\nPairs:", "")]
        for i, (n, o) in enumerate(zip(self.names, self.objects)):
            out += [("," if i else "", ""), (f" {n}", f"name{i}"), (" -", ""), (f" {o}", f"object{i}")]
        out += [(". Again:", ""), (f" {self.names[self.query]}", "query"), (" -", "")]
        return [(t, r) for t, r in out if t]


@dataclass(frozen=True)
class CounterfactualPair:
    """A base prompt, its counterfactual and the base group each mechanism points to.

    :ivar targets: ``{"positional": c, "lexical": w, "reflexive": s, "no_effect": q}``
        (indices into the base's groups, hence into its candidate objects).
    """

    base: BindingPrompt
    cf: BindingPrompt
    targets: dict[str, int]

    @property
    def position(self) -> int:
        """Position of the counterfactual's queried group (the positional pointer ``c``)."""
        return self.targets["positional"]


def max_groups() -> int:
    """The largest ``n_groups`` the entity pools allow."""
    return min(len(NAMES), len(OBJECTS))


def _check_groups(n_groups: int) -> None:
    if isinstance(n_groups, bool) or not isinstance(n_groups, int):
        raise TypeError(f"n_groups must be an int, got {type(n_groups).__name__} {n_groups!r}")
    if not 4 <= n_groups <= min(len(NAMES), len(OBJECTS)):
        raise ValueError(
            f"n_groups must be in [4, {min(len(NAMES), len(OBJECTS))}] (positional, lexical, reflexive and "
            f"no-effect targets must be four distinct groups), got {n_groups}"
        )


def _demo(rng: random.Random) -> tuple[tuple[str, ...], tuple[str, ...], int]:
    return (
        tuple(rng.sample(DEMO_NAMES, DEMO_GROUPS)),
        tuple(rng.sample(DEMO_OBJECTS, DEMO_GROUPS)),
        rng.randrange(DEMO_GROUPS),
    )


def sample_prompts(n: int, n_groups: int, seed: int = 0) -> list[BindingPrompt]:
    """``n`` seeded prompts; the queried position cycles ``0, 1, ..., n_groups - 1`` so every
    position is asked equally often."""
    _check_groups(n_groups)
    rng = random.Random(seed)
    return [
        BindingPrompt(
            tuple(rng.sample(NAMES, n_groups)), tuple(rng.sample(OBJECTS, n_groups)), i % n_groups, _demo(rng)
        )
        for i in range(n)
    ]


def make_pairs(n: int, n_groups: int, seed: int = 0) -> list[CounterfactualPair]:
    """``n`` seeded counterfactual pairs; the counterfactual's queried position ``c`` cycles over
    every position, the base's ``q`` and the swap partners ``s`` (object) and ``w`` (name) are
    drawn distinct from it and from each other."""
    _check_groups(n_groups)
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        c = i % n_groups
        q, s, w = rng.sample([j for j in range(n_groups) if j != c], 3)
        names = tuple(rng.sample(NAMES, n_groups))
        objects = tuple(rng.sample(OBJECTS, n_groups))
        base = BindingPrompt(names, objects, q, _demo(rng))
        cf_objects, cf_names = list(objects), list(names)
        cf_objects[c], cf_objects[s] = objects[s], objects[c]
        cf_names[c], cf_names[w] = names[w], names[c]
        cf = BindingPrompt(tuple(cf_names), tuple(cf_objects), c, base.demo)
        pairs.append(CounterfactualPair(base, cf, {"positional": c, "lexical": w, "reflexive": s, "no_effect": q}))
    return pairs


@dataclass(frozen=True)
class EncodedPairs:
    """Token ids of a batch of pairs (all of one length).

    :ivar base: ``(B, T)`` int64 base prompts.
    :ivar cf: ``(B, T)`` int64 counterfactual prompts.
    :ivar candidates: ``(B, n)`` int64 token id of each base group's object (the answer
        candidates; the counterfactual's candidates are the same set, permuted).
    :ivar cf_candidates: ``(B, n)`` int64 token id of each counterfactual group's object.
    :ivar targets: ``(B, 4)`` int64 base group of each of :data:`MECHANISMS`.
    :ivar first_name: position of the first group's name in the queried paragraph (the control
        patches a token from here on).
    """

    base: Any
    cf: Any
    candidates: Any
    cf_candidates: Any
    targets: Any
    first_name: int = 0


def _single_token(tokenizer: Any, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"entity {text!r} is {len(ids)} tokens in this tokenizer; candidates must be single tokens")
    return int(ids[0])


def encode_prompt(tokenizer: Any, prompt: BindingPrompt) -> tuple[list[int], dict[str, int]]:
    """Token ids of ``prompt`` and the position of each entity role (``"name0"``, ...,
    ``"query"``): each piece is tokenized on its own, so an entity is exactly one token at a
    position that does not depend on which entity it is.

    :raises ValueError: when an entity piece is not a single token.
    """
    ids: list[int] = []
    where: dict[str, int] = {}
    for text, role in prompt.pieces():
        if role:
            if role != "demo":
                where[role] = len(ids)
            ids.append(_single_token(tokenizer, text))
        else:
            ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids, where


def encode_pairs(tokenizer: Any, pairs: Sequence[CounterfactualPair]) -> EncodedPairs:
    """Token ids of ``pairs`` (see :class:`EncodedPairs`).

    :raises ValueError: when a pair's base and counterfactual differ in length, or the batch
        mixes lengths (different ``n_groups``).
    """
    import torch

    if not pairs:
        raise ValueError("pairs is empty")
    base, cf = [], []
    starts: set[int] = set()
    for i, p in enumerate(pairs):
        (b, where), (c, cf_where) = encode_prompt(tokenizer, p.base), encode_prompt(tokenizer, p.cf)
        if where != cf_where:
            raise ValueError(f"pairs[{i}]: entity positions differ between base {where} and counterfactual {cf_where}")
        starts.add(where["name0"])
        if len(b) != len(c):
            raise ValueError(f"pairs[{i}]: base has {len(b)} tokens, counterfactual {len(c)}; they must be equal")
        base.append(b)
        cf.append(c)
    lengths = sorted({len(b) for b in base})
    if len(lengths) > 1 or len(starts) > 1:
        raise ValueError(
            f"pairs mix token lengths {lengths} / paragraph starts {sorted(starts)}; batch pairs of one n_groups"
        )
    cand = [[_single_token(tokenizer, f" {o}") for o in p.base.objects] for p in pairs]
    cf_cand = [[_single_token(tokenizer, f" {o}") for o in p.cf.objects] for p in pairs]
    targets = [[p.targets[m] for m in MECHANISMS] for p in pairs]
    return EncodedPairs(
        torch.tensor(base),
        torch.tensor(cf),
        torch.tensor(cand),
        torch.tensor(cf_cand),
        torch.tensor(targets),
        starts.pop(),
    )
