"""On SmolLM2-135M-Instruct (slow: loads the embedded model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_prompts_tokenize_canonically_with_single_token_entities() -> None:
    from attnkit.models import load
    from attnkit_mixing_mechanisms.prompts import encode_pairs, make_pairs

    _, tok = load("smollm2")
    pairs = make_pairs(24, 6, seed=0)
    enc = encode_pairs(tok, pairs)  # raises unless every entity is one token and lengths agree
    for ids in (*enc.base[:6], *enc.cf[:6]):
        # piece-wise encoding equals the tokenizer's own encoding of the text
        assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids.tolist()


@pytest.mark.slow
def test_quick_analyze_on_smollm2(tmp_path: Path) -> None:
    from attnkit.cli import main

    torch.set_num_threads(1)
    assert main(["analyze", "mixing_mechanisms", "--quick", "--no-progress", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    s = res["summary"]
    assert s["pairs"] == 16 and s["groups"] == 4
    assert s["base accuracy"] > s["chance"]
    shares = [s[f"share {m}"] for m in ("positional", "lexical", "reflexive", "no_effect")]
    assert abs(sum(shares) - 1) < 3e-3  # the summary rounds each share to 3 decimals
    assert len(res["comparisons"]) == 4
    for name in ("accuracy_per_position.png", "mechanism_shares.png", "mixing_weights.png", "layer_sweep.png"):
        assert 0 < (tmp_path / name).stat().st_size < 250_000
    assert (tmp_path / "report.html").stat().st_size > 0
