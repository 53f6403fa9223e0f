"""LongHeads' parameters for the prefill of a causal language model
(``AttentionSpec.model_prefill``)."""

from __future__ import annotations

from typing import Any

from attnkit.hf.modelconfig import rope_theta, trained_length


def for_model(config: Any, length: int) -> dict[str, Any]:
    """Chunks of 256 and as many per query as half the trained length holds (at most 16, the
    paper's 4096-token attended length), RoPE re-indexed with the model's base, so every
    distance a head sees stays inside the trained length at any prompt length.

    ``representation="mean"``: the main job also decodes with LongHeads, and the paper's
    attention-weighted chunk key needs the chunk's own queries, which a decode step lacks.
    """
    chunk = 256
    chunks = max(3, min(16, trained_length(config) // (2 * chunk)))
    return {"chunk_size": chunk, "chunks": chunks, "representation": "mean", "rope_theta": rope_theta(config)}
