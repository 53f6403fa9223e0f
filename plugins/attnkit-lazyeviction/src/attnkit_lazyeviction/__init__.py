"""attnkit plugin for LazyEviction.

Paper: "LazyEviction: Lagged KV Eviction with Attention Pattern Observation for Efficient Long
Reasoning" (Zhang et al. 2025; code Halo-949/LazyEviction). Every cached token carries the
step it last *recurred* at (got attention >= ``alpha``) and its maximum recurrence interval
(MRI); every ``W`` decode steps the cache keeps the ``W`` newest tokens plus the best of the
rest by the MRI-centric score, so it holds ``budget`` tokens right after an eviction and up to
``budget + W`` just before the next one.

This module is the entry point: it only declares the spec. torch is imported by
:mod:`attnkit_lazyeviction.policy` on first use.
"""

from __future__ import annotations

from attnkit import KVCacheSpec, Paper, hookimpl
from attnkit_lazyeviction.params import LazyEvictionParams

__all__ = ["LAZYEVICTION", "PAPER", "LazyEvictionParams"]

PAPER = Paper(
    title="LazyEviction: Lagged KV Eviction with Attention Pattern Observation for Efficient Long Reasoning",
    arxiv="2506.15969",
)

LAZYEVICTION = KVCacheSpec(
    name="lazyeviction",
    paper=PAPER,
    description="Every W decode steps keep the W newest tokens plus the best by the MRI-centric recurrence score.",
    params=LazyEvictionParams,
    factory="attnkit_lazyeviction.policy:build",
    bench="attnkit_lazyeviction.bench:main",
)


@hookimpl
def attnkit_register_caches(register):  # type: ignore[no-untyped-def]
    register(LAZYEVICTION)
