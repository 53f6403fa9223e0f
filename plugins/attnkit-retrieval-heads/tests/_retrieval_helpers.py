"""Test helpers: a seeded tiny random Llama (no download). The name is unique across plugins
because conftest.py puts this folder on sys.path, which works under pytest's
``--import-mode=importlib`` too. (The word-level tokenizer moved to
:class:`attnkit.testing.WordTokenizer` with the needle generator.)"""

from __future__ import annotations

from typing import Any

import torch

VOCAB = 97


def tiny_llama(
    seed: int = 0, heads: int = 4, kv_heads: int = 2, layers: int = 2, dtype: torch.dtype = torch.float64
) -> Any:
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        eos_token_id=None,  # runs go to max_new_tokens
    )
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.set_attn_implementation("sdpa")
    return model.eval()
