"""Test helpers: a seeded tiny random Llama (no download) and a word-level tokenizer. The name
is unique across plugins because conftest.py puts this folder on sys.path, which works under
pytest's ``--import-mode=importlib`` too."""

from __future__ import annotations

import re
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


class WordTokenizer:
    """Deterministic word-level tokenizer: one id per word or punctuation mark (leading space
    ignored), no chat template. Enough for the generator's length and span logic."""

    chat_template = None
    eos_token_id = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.inverse: dict[int, str] = {}

    def _id(self, word: str) -> int:
        if word not in self.vocab:
            self.vocab[word] = len(self.vocab)
            self.inverse[self.vocab[word]] = word
        return self.vocab[word]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [self._id(w) for w in re.findall(r"\w+|[^\w\s]|\n", text)]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(self.inverse.get(i, "?") for i in ids)
