"""attnkit plugin for retrieval heads.

Paper: "Retrieval Head Mechanistically Explains Long-Context Factuality" (Wu, Wang, Xiao,
Peng, Fu; arXiv:2404.15574; code nightdessert/Retrieval_Head). A retrieval head copies needle
tokens from a long context: at each decode step its top-1 attended key lies in the needle and
holds the token being generated. Masking those heads (uniform attention) breaks
needle-in-a-haystack retrieval; keeping their KV heads whole lets the rest of the cache shrink
to a window.

This module is the entry point: it only declares the specs. torch and transformers are
imported by the implementation modules on first use.
"""

from __future__ import annotations

from attnkit import AnalysisSpec, KVCacheSpec, Paper, hookimpl
from attnkit_retrieval_heads.params import RetrievalCacheParams, RetrievalScoreParams

__all__ = ["PAPER", "RETRIEVAL_CACHE", "RETRIEVAL_SCORE", "RetrievalCacheParams", "RetrievalScoreParams"]

PAPER = Paper(title="Retrieval Head Mechanistically Explains Long-Context Factuality", arxiv="2404.15574")

RETRIEVAL_SCORE = AnalysisSpec(
    name="retrieval_score",
    paper=PAPER,
    description="Per query head: share of the needle a head copies via its top-1 decode-step attention (NIAH).",
    params=RetrievalScoreParams,
    factory="attnkit_retrieval_heads.score:build",
    sites=("blocks.{l}.attn.hook_pattern@decode",),
    main_job="attnkit_retrieval_heads.mainjob:run",
)

RETRIEVAL_CACHE = KVCacheSpec(
    name="retrieval_heads_cache",
    paper=PAPER,
    description="Full KV for KV heads serving a retrieval head; sinks + a short window for the others.",
    params=RetrievalCacheParams,
    factory="attnkit_retrieval_heads.cache:build",
)


@hookimpl
def attnkit_register_analyses(register):  # type: ignore[no-untyped-def]
    register(RETRIEVAL_SCORE)


@hookimpl
def attnkit_register_caches(register):  # type: ignore[no-untyped-def]
    register(RETRIEVAL_CACHE)
