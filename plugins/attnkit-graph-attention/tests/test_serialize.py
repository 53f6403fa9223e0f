"""Graphs as text: spans point at the names, questions have the right answers, token spans
from offsets, and the prompt layout with a character-level tokenizer."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest
from _graph_attention_fakes import CharTokenizer

from attnkit_graph_attention.prompts import encode, layout_tensors
from attnkit_graph_attention.serialize import (
    Graph,
    make_questions,
    parse_graph,
    random_graph,
    relabelled,
    serialize,
    token_spans,
)


@pytest.mark.parametrize("fmt", ["edges", "adjacency"])
def test_spans_point_at_the_names(fmt: str) -> None:
    g = random_graph(8, 0.3, random.Random(0))
    ser = serialize(g, fmt, random.Random(1))
    for s, e, n in ser.char_spans:
        assert ser.text[s:e] == g.names[n]
    mentions = Counter(n for _, _, n in ser.char_spans)
    for u in range(g.n):
        deg = len(g.neighbours(u))
        assert mentions[u] == (deg if fmt == "edges" else deg + 1)


def test_random_graph_is_connected_and_simple() -> None:
    for seed in range(5):
        g = random_graph(9, 0.2, random.Random(seed))
        assert (g.hops() >= 0).all()
        assert all(a < b for a, b in g.edges) and len(set(g.edges)) == len(g.edges)


def test_shuffled_edge_lines_are_the_same_edges() -> None:
    g = random_graph(7, 0.3, random.Random(2))
    lines = serialize(g, "edges", random.Random(3)).text.splitlines()[1:]
    got = sorted(tuple(sorted(g.names.index(x) for x in line.split(" - "))) for line in lines)
    assert got == sorted(g.edges)


def test_questions_have_the_right_answers() -> None:
    g = random_graph(8, 0.2, random.Random(4))
    qs = make_questions(g, 4, random.Random(5))
    assert [q.kind for q in qs] == ["edge"] * 4 + ["degree"] * 4 + ["neighbour"] * 4
    for q in qs:
        named = [g.names.index(x) for x in re.findall(r"node ([A-Z])\b", q.text)]
        a = named[0]
        if q.kind == "edge":
            b = named[1]
            assert (q.answers == (0,)) == ((min(a, b), max(a, b)) in g.edges)
        elif q.kind == "degree":
            assert [q.choices[i] for i in q.answers] == [f" {len(g.neighbours(a))}"]
        else:
            right = {q.choices[i].strip() for i in q.answers}
            assert right == {g.names[b] for b in range(8) if (min(a, b), max(a, b)) in g.edges}
        assert q.target == a
    assert {q.answers for q in qs if q.kind == "edge"} == {(0,), (1,)}


def test_relabelled_keeps_the_degree_sequence() -> None:
    g = random_graph(8, 0.3, random.Random(6))
    c = relabelled(g, random.Random(7))
    assert sorted(len(g.neighbours(u)) for u in range(8)) == sorted(len(c.neighbours(u)) for u in range(8))
    assert c.edges != g.edges


def test_parse_graph() -> None:
    g = parse_graph("x - y\nnot an edge\ny -- zed\n")
    assert g.names == ("x", "y", "zed") and g.edges == ((0, 1), (1, 2))
    with pytest.raises(ValueError, match="edge lines"):
        parse_graph("no edges here")


def test_token_spans_from_offsets() -> None:
    offsets = [(0, 0), (0, 3), (3, 4), (4, 6), (6, 9)]  # a special token, then words
    assert token_spans(offsets, [(0, 3, 0), (4, 9, 1)]) == ((1, 2, 0), (3, 5, 1))
    with pytest.raises(ValueError, match="share a token"):
        token_spans([(0, 4)], [(0, 1, 0), (2, 3, 1)])


def test_encode_lays_out_graph_and_question() -> None:
    g = Graph(("A", "B", "C"), ((0, 1), (1, 2)))
    ser = serialize(g, "edges")
    q = make_questions(g, 1, random.Random(0))[1]  # the degree question
    prompt = encode(CharTokenizer(), ser, q)
    text = ser.text + q.text + " "  # the choices " 1".." 9" share the space: it joins the prompt
    assert len(prompt.ids) == len(text) and prompt.graph_len == len(ser.text)
    assert prompt.choice_tokens == tuple(ord(str(d)) % 94 + 3 for d in range(1, 10))
    node, span = layout_tensors(prompt)
    assert [ser.text[i] for i in range(len(ser.text)) if node[i] >= 0] == [g.names[n] for _, _, n in ser.char_spans]
    assert int(span.max()) == len(ser.char_spans) - 1
