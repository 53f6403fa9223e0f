"""Landmark block retrieval's parameters for the prefill of a causal language model
(``AttentionSpec.model_prefill``)."""

from __future__ import annotations

from typing import Any


def for_model(config: Any, length: int) -> dict[str, Any]:
    """Blocks of 64 with the top 4 retrieved per query and head (the paper's LLaMA setting).

    A model not fine-tuned with landmark tokens has none: each block's last token stands in
    for its landmark, so this measures the retrieval mechanism zero-shot, not the paper's
    fine-tuned model. Any length is accepted (the paper's claim is length extrapolation);
    keys keep the model's positions.
    """
    return {"block_size": 64, "top_k": 4}
