"""``analyze`` end to end on a tiny random Llama with a toy tokenizer (every fifth id decodes
to a period, so the random traces have sentences): it runs, writes its figures and returns
comparisons with their controls."""

from __future__ import annotations

import json

import pytest
import torch

from attnkit.analyze import AnalyzeContext, AnalyzeOutcome
from attnkit.registry import resolve
from attnkit_thought_anchors import THOUGHT_ANCHORS


class ToyTokenizer:
    """Ids 3..96 are words; ids divisible by 5 end a sentence; id 0 is EOS."""

    chat_template = None
    eos_token_id = 0
    all_special_ids = (0,)

    def __call__(self, text: str, return_tensors: str = "pt") -> object:
        ids = [3 + (sum(map(ord, w)) % 90) for w in text.split()]

        class Out:
            input_ids = torch.tensor([ids])

        return Out()

    def decode(self, ids: list[int], **_: object) -> str:
        return "".join(" end." if i % 5 == 0 else f" W{i}" for i in ids)


@pytest.mark.slow
def test_analyze_runs_on_a_tiny_model(tmp_path):
    from attnkit.testing import tiny_causal_lm

    model = tiny_causal_lm(seed=0)
    model.generation_config.suppress_tokens = [0, 1, 2]  # never EOS: a long trace
    params = THOUGHT_ANCHORS.make_params(
        n_prompts=2, max_new_tokens=64, top_k=3, min_sentences=6, n_controls=2, temperature=1.0, top_p=1.0
    )
    ctx = AnalyzeContext(
        spec=THOUGHT_ANCHORS,
        params=params,
        model_name="tiny",
        prompts=["a b c d", "e f g h", "i j k l", "m n o p"],
        out_dir=tmp_path,
        progress=False,
        _loaded=(model, ToyTokenizer()),
    )
    out = resolve(THOUGHT_ANCHORS.analyze)(ctx)
    assert isinstance(out, AnalyzeOutcome)
    assert out.summary["traces"] == 2, out.paragraphs[0]
    assert out.summary["no-op edit max KL"] == 0.0
    assert len(out.comparisons) == 3
    for c in out.comparisons[:1] + out.comparisons[2:]:
        assert c.effect >= 0 and c.control >= 0 and c.n >= 2
    assert {p.name for p in out.figures} == {
        "receiver_head_sentence_matrix.png",
        "head_kurtosis.png",
        "kl_per_sentence.png",
    }
    for p in out.figures:
        assert p.is_file() and p.stat().st_size < 250_000
    json.dumps(out.results)  # JSON-ready
    m = out.results["traces"][0]["log_kl_matrix"]
    n = len(out.results["traces"][0]["sentences"])
    assert len(m) == n and all(m[j][i] is None for i in range(n) for j in range(i + 1))
