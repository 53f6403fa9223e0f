"""Small models for tests, yours and attnkit's: randomly initialised, seeded, no download."""

from __future__ import annotations

from typing import Any

__all__ = ["TINY_VOCAB", "tiny_causal_lm"]

TINY_VOCAB = 97


def tiny_causal_lm(impl: str = "sdpa", seed: int = 0, model_type: str = "llama") -> Any:
    """A 2-layer transformers causal LM (hidden 64, 4 query / 2 KV heads, head dim 16, vocab
    :data:`TINY_VOCAB`) in float32 eval mode.

    :param impl: transformers attention implementation (``"sdpa"``, ``"eager"``).
    :param model_type: ``"llama"``, ``"mistral"`` or ``"qwen2"``.
    """
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    if model_type == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**kwargs, sliding_window=None))
    elif model_type == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
    elif model_type == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
    else:
        raise ValueError(f"model_type must be 'llama', 'mistral' or 'qwen2', got {model_type!r}")
    model.set_attn_implementation(impl)
    return model.eval()
