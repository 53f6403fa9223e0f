"""Token layout of one graph prompt: the serialised graph, then a question, scored on the next
token of its answer choices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attnkit_graph_attention.serialize import Question, Serialized, token_spans

__all__ = ["GraphPrompt", "encode", "layout_tensors"]


@dataclass(frozen=True)
class GraphPrompt:
    """``ids`` (the prompt tokens), the ``(start, end, node)`` token ``spans`` of the node
    mentions, ``graph_len`` (tokens of the graph part; the question follows), and
    ``choice_tokens``: the next token of each answer choice (they differ there)."""

    ids: tuple[int, ...]
    spans: tuple[tuple[int, int, int], ...]
    graph_len: int
    choice_tokens: tuple[int, ...]
    question: Question


def _prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if len({s[i] for s in seqs}) > 1:
            return i
    return n


def encode(tokenizer: Any, ser: Serialized, question: Question) -> GraphPrompt:
    """Tokenise ``ser.text + question.text`` and find the node-token spans.

    :raises ValueError: when the choices are not told apart by one next token, or the graph
        part tokenises differently inside the prompt than alone.
    """
    enc = tokenizer(ser.text, return_offsets_mapping=True)
    graph_ids = list(enc["input_ids"])
    full = ser.text + question.text
    cands = [list(tokenizer(full + c)["input_ids"]) for c in question.choices]
    cut = _prefix(cands)
    if any(len(c) <= cut for c in cands) or len({c[cut] for c in cands}) != len(cands):
        raise ValueError(f"answer choices {question.choices} do not differ in their first token after the prompt")
    ids = cands[0][:cut]
    if ids[: len(graph_ids)] != graph_ids:
        raise ValueError("the graph text tokenises differently inside the prompt; end it with a newline")
    spans = token_spans(enc["offset_mapping"], ser.char_spans)
    return GraphPrompt(tuple(ids), spans, len(graph_ids), tuple(c[cut] for c in cands), question)


def layout_tensors(prompt: GraphPrompt) -> tuple[torch.Tensor, torch.Tensor]:
    """``(node, span)`` int64 ``(T,)``: each position's node and mention index, ``-1`` for text."""
    t = len(prompt.ids)
    node = torch.full((t,), -1, dtype=torch.int64)
    span = torch.full((t,), -1, dtype=torch.int64)
    for i, (s, e, n) in enumerate(prompt.spans):
        node[s:e] = n
        span[s:e] = i
    return node, span
