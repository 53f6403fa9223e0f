"""Checks for spec parameter dataclasses (ints, floats in a range, bools from ``--param``) and
for the ``validate`` hooks of specs (queries aligned with the last keys).

Every plugin validates its frozen parameter dataclass in ``__post_init__``; these give them
one wording for the errors (the argument's name, the value and its type). Importing this
module imports neither torch nor any plugin, so entry-point modules can use it.

>>> check_int("window", 3, 1)
3
>>> check_float("beta", 0.5, 0.0, 1.0)
0.5
>>> as_bool("full", "false")
False
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["as_bool", "check_float", "check_int", "check_queries_are_last_keys"]

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``[minimum, maximum]``, else ``TypeError`` /
    ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_float(name: str, value: object, lo: float, hi: float, *, open_lo: bool = False) -> float:
    """``value`` if it is a finite real number in ``[lo, hi]`` (``(lo, hi]`` with ``open_lo``),
    else ``TypeError`` / ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
        bound = f"({lo}, {hi}]" if open_lo else f"[{lo}, {hi}]"
        raise ValueError(f"{name} must be in {bound}, got {value}")
    return value


def as_bool(name: str, value: object) -> bool:
    """``value`` as a bool: a bool, or a string such as ``"false"`` / ``"1"`` (how
    ``--param NAME=false`` may arrive); anything else is a ``TypeError`` naming ``name``."""
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_queries_are_last_keys(spec: str, q: Any, k: Any) -> None:
    """For a spec whose queries are the last ``Tq`` of its keys (bottom-right aligned): a
    ``ValueError`` naming ``spec`` and the sizes when ``q (B, H, Tq, D)`` has more tokens than
    ``k (B, Hkv, Tk, D)``. Other ranks, and symbolic sizes while exporting (comparing them would
    pin the graph to one length), pass unchecked."""
    if q.dim() != 4:
        return  # the registry reports the token axes itself
    tq, tk = q.shape[2], k.shape[2]
    if not (isinstance(tq, int) and isinstance(tk, int)):
        return
    if tq > tk:
        raise ValueError(
            f"{spec} queries are the last Tq keys: q has Tq={tq} tokens but k has only Tk={tk} "
            f"(q {tuple(q.shape)}, k {tuple(k.shape)})"
        )
