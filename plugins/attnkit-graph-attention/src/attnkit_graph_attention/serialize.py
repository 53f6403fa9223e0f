"""Small graphs written as text: seeded random graphs, their edge-list / adjacency-line
serialisations with the character span of every node mention, token spans from a tokenizer's
offsets, and the zero-shot questions asked about them.

Node names are text (``A``, ``B``, ... or the names of a ``--prompts`` graph), so node tokens
are found by where the names were written, not by vocabulary id (the paper's node tokens are
new vocabulary ids >= 32000, which only works for its extended vocabulary).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch

from attnkit_graph_attention.masks import hop_distances

__all__ = [
    "KINDS",
    "Graph",
    "Question",
    "Serialized",
    "degree_question",
    "make_questions",
    "parse_graph",
    "random_graph",
    "relabelled",
    "serialize",
    "token_spans",
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
HEADERS = {"edges": "Graph edges:\n", "adjacency": "Graph (each node: its neighbours):\n"}


@dataclass(frozen=True)
class Graph:
    """An undirected simple graph: ``names[i]`` is node ``i``; ``edges`` are ``(u, v)``, ``u < v``."""

    names: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]

    @property
    def n(self) -> int:
        return len(self.names)

    def neighbours(self, u: int) -> list[int]:
        return sorted({b for a, b in self.edges if a == u} | {a for a, b in self.edges if b == u})

    def hops(self) -> torch.Tensor:
        """``(N, N)`` int64 hop distances, ``-1`` where not connected."""
        d = hop_distances(self.edges, self.n)
        return torch.tensor([[-1 if x is None else x for x in row] for row in d], dtype=torch.int64)


def random_graph(n: int, edge_prob: float, rng: random.Random) -> Graph:
    """A random spanning tree on ``n`` nodes (so the graph is connected) plus each other pair
    with probability ``edge_prob``."""
    order = list(range(n))
    rng.shuffle(order)
    edges = set()
    for i in range(1, n):
        a, b = order[i], order[rng.randrange(i)]
        edges.add((min(a, b), max(a, b)))
    for a in range(n):
        for b in range(a + 1, n):
            if (a, b) not in edges and rng.random() < edge_prob:
                edges.add((a, b))
    return Graph(tuple(LETTERS[:n]), tuple(sorted(edges)))


def relabelled(graph: Graph, rng: random.Random) -> Graph:
    """The same names and degree sequence under a random permutation of the nodes: a graph of
    the same size whose edges are not the real ones (the control of the k-hop runs)."""
    perm = list(range(graph.n))
    for _ in range(8):
        rng.shuffle(perm)
        edges = tuple(sorted((min(perm[a], perm[b]), max(perm[a], perm[b])) for a, b in graph.edges))
        if edges != graph.edges:
            break
    return Graph(graph.names, edges)


def parse_graph(text: str) -> Graph:
    """A graph from ``u - v`` lines (names without spaces; other lines ignored).

    :raises ValueError: when no line is an edge.
    """
    names: dict[str, int] = {}
    edges = set()
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\S+)\s*-+\s*(\S+)\s*", line)
        if not m:
            continue
        a, b = (names.setdefault(x, len(names)) for x in m.groups())
        if a != b:
            edges.add((min(a, b), max(a, b)))
    if not edges:
        raise ValueError(f"--prompts: a graph prompt needs 'u - v' edge lines, got {text[:60]!r}")
    return Graph(tuple(names), tuple(sorted(edges)))


@dataclass(frozen=True)
class Serialized:
    """A graph as text: ``text`` and the ``(start, end, node)`` character span of every mention."""

    graph: Graph
    text: str
    char_spans: tuple[tuple[int, int, int], ...]


def serialize(graph: Graph, fmt: str, rng: random.Random | None = None) -> Serialized:
    """``graph`` as ``"A - B"`` lines (``fmt="edges"``) or ``"A: B, C"`` lines (``"adjacency"``),
    ending in a newline; with ``rng`` the lines and the names inside each line are shuffled."""
    if fmt not in HEADERS:
        raise ValueError(f"fmt must be one of {tuple(HEADERS)}, got {fmt!r}")
    lines: list[list[int]] = []
    if fmt == "edges":
        lines = [[a, b] for a, b in graph.edges]
        if rng is not None:
            for line in lines:
                rng.shuffle(line)
    else:
        for u in range(graph.n):
            nb = graph.neighbours(u)
            if rng is not None:
                rng.shuffle(nb)
            lines.append([u, *nb])
    if rng is not None:
        rng.shuffle(lines)
    text = HEADERS[fmt]
    spans = []
    for line in lines:
        for i, u in enumerate(line):
            if i:
                text += " - " if fmt == "edges" else (": " if i == 1 else ", ")
            spans.append((len(text), len(text) + len(graph.names[u]), u))
            text += graph.names[u]
        text += "\n"
    return Serialized(graph, text, tuple(spans))


def token_spans(offsets: Any, char_spans: Any) -> tuple[tuple[int, int, int], ...]:
    """``(start, end, node)`` token spans from a tokenizer's ``offset_mapping`` (one ``(s, e)``
    character range per token): the tokens overlapping each character span.

    :raises ValueError: when a name shares a token with another name, or has no token.
    """
    out = []
    for cs, ce, node in char_spans:
        toks = [i for i, (s, e) in enumerate(offsets) if e > s and s < ce and e > cs]
        if not toks:
            raise ValueError(f"no token covers characters [{cs}, {ce}) of node {node}")
        out.append((toks[0], toks[-1] + 1, node))
    for a, b in pairwise(out):
        if b[0] < a[1]:
            raise ValueError(f"node mentions share a token: token spans {a} and {b}; separate the names")
    return tuple(out)


@dataclass(frozen=True)
class Question:
    """A question appended to a serialised graph: its text, the answer strings, the indices of
    the right ones, its kind (``"edge"``, ``"degree"`` or ``"neighbour"``) and the node it asks
    about."""

    text: str
    choices: tuple[str, ...]
    answers: tuple[int, ...]
    kind: str
    target: int


#: The question kinds, in report order.
KINDS = ("edge", "degree", "neighbour")


def degree_question(graph: Graph, u: int) -> Question:
    """ "How many neighbours does node X have?", answered by one digit ``1..9``."""
    text = f"Question: How many neighbours does node {graph.names[u]} have? Answer:"
    return Question(text, tuple(f" {d}" for d in range(1, 10)), (len(graph.neighbours(u)) - 1,), "degree", u)


def make_questions(graph: Graph, per_kind: int, rng: random.Random) -> list[Question]:
    """``per_kind`` questions of each kind in :data:`KINDS`: edges (yes and no alternating where
    the graph has non-edges), degrees (nodes of degree 1..9), and neighbour lookup ("name one
    node connected to X": any neighbour's name is right)."""
    out: list[Question] = []
    edges = set(graph.edges)
    non_edges = [(a, b) for a in range(graph.n) for b in range(a + 1, graph.n) if (a, b) not in edges]
    for i in range(per_kind):
        yes = i % 2 == 0 or not non_edges
        a, b = rng.choice(graph.edges) if yes else rng.choice(non_edges)
        if rng.random() < 0.5:
            a, b = b, a
        text = (
            f"Question: Is there an edge between node {graph.names[a]} and node {graph.names[b]}? Answer (Yes or No):"
        )
        out.append(Question(text, (" Yes", " No"), (0 if yes else 1,), "edge", a))
    nodes = [u for u in range(graph.n) if 1 <= len(graph.neighbours(u)) <= 9]
    out += [degree_question(graph, rng.choice(nodes)) for _ in range(per_kind)]
    for _ in range(per_kind):
        u = rng.randrange(graph.n)
        text = f"Question: Name one node connected to node {graph.names[u]}. Answer: node"
        out.append(Question(text, tuple(f" {x}" for x in graph.names), tuple(graph.neighbours(u)), "neighbour", u))
    return out
