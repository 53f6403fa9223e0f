"""Seeded, locally generated step-by-step word problems (the default inputs). Pure Python."""

from __future__ import annotations

import random

__all__ = ["reasoning_prompts"]

_PEOPLE = ["Maya", "Liam", "Noor", "Theo", "Ines", "Ravi", "Zoe", "Hugo", "Aiko", "Sam"]
_GOODS = [("notebook", "notebooks"), ("ticket", "tickets"), ("melon", "melons"), ("candle", "candles")]


def _problem(rng: random.Random) -> str:
    a, b = rng.sample(_PEOPLE, 2)
    one, many = rng.choice(_GOODS)
    kind = rng.randrange(4)
    if kind == 0:
        price, n, paid = rng.randint(2, 9), rng.randint(3, 8), 0
        paid = price * n + rng.randint(1, 20)
        return (
            f"A {one} costs {price} dollars. {a} buys {n} {many} and pays with {paid} dollars. "
            f"How much change does {a} get?"
        )
    if kind == 1:
        x, y, z = rng.randint(10, 60), rng.randint(2, 5), rng.randint(3, 15)
        return (
            f"{a} has {x} {many}. {b} has {y} times as many as {a}, minus {z}. "
            f"How many {many} do {a} and {b} have together?"
        )
    if kind == 2:
        speed, hours, extra = rng.randint(30, 80), rng.randint(2, 6), rng.randint(10, 90)
        return (
            f"A train travels at {speed} km per hour for {hours} hours, then {extra} km more. "
            "How far does it travel in total?"
        )
    boxes, per, sold = rng.randint(3, 9), rng.randint(6, 24), rng.randint(5, 30)
    return (
        f"{a} packs {boxes} boxes with {per} {many} in each box and then sells {sold} {many}. How many {many} are left?"
    )


def reasoning_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` word problems, each asking for a step-by-step solution in full sentences.

    :raises ValueError: for ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rng = random.Random(seed)
    return [
        _problem(rng) + " Solve it step by step, explaining each step in a full sentence, then state the answer."
        for _ in range(n)
    ]
