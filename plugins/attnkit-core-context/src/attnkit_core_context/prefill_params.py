"""Core-context attention's parameters for the prefill of a causal language model
(``AttentionSpec.model_prefill``)."""

from __future__ import annotations

from typing import Any

from attnkit.hf.modelconfig import require_trained_length


def for_model(config: Any, length: int) -> dict[str, Any]:
    """The official code's defaults (groups of 16, a 1024-token local window). CCA keeps the
    model's positions, so prompts beyond ``max_position_embeddings`` are refused."""
    require_trained_length("core_context", config, length)
    return {}
