"""Parameter dataclasses of the plugin's two specs and the contract's parameter sets.

* :class:`GraphKhopParams` - the ``graph_khop`` attention spec: which token spans hold which
  graph node, the graph's edges, the hop horizon ``k`` and whether node-node pairs may attend
  both ways.
* :class:`GraphAttentionParams` - the ``graph_attention`` analysis: the generated graphs, their
  serialisation, the shuffles and the zero-shot questions.

Imports no torch: the entry point imports this module when attnkit loads plugins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from attnkit.paramcheck import check_int as _check_int
from attnkit.paramcheck import check_queries_are_last_keys

__all__ = [
    "FORMATS",
    "GraphAttentionParams",
    "GraphKhopParams",
    "contract_params",
    "num_nodes",
    "validate",
]

#: Serialisations of a graph as text: one ``"A - B"`` line per edge, or one ``"A: B, C"`` line per node.
FORMATS = ("edges", "adjacency")


def _check_bool(name: str, value: Any) -> None:
    # The paper's script declares --bidi with argparse type=bool, so any string (even "False")
    # turned it on; only a real bool is accepted here.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")


def _int_tuples(name: str, value: Any, width: int) -> tuple[tuple[int, ...], ...]:
    """``value`` as a tuple of ``width``-int tuples (lists accepted), or a TypeError/ValueError."""
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{name} must be a tuple of {width}-int tuples, got {type(value).__name__} {value!r}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, (tuple, list)) or len(item) != width:
            raise ValueError(f"{name}[{i}] must be {width} ints, got {item!r}")
        for x in item:
            if isinstance(x, bool) or not isinstance(x, int):
                raise TypeError(f"{name}[{i}] must hold ints, got {type(x).__name__} {x!r} in {item!r}")
            if x < 0:
                raise ValueError(f"{name}[{i}] must hold ints >= 0, got {item!r}")
        out.append(tuple(int(x) for x in item))
    return tuple(out)


@dataclass(frozen=True)
class GraphKhopParams:
    """Parameters of the ``graph_khop`` attention spec (arXiv:2505.02130, "Global Linkage Horizon").

    A token belongs to graph node ``n`` when it lies in a span ``(start, end, n)`` (``start <=
    position < end``); every other token is a text token. A node token may attend a node token
    of node ``m`` only when ``m`` is within ``hops`` (the paper's ``k``) hops of ``n`` in the undirected graph of
    ``edges`` (``(I + A + A^T)^k > 0``; the same node is 0 hops away); node tokens attend text
    tokens and text tokens attend everything as the causal flag says. With ``is_causal=True`` and
    ``bidirectional=True`` an allowed node-node pair is allowed in both directions (the paper's
    bidirectional window); text tokens stay causal.

    :param spans: ``(start, end, node)`` token spans, disjoint, ``0 <= start < end``; a node may
        own several spans (every mention of its name). Spans past the sequence are clipped.
    :param edges: ``(u, v)`` node pairs; direction is ignored (``A + A^T``).
    :param hops: the hop horizon ``k``, ``>= 0`` (0: a node token sees only its own node's tokens);
        named ``hops`` because ``k`` is the keys' argument of every attention call.
    :param bidirectional: let allowed node-node pairs attend forward too under ``is_causal``.
    """

    spans: tuple[tuple[int, int, int], ...] = field(
        default=(), metadata={"contract_invalid": [((3, 1, 0),), ((0, 2, 0), (1, 3, 1)), ((0, 1, -1),), "x"]}
    )
    edges: tuple[tuple[int, int], ...] = field(default=(), metadata={"contract_invalid": [((0,),), ((0, -1),), 3]})
    hops: int = field(default=1, metadata={"min": 0})
    bidirectional: bool = field(default=False, metadata={"contract_invalid": ["False", 1]})

    def __post_init__(self) -> None:
        spans = _int_tuples("spans", self.spans, 3)
        for i, (s, e, _) in enumerate(spans):
            if e <= s:
                raise ValueError(f"spans[{i}] = {spans[i]!r}: end must be > start")
        ordered = sorted(spans)
        for a, b in pairwise(ordered):
            if b[0] < a[1]:
                raise ValueError(f"spans must be disjoint, got {a!r} and {b!r} overlapping")
        object.__setattr__(self, "spans", spans)
        object.__setattr__(self, "edges", _int_tuples("edges", self.edges, 2))
        _check_int("hops", self.hops, 0)
        _check_bool("bidirectional", self.bidirectional)


def num_nodes(params: GraphKhopParams) -> int:
    """Nodes the parameters mention (``1 + the largest node id``, 0 without nodes)."""
    ids = [n for _, _, n in params.spans] + [x for e in params.edges for x in e]
    return max(ids) + 1 if ids else 0


def validate(params: GraphKhopParams, q: Any, k: Any, v: Any, is_causal: Any) -> None:
    """Queries are the last ``Tq`` keys (bottom-right aligned): refuse ``Tq > Tk``, naming the sizes."""
    check_queries_are_last_keys("graph_khop", q, k)


# A path a-b-c-d serialised over the first 11 tokens: "<t> a a <t> b <t> c c a <t> d"; node a
# is mentioned twice, so a later mention of a must still see its first one (0 hops).
_CONTRACT_SPANS = ((1, 3, 0), (4, 5, 1), (6, 8, 2), (8, 9, 0), (10, 11, 3))
_CONTRACT_EDGES = ((0, 1), (1, 2), (2, 3))


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets for the contract suite. The spans sit in the first 11 tokens and are
    clipped at shorter lengths, so every set fits every length (the ONNX check traces at one
    length and runs at two others)."""
    del seq_len  # the layout is clipped, so it fits any length
    return [
        {"spans": _CONTRACT_SPANS, "edges": _CONTRACT_EDGES, "hops": 1},
        {"spans": _CONTRACT_SPANS, "edges": _CONTRACT_EDGES, "hops": 2},
        {"spans": ((0, 2, 0), (3, 4, 1), (5, 7, 2)), "edges": ((0, 1),), "hops": 0},
        {},  # no nodes: plain (causal) attention
    ]


@dataclass(frozen=True)
class GraphAttentionParams:
    """Parameters of the ``graph_attention`` analysis (library choices: the paper fine-tunes
    LLaMA-2-7B on node-feature tokens; here an untuned SmolLM2 reads graphs written as text).

    :param n_graphs: seeded random graphs (``--quick`` uses 3).
    :param n_nodes: nodes per graph, named ``A``, ``B``, ... (3 to 26).
    :param edge_prob: probability of each extra edge beyond a random spanning tree.
    :param fmt: ``"edges"`` (one ``A - B`` line per edge) or ``"adjacency"`` (``A: B, C``).
    :param n_shuffles: serialisation orders per graph for the attention metrics (lines and the
        names inside a line shuffled): node positions vary so that a hop profile is not a
        position profile.
    :param khops: hop horizons ``k`` of the ``graph_khop`` runs of the zero-shot questions.
    :param bidirectional: node-node pairs within ``k`` hops attend both ways in those runs.
    :param questions: questions per graph and kind (``--quick``: at most 2): "is there an edge
        between X and Y" (yes / no alternating), "how many neighbours does X have" and "name one
        node connected to X".
    """

    n_graphs: int = 12
    n_nodes: int = 10
    edge_prob: float = 0.1
    fmt: str = field(default="edges", metadata={"contract_invalid": ["csv", 3]})
    n_shuffles: int = 2
    khops: tuple[int, ...] = field(default=(1, 2), metadata={"contract_invalid": [(), (-1,), "x"]})
    bidirectional: bool = field(default=False, metadata={"contract_invalid": ["True", 0]})
    questions: int = 2

    def __post_init__(self) -> None:
        _check_int("n_graphs", self.n_graphs, 1)
        _check_int("n_nodes", self.n_nodes, 3, 26)
        if isinstance(self.edge_prob, bool) or not isinstance(self.edge_prob, (int, float)):
            raise TypeError(f"edge_prob must be a float, got {type(self.edge_prob).__name__} {self.edge_prob!r}")
        if not math.isfinite(self.edge_prob) or not 0.0 <= self.edge_prob <= 1.0:
            raise ValueError(f"edge_prob must be in [0, 1], got {self.edge_prob}")
        if not isinstance(self.fmt, str):
            raise TypeError(f"fmt must be one of {FORMATS}, got {type(self.fmt).__name__} {self.fmt!r}")
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        _check_int("n_shuffles", self.n_shuffles, 1)
        khops = self.khops
        if isinstance(khops, str):
            try:
                khops = tuple(int(x) for x in khops.replace(" ", "").split(",") if x)
            except ValueError:
                raise ValueError(f"khops must be hop counts like '1,2', got {self.khops!r}") from None
        if isinstance(khops, int) and not isinstance(khops, bool):
            khops = (khops,)
        if not isinstance(khops, (tuple, list)):
            raise TypeError(f"khops must be a tuple of hop counts, got {type(self.khops).__name__}")
        if not khops:
            raise ValueError("khops must name at least one hop horizon, got ()")
        for x in khops:
            _check_int("khops[i]", x, 0)
        object.__setattr__(self, "khops", tuple(sorted({int(x) for x in khops})))
        _check_bool("bidirectional", self.bidirectional)
        _check_int("questions", self.questions, 1)
