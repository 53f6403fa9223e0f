"""DHSA's parameters for the prefill of a causal language model (``AttentionSpec.model_prefill``)."""

from __future__ import annotations

from typing import Any

from attnkit.hf.modelconfig import require_trained_length


def for_model(config: Any, length: int) -> dict[str, Any]:
    """The defaults (block 128, chunks of 16, 128 sinks, top 768 keys per query block): at
    ``length`` tokens a query block reads at most ``128 + 768 + 128`` keys. DHSA keeps the
    model's positions, so prompts beyond ``max_position_embeddings`` are refused."""
    require_trained_length("dhsa", config, length)
    return {}
