"""The main job's prefill table on a tiny causal LM: kernels declaring ``model_prefill``
against unpatched dense attention on the same needle prompts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from attnkit.data.needles import make_case
from attnkit.prefilljob import long_context_specs, run_prefill_table
from attnkit.testing import BAND, SELF_ONLY, TINY_VOCAB, WordTokenizer, registered_specs, tiny_causal_lm


def _whole(config: Any, length: int) -> dict[str, Any]:
    return {"window": length}  # a band as wide as the prompt: dense attention


def _narrow(config: Any, length: int) -> dict[str, Any]:
    if length > config.max_position_embeddings:
        raise ValueError(f"refuses {length} > {config.max_position_embeddings}")
    return {"window": 2}


WHOLE = dataclasses.replace(BAND, name="testing.whole", model_prefill=_whole)
NARROW = dataclasses.replace(SELF_ONLY, name="testing.narrow", model_prefill=_narrow)


def test_prefill_table_rows_against_dense(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_causal_lm()
    tok = WordTokenizer()
    limit = model.config.max_position_embeddings  # 256
    cases = [
        dataclasses.replace(case, input_ids=[t % TINY_VOCAB for t in case.input_ids])  # the tiny model's vocabulary
        for case in (
            make_case(tok, length=n, depth=d, seed=i) for i, (n, d) in enumerate([(80, 0), (80, 100), (300, 50)])
        )
    ]
    assert len(cases[2].input_ids) > limit
    with registered_specs(WHOLE, NARROW, name="attnkit-testing-prefill"):
        specs = long_context_specs("testing.whole,testing.narrow")
        assert [s.name for s in specs] == ["testing.whole", "testing.narrow"]
        with pytest.raises(ValueError, match="not an installed long-context kernel"):
            long_context_specs("dense")
        got = run_prefill_table(
            model, tok, cases, specs, max_new_tokens=4, stop=set(), out_dir=tmp_path, progress=False
        )
    rows = {(r["kernel"], r["length"]): r for r in got.rows}
    # a band as wide as the prompt is dense attention: the same greedy answers, token for token
    assert got.answers[("testing.whole", 80)] == got.answers[("dense", 80)]
    assert got.answers[("testing.whole", 300)] == got.answers[("dense", 300)]
    assert rows[("testing.whole", 80)]["decode"] == "kernel"
    # a self-attention-only kernel prefills, and the answer is decoded with dense attention
    assert rows[("testing.narrow", 80)]["decode"] == "dense"
    assert rows[("testing.narrow", 80)]["params"] == {"window": 2}
    # beyond the trained length only kernels that accept it run, dense is measured there too
    assert ("testing.narrow", 300) not in rows and "testing.narrow@300" in got.skipped
    assert "refuses" in got.skipped["testing.narrow@300"]
    assert rows[("dense", 300)]["beyond_trained"] and not rows[("dense", 80)]["beyond_trained"]
    for r in got.rows:
        assert r["n"] == (2 if r["length"] == 80 else 1)
        assert r["prefill_s"] > 0 and r["latency_vs_dense"] > 0
    assert rows[("dense", 80)]["latency_vs_dense"] == pytest.approx(1.0)
    assert [p.name for p in got.figures] == ["prefill.png"] and got.figures[0].is_file()
