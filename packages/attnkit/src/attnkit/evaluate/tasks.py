"""The reasoning set of ``attnkit eval cache``: generated multi-step addition chains, answered
with a worked chain of thought and checked exactly.

A problem is "Start with 4. Step 1: add 3. Step 2: add 5. Step 3: add 2." and its solution
is written one step at a time, each step first copying its line of the statement: "Start
with 4. Step 1: add 3. 4 + 3 = 7. Step 2: add 5. 7 + 5 = 12. Step 3: add 2. 12 + 2 = 14. The
answer is 14." (the repeated "Step i: add" lets a small model find each addend again). The prompt
holds ``shots`` solved problems of the same kind first (plain text, no chat template: a small
instruct model follows the pattern better that way). Every step of the generation needs the next addend,
which only the problem statement holds, so a cache that evicts the statement while the chain
is being written loses the thread; the longer the chain, the more the cache must keep. The
answer is the number after the first "The answer is", compared exactly with the true sum.

Everything is a function of the arguments: the same ``seed`` gives the same problems and
token ids. Importing this module imports neither torch nor transformers.

>>> from attnkit.evaluate.tasks import make_problems
>>> problems = make_problems(tokenizer, 8, steps=4, seed=0)  # doctest: +SKIP
>>> problems[0].answer, problems[0].tensor().shape  # doctest: +SKIP
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["ArithmeticProblem", "check_answer", "make_problem", "make_problems", "parse_answer", "solution_text"]

_ANSWER = re.compile(r"answer is\s*(-?\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class ArithmeticProblem:
    """One addition chain.

    :ivar input_ids: the prompt's token ids (the solved examples, then this problem up to
        "Solution:").
    :ivar prompt: the prompt's text.
    :ivar question: this problem's statement ("Start with 4. Step 1: add 3. ...").
    :ivar start: the first number.
    :ivar addends: the numbers added, in order.
    :ivar answer: the true result, ``start + sum(addends)``.
    """

    input_ids: list[int]
    prompt: str
    question: str
    start: int
    addends: tuple[int, ...]
    answer: int

    @property
    def steps(self) -> int:
        return len(self.addends)

    @property
    def reference(self) -> str:
        """The worked solution the examples show, for this problem."""
        return solution_text(self.start, self.addends)

    def tensor(self) -> Any:
        """``input_ids`` as a ``(1, T)`` int64 tensor."""
        import torch

        return torch.tensor([self.input_ids], dtype=torch.long)


def solution_text(start: int, addends: tuple[int, ...] | list[int]) -> str:
    """ "Start with 4. Step 1: add 3. 4 + 3 = 7. Step 2: add 5. 7 + 5 = 12. The answer is 12." for
    ``start=4, addends=(3, 5)``."""
    parts, cur = [f"Start with {start}."], start
    for i, a in enumerate(addends, 1):
        parts.append(f"Step {i}: add {a}. {cur} + {a} = {cur + a}.")
        cur += a
    parts.append(f"The answer is {cur}.")
    return " ".join(parts)


def _statement(start: int, addends: tuple[int, ...]) -> str:
    return f"Start with {start}. " + " ".join(f"Step {i}: add {a}." for i, a in enumerate(addends, 1))


def _chain(rng: random.Random, steps: int, max_addend: int) -> tuple[int, tuple[int, ...]]:
    return rng.randint(1, max_addend), tuple(rng.randint(1, max_addend) for _ in range(steps))


def _check(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def make_problem(
    tokenizer: Any, steps: int, *, seed: int = 0, shots: int = 3, shot_steps: int | None = None, max_addend: int = 3
) -> ArithmeticProblem:
    """One problem of ``steps`` additions of numbers in ``1..max_addend`` (default 3: a 135M
    model's sums of small numbers are mostly right, larger ones mostly not), after ``shots``
    solved examples (of ``shot_steps`` additions each, default ``steps``).

    :param tokenizer: anything with ``tokenizer(text, add_special_tokens=False)["input_ids"]``.
    :raises ValueError: for ``steps`` / ``max_addend`` < 1 or ``shots`` < 0.
    """
    _check("steps", steps, 1)
    _check("shots", shots, 0)
    _check("max_addend", max_addend, 1)
    if shot_steps is not None:
        _check("shot_steps", shot_steps, 1)
    rng = random.Random(seed * 1_000_003 + steps)
    examples = []
    for _ in range(shots):
        s, adds = _chain(rng, shot_steps or steps, max_addend)
        examples.append(f"Problem: {_statement(s, adds)}\nSolution: {solution_text(s, adds)}\n\n")
    start, addends = _chain(rng, steps, max_addend)
    question = _statement(start, addends)
    prompt = "Solve each problem step by step.\n\n" + "".join(examples) + f"Problem: {question}\nSolution:"
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return ArithmeticProblem(
        input_ids=ids, prompt=prompt, question=question, start=start, addends=addends, answer=start + sum(addends)
    )


def make_problems(tokenizer: Any, n: int, steps: int, *, seed: int = 0, **kwargs: Any) -> list[ArithmeticProblem]:
    """``n`` problems (:func:`make_problem` with seeds ``seed, seed + 1, ...``)."""
    _check("n", n, 1)
    return [make_problem(tokenizer, steps, seed=seed + i, **kwargs) for i in range(n)]


def parse_answer(text: str) -> int | None:
    """The number after the first "The answer is" in ``text``, or ``None``."""
    m = _ANSWER.search(text)
    return int(m.group(1)) if m else None


def check_answer(problem: ArithmeticProblem, text: str) -> bool:
    """Whether ``text`` states ``problem``'s answer exactly."""
    return parse_answer(text) == problem.answer
