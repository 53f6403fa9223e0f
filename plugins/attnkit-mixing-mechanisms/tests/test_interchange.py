"""Interchange interventions through the core's ActivationPatch: a planted binding model moves
its answer to the constructed target, and patching a prompt with itself changes nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from attnkit.testing import TINY_VOCAB, tiny_causal_lm
from attnkit_mixing_mechanisms.analysis import LABELS, classify, js_divergence, shares
from attnkit_mixing_mechanisms.interchange import interchange
from attnkit_mixing_mechanisms.prompts import make_pairs


def _load_planted():  # type: ignore[no-untyped-def]
    # tests/ is not a package (--import-mode=importlib): load the helper module by path
    spec = importlib.util.spec_from_file_location("mixing_mechanisms_planted", Path(__file__).with_name("planted.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


planted = _load_planted()
LAST = planted.N_GROUPS  # the query token's position


@pytest.fixture(scope="module")
def enc() -> object:
    return planted.encode(make_pairs(12, planted.N_GROUPS, seed=5))


@pytest.mark.parametrize("mechanism", ["positional", "reflexive"])
def test_planted_mechanism_moves_the_answer_as_constructed(mechanism: str, enc: object) -> None:
    model = planted.build(mechanism)
    plan = [(1, "last", [LAST]), (0, "last", [LAST]), (1, "early", [0])]
    base, cf, patched = interchange(model, enc.base, enc.cf, enc.candidates, enc.cf_candidates, plan)
    assert torch.equal(base.choice, enc.targets[:, 3])  # unedited: the bound object
    assert torch.equal(cf.choice, enc.targets[:, 0])
    want = LABELS.index(mechanism)
    assert classify(patched[(1, "last")].choice, enc.targets).tolist() == [want] * 12
    # block 0's input at the query token is the query name itself: lexical in both models
    assert classify(patched[(0, "last")].choice, enc.targets).tolist() == [LABELS.index("lexical")] * 12
    # a group token patched after block 0 never reaches the answer (block 1 reads the last token)
    assert torch.equal(patched[(1, "early")].choice, base.choice)
    assert float(patched[(1, "last")].dist.max(-1).values.min()) > 0.99


@pytest.mark.parametrize("site", ["resid_pre", "z"])
def test_patching_a_prompt_with_itself_changes_nothing(site: str) -> None:
    model = tiny_causal_lm(seed=3)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, TINY_VOCAB, (3, 10), generator=g)
    cand = torch.randint(0, TINY_VOCAB, (3, 5), generator=g)
    plan = [(0, "last", [9]), (1, "last", [9]), (1, "all", list(range(10)))]
    base, _, patched = interchange(model, ids, ids.clone(), cand, cand, plan, site=site)
    with torch.no_grad():
        ref = model(ids).logits[:, -1].gather(1, cand)
    torch.testing.assert_close(base.logits, ref, atol=1e-5, rtol=1e-5)
    for r in patched.values():
        torch.testing.assert_close(r.logits, base.logits, atol=1e-5, rtol=1e-5)
    # and a different prompt patched everywhere at block 0 reproduces that prompt
    other = torch.randint(0, TINY_VOCAB, (3, 10), generator=g)
    _, cf2, p2 = interchange(model, ids, other, cand, cand, [(0, "all", list(range(10)))])
    torch.testing.assert_close(p2[(0, "all")].logits, cf2.logits, atol=1e-5, rtol=1e-5)


def test_mismatched_pairs_are_refused() -> None:
    model = tiny_causal_lm()
    a, b = torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 7, dtype=torch.long)
    c = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"base \(2, 6\) and cf \(2, 7\)"):
        interchange(model, a, b, c, c, [(0, "last", [5])])
    with pytest.raises(ValueError, match=r"positions \[6\]"):
        interchange(model, a, a, c, c, [(0, "last", [6])])
    with pytest.raises(ValueError, match="site must be one of"):
        interchange(model, a, a, c, c, [(0, "last", [5])], site="resid_post")


def test_classify_shares_and_js() -> None:
    t = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]])
    lab = classify(torch.tensor([1, 3, 4]), t)
    assert lab.tolist() == [1, 0, 4]
    sh = shares(lab)
    assert sh["lexical"] == sh["positional"] == sh["other"] == pytest.approx(1 / 3) and sh["no_effect"] == 0
    p = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    q = torch.tensor([[0.0, 1.0], [0.5, 0.5]])
    torch.testing.assert_close(js_divergence(p, q), torch.tensor([1.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
