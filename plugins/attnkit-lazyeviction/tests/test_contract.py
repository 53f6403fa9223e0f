"""The attnkit KV-cache contract suite on ``lazyeviction``: the spec as registered (the paper's
``window=101``, so the contract's 8 decode steps see only the prefill's eviction) and the same
policy with ``window=2``, whose lagged evictions then run inside every check (batch of two vs
each alone, left padding, multi-token forwards after eviction, reset)."""

from __future__ import annotations

import dataclasses

from attnkit_contract.cache_checks import parametrize_with_cache_contract
from attnkit_lazyeviction import LAZYEVICTION, LazyEvictionParams


@dataclasses.dataclass(frozen=True)
class _ShortWindow(LazyEvictionParams):
    """``window=2``, ``alpha=0.05``: evictions every other step, and a threshold that the tiny
    model's spread-out attention crosses for some keys and not others."""

    window: int = 2
    alpha: float = 0.05


SHORT_WINDOW = dataclasses.replace(LAZYEVICTION, name="lazyeviction.w2", params=_ShortWindow)


@parametrize_with_cache_contract([LAZYEVICTION, SHORT_WINDOW])
def test_cache_contract(spec: object, check: object) -> None:
    check(spec)  # type: ignore[operator]
