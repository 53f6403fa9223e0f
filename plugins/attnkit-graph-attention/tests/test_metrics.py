"""The hop metrics on synthetic attention with planted answers, each against an independent
reference (explicit Python loops over valid causal rows and pairs)."""

from __future__ import annotations

import pytest
import torch

from attnkit_graph_attention.metrics import CLASSES, column_average, hop_profile, text_to_node_profile
from attnkit_graph_attention.serialize import Graph


def _causal_softmax(t: int, seed: int = 0, layers: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(layers, t, t, generator=g, dtype=torch.float64)
    s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(s, -1)


def test_column_average_ignoring_zeros_is_the_mean_over_valid_causal_rows() -> None:
    a = _causal_softmax(9)
    got = column_average(a)
    for layer in range(a.shape[0]):
        for j in range(9):
            rows = [float(a[layer, i, j]) for i in range(j, 9)]  # the rows that may attend to key j
            assert got[layer, j].item() == pytest.approx(sum(rows) / len(rows), abs=1e-15)


def test_column_average_of_an_empty_column_is_zero() -> None:
    a = torch.zeros(1, 3, 3)
    a[0, 2, 0] = 0.5
    got = column_average(a)
    assert got.tolist() == [[0.5, 0.0, 0.0]]


# Path 0 - 1 - 2 - 3 and an isolated node 4; mentions at these token positions.
GRAPH = Graph(("A", "B", "C", "D", "E"), ((0, 1), (1, 2), (2, 3)))
MENTIONS = [(1, 0), (3, 1), (5, 2), (7, 3), (8, 4), (10, 0), (12, 2), (14, 1), (15, 3)]
T = 18


def _layout() -> tuple[torch.Tensor, torch.Tensor]:
    node = torch.full((T,), -1, dtype=torch.int64)
    span = torch.full((T,), -1, dtype=torch.int64)
    for i, (pos, n) in enumerate(MENTIONS):
        node[pos], span[pos] = n, i
    return node, span


PLANT = {0: 0.002, 1: 0.05, 2: 0.01, 3: 0.004}  # per hop class; text keys 0.003


def _planted() -> torch.Tensor:
    """Every node -> earlier node entry holds its class's value; rows sum to 1 through the diagonal."""
    hops = GRAPH.hops()
    node, _ = _layout()
    a = torch.zeros(T, T, dtype=torch.float64)
    for p in range(T):
        for j in range(p):
            if node[p] >= 0 and node[j] >= 0:
                h = int(hops[node[p], node[j]])
                a[p, j] = PLANT[3 if h < 0 or h >= 3 else h]
            else:
                a[p, j] = 0.003
        a[p, p] = 1.0 - a[p].sum()
    return a[None]


def test_hop_profile_recovers_planted_neighbour_attention() -> None:
    node, span = _layout()
    prof = hop_profile(_planted(), node, span, GRAPH.hops())
    for c, name in enumerate(CLASSES):
        assert prof[name].item() == pytest.approx(PLANT[c], abs=1e-15)
    # every non-neighbour class is planted lower than 1-hop, at every distance: ratio is exact
    non = [PLANT[2], PLANT[3]]
    assert prof["non-neighbour"].item() < PLANT[1]
    assert PLANT[1] / max(non) <= prof["distance-matched ratio"].item() <= PLANT[1] / min(non)


def test_hop_profile_matches_brute_force_on_random_attention() -> None:
    node, span = _layout()
    a = _causal_softmax(T, seed=3, layers=3)
    hops = GRAPH.hops()
    prof = hop_profile(a, node, span, hops)
    for layer in range(3):
        by: dict[int, list[float]] = {c: [] for c in range(4)}
        rand, bins_nb, bins_non = [], {}, {}
        for p in range(T):
            for j in range(p):
                if node[p] < 0 or node[j] < 0 or span[p] == span[j]:
                    continue
                h = int(hops[node[p], node[j]])
                c = 3 if h < 0 or h >= 3 else h
                x = float(a[layer, p, j])
                by[c].append(x)
                b = (p - j).bit_length()  # bins [1,2), [2,4), [4,8) ...
                if c == 1:
                    rand.append((1.0 - float(a[layer, p, p])) / p)
                    bins_nb.setdefault(b, []).append(x)
                elif c >= 2:
                    bins_non.setdefault(b, []).append(x)
        for c, name in enumerate(CLASSES):
            assert prof[name][layer].item() == pytest.approx(sum(by[c]) / len(by[c]), abs=1e-14)
        assert prof["random"][layer].item() == pytest.approx(sum(rand) / len(rand), abs=1e-14)
        both = [b for b in bins_nb if b in bins_non]
        num = sum(len(bins_nb[b]) * sum(bins_nb[b]) / len(bins_nb[b]) for b in both)
        den = sum(len(bins_nb[b]) * sum(bins_non[b]) / len(bins_non[b]) for b in both)
        assert prof["distance-matched ratio"][layer].item() == pytest.approx(num / den, rel=1e-12)
    assert int(prof["pairs"].sum()) == sum(
        1 for p in range(T) for j in range(p) if node[p] >= 0 and node[j] >= 0 and span[p] != span[j]
    )


def test_text_to_node_profile_recovers_planted_question_attention() -> None:
    node, _ = _layout()
    hops = GRAPH.hops()
    target = 1  # B: 0 hops B, 1 hop A and C, 2 hops D, none E
    want = {0: 0.3, 1: 0.1, 2: 0.05, 3: 0.01}
    a = torch.zeros(1, T, T, dtype=torch.float64)
    for p in range(16, T):  # the "question" rows
        for j in range(p + 1):
            n = int(node[j])
            h = int(hops[target, n]) if n >= 0 else None
            a[0, p, j] = 0.001 if h is None else want[3 if h < 0 or h >= 3 else h]
    prof = text_to_node_profile(a, node, slice(16, T), hops[target])
    for c, name in enumerate(CLASSES):
        assert prof[name].item() == pytest.approx(want[c], abs=1e-15)


def test_bad_shapes_are_refused_with_sizes() -> None:
    node, span = _layout()
    with pytest.raises(ValueError, match=r"\(L, T, T\)"):
        hop_profile(torch.zeros(T, T), node, span, GRAPH.hops())
    with pytest.raises(ValueError, match="T=5"):
        hop_profile(torch.zeros(1, 5, 5), node, span, GRAPH.hops())
