"""Parameter checks, and the capture path on a tiny model: the patterns ``capture_patterns``
returns are the eager attention weights of transformers for exactly the asked layers."""

from __future__ import annotations

import pytest
import torch

from attnkit.testing import tiny_causal_lm
from attnkit_preplan_anchor.analysis import capture_patterns, reasoning_prompts, sequence_metrics
from attnkit_preplan_anchor.params import PreplanAnchorParams
from attnkit_preplan_anchor.runtime import PreplanAnchorCapture


@pytest.mark.parametrize(
    ("kw", "exc", "word"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"q_head": 0.7}, ValueError, "q_head"),
        ({"q": 0}, ValueError, "q must"),
        ({"h_lo": 5, "h_hi": 3}, ValueError, "h_hi"),
        ({"k": 1.5}, TypeError, "k must"),
        ({"layers": (-1,)}, ValueError, "layers"),
        ({"alpha": 2.0}, ValueError, "alpha"),
    ],
)
def test_params_refuse(kw: dict, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        PreplanAnchorParams(**kw)


def test_params_layers_from_string() -> None:
    assert PreplanAnchorParams(layers="3, 1,3").layers == (1, 3)


def test_prompts_seeded() -> None:
    assert reasoning_prompts(3, 1) == reasoning_prompts(3, 1)
    assert reasoning_prompts(3, 1) != reasoning_prompts(3, 2)


def test_capture_matches_eager_attentions_for_asked_layers() -> None:
    model = tiny_causal_lm(seed=0)
    ids = torch.randint(3, 40, (1, 14), generator=torch.Generator().manual_seed(0))
    got = capture_patterns(model, ids, [1])
    eager = tiny_causal_lm(impl="eager", seed=0)
    with torch.no_grad():
        ref = eager(input_ids=ids, output_attentions=True).attentions[1][0].double()
    assert got.shape == ref.shape == (4, 14, 14)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    m = sequence_metrics(got, 6, PreplanAnchorParams(q_head=0.25))
    assert m.credit.gamma_coupled.shape == (8,)


def test_runtime_object_keeps_only_its_layers() -> None:
    import attnkit

    model = tiny_causal_lm(seed=0)
    obj = PreplanAnchorCapture(PreplanAnchorParams(q_head=0.25))
    ids = torch.randint(3, 40, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[obj]):
        model(input_ids=ids)
    assert obj.layers == [0, 1]  # middle third of a 2-layer model
    assert obj.stacked().shape == (8, 10, 10)
    res = obj.result()
    assert len(res["gamma_coupled"]) == 10
