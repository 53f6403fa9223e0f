"""A character-level stand-in tokenizer for the fast tests (uniquely named: conftest puts this
folder on sys.path, which pytest's importlib mode does not)."""

from __future__ import annotations


class CharTokenizer:
    """One token per character (id = code point % 94 + 3, inside the tiny model's vocabulary of
    97), with offsets: enough to run the prompt code without a real tokenizer."""

    def __call__(self, text: str, return_offsets_mapping: bool = False) -> dict:
        out: dict = {"input_ids": [ord(c) % 94 + 3 for c in text]}
        if return_offsets_mapping:
            out["offset_mapping"] = [(i, i + 1) for i in range(len(text))]
        return out
