"""Plain-Python transcription of the official allocation loops (modules/attention/kdgqa.py,
dgqa.py of arXiv:2408.08454's code), with the deterministic fix-up: the oracle for the tensor
implementation."""

from __future__ import annotations


def _first_max(a: list[int]) -> int:
    return max(range(len(a)), key=lambda i: (a[i], -i))


def _first_min(a: list[int]) -> int:
    return min(range(len(a)), key=lambda i: (a[i], i))


def brute_round(weights: list[float], heads: int, min_queries: int = 0) -> list[int]:
    """The official rounding and fix-up loops, in plain Python, lowest index on ties."""
    g = len(weights)
    rest = heads - g * min_queries
    total = sum(weights)
    share = [w / total for w in weights] if total > 0 else [1.0 / g] * g
    a = [round(s * rest) for s in share]  # Python round is half-to-even, like torch.round
    while sum(a) > rest:
        a[_first_max(a)] -= 1
    while sum(a) < rest:
        a[_first_min(a)] += 1
    return [x + min_queries for x in a]


def brute_kdgqa(norms: list[float], heads: int, min_queries: int = 0) -> list[int]:
    lo, hi = min(norms), max(norms)
    scaled = [(n - lo) / (hi - lo) for n in norms] if hi > lo else [0.0] * len(norms)
    return brute_round(scaled, heads, min_queries)


def brute_head_index(counts: list[int]) -> list[int]:
    out = []
    for j, c in enumerate(counts):
        out.extend([j] * c)
    return out
