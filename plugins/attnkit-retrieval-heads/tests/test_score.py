"""Retrieval scores on synthetic attention streams (the spec's checks) and on a tiny random
Llama against eager attention probabilities."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _retrieval_helpers import VOCAB, tiny_llama

import attnkit
from attnkit_retrieval_heads.detect import greedy_generate
from attnkit_retrieval_heads.score import RetrievalScore, instance_scores, load_scores

L, H, T = 3, 4, 40
SPAN = (10, 18)


def _prompt() -> list[int]:
    # distinct tokens everywhere so "the token at i" identifies i
    return list(range(100, 100 + T))


def _brute(top1: np.ndarray, seq: list[int], gen: list[int], span: tuple[int, int]) -> np.ndarray:
    s, e = span
    out = np.zeros(top1.shape[1:])
    for j in range(top1.shape[0]):
        for layer in range(top1.shape[1]):
            for h in range(top1.shape[2]):
                i = int(top1[j, layer, h])
                if s <= i < e and i < len(seq) and seq[i] == gen[j]:
                    out[layer, h] += 1.0 / (e - s)
    return out


def _feed(analysis: RetrievalScore, targets: np.ndarray, t0: int = T) -> None:
    """One-hot decode-step patterns (1, H, 1, Tk) whose argmax is ``targets[j, l, h]``."""
    for j in range(targets.shape[0]):
        run = SimpleNamespace(phase="decode", step=j + 1)
        tk = t0 + j + 1
        for layer in range(targets.shape[1]):
            p = torch.full((1, targets.shape[2], 1, tk), 0.5 / tk)
            for h in range(targets.shape[2]):
                p[0, h, 0, targets[j, layer, h]] = 0.6
            analysis.attnkit_capture(site=f"blocks.{layer}.attn.hook_pattern", layer=layer, tensor=p, run=run)


def _copy_stream(rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """The model emits the needle tokens in order, then a stop token; per head: a perfect
    copier, one that looks elsewhere, one copying the first half, one off by one."""
    prompt = _prompt()
    s, e = SPAN
    gen = [*prompt[s:e], 7]
    steps = len(gen)
    targets = rng.integers(0, s, size=(steps, L, H))  # default: attend before the needle
    for j in range(e - s):
        targets[j, 1, 2] = s + j  # (1, 2): copies every answer token
        if j < (e - s) // 2:
            targets[j, 2, 0] = s + j  # (2, 0): copies the first half
        targets[j, 0, 3] = min(s + j + 1, e - 1)  # (0, 3): in the span, wrong token
    return targets, gen


def test_copy_head_scores_one_others_zero_partial_fraction() -> None:
    rng = np.random.default_rng(0)
    targets, gen = _copy_stream(rng)
    rs = RetrievalScore()
    _feed(rs, targets)
    scores = rs.add_instance(_prompt(), gen, SPAN, recall=1.0).numpy()
    np.testing.assert_allclose(scores, _brute(targets, _prompt(), gen, SPAN))
    assert scores[1, 2] == pytest.approx(1.0)
    assert scores[2, 0] == pytest.approx(0.5)
    # off-by-one copies only score where the shifted token happens to be emitted: the last one
    assert scores[0, 3] == pytest.approx(1 / (SPAN[1] - SPAN[0]))
    mask = np.ones((L, H), bool)
    mask[1, 2] = mask[2, 0] = mask[0, 3] = False
    assert (scores[mask] == 0).all()


def test_mean_over_successful_instances_only() -> None:
    rng = np.random.default_rng(1)
    rs = RetrievalScore(min_recall=0.5)
    per = []
    for recall in (1.0, 0.5, 0.9, 0.2):
        targets, gen = _copy_stream(rng)
        if recall != 1.0:
            targets[:, 1, 2] = 0  # the copier fails on these instances
        _feed(rs, targets)
        per.append((recall, rs.add_instance(_prompt(), gen, SPAN, recall).numpy()))
    res = rs.result()
    counted = [sc for r, sc in per if r > 0.5]  # recall 0.5 is not > 0.5: ignored
    assert res.n_counted == 2
    np.testing.assert_allclose(res.scores, np.mean(counted, axis=0))
    assert res.scores[1, 2] == pytest.approx(0.5)
    assert res.recalls == [1.0, 0.5, 0.9, 0.2]
    assert res.fraction_above(0.1) == pytest.approx(float((res.scores > 0.1).mean()))
    assert res.top(1) == [(1, 2)]


def test_no_successful_instance_gives_zero_grid() -> None:
    rs = RetrievalScore()
    targets, gen = _copy_stream(np.random.default_rng(2))
    _feed(rs, targets)
    rs.add_instance(_prompt(), gen, SPAN, recall=0.1)
    res = rs.result()
    assert res.n_counted == 0 and res.scores.shape == (L, H) and (res.scores == 0).all()


def test_instance_scores_random_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    seq = list(rng.integers(0, 6, size=50))  # repeated tokens: identity by id, not position
    for _ in range(20):
        steps = int(rng.integers(1, 12))
        top1 = rng.integers(0, 50, size=(steps, 2, 3))
        gen = list(rng.integers(0, 6, size=steps))
        span = (int(rng.integers(0, 40)), 0)
        span = (span[0], span[0] + int(rng.integers(1, 10)))
        got = instance_scores(torch.as_tensor(top1), seq, gen, span).numpy()
        np.testing.assert_allclose(got, _brute(top1, seq, gen, span))


def test_bad_inputs_name_sizes() -> None:
    with pytest.raises(ValueError, match="3 decode steps but generated has 2"):
        instance_scores(torch.zeros(3, 1, 1, dtype=torch.long), [1, 2, 3], [1, 2], (0, 2))
    with pytest.raises(ValueError, match="span"):
        instance_scores(torch.zeros(1, 1, 1, dtype=torch.long), [1, 2, 3], [1], (2, 9))
    rs = RetrievalScore()
    with pytest.raises(ValueError, match="batch size 1"):
        rs.attnkit_capture(
            "blocks.0.attn.hook_pattern", 0, torch.zeros(2, 4, 1, 5), SimpleNamespace(phase="decode", step=1)
        )
    with pytest.raises(ValueError, match="threshold"):
        RetrievalScore(threshold=2.0)


def test_load_scores_formats(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    paper = {"0-1": [0.2, 0.4], "3-2": [0.0]}
    p = tmp_path / "paper.json"
    p.write_text(json.dumps(paper))
    assert load_scores(p) == {(0, 1): pytest.approx(0.3), (3, 2): 0.0}
    assert load_scores({"scores": {"1-0": 0.5}}) == {(1, 0): 0.5}
    with pytest.raises(ValueError, match="layer-head"):
        load_scores({"a-b": 1.0})


def test_tiny_llama_top1_matches_eager_attention() -> None:
    """Through attnkit.patch: the recorded top-1 positions equal the argmax of transformers'
    own eager attention probabilities over the same full sequence."""
    model = tiny_llama(heads=4, kv_heads=2, layers=2)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB, (1, 24), generator=g)
    tok = SimpleNamespace(decode=lambda ids, **_: "x", eos_token_id=None)
    rs = RetrievalScore()
    with attnkit.patch(model, analyses=[rs]):
        gen = greedy_generate(model, tok, prompt, max_new_tokens=6)
        top1 = rs.pending_top1()
    assert top1.shape == (len(gen), 2, 4)
    # The steps that produced gen[j] had query position 23 + j (the prompt's last token first).
    full = torch.cat([prompt, torch.tensor([gen[:-1]])], dim=1)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        att = model(full, output_attentions=True).attentions
    model.set_attn_implementation("sdpa")
    want = torch.stack([torch.stack([a[0, :, 23 + j].argmax(-1) for a in att]) for j in range(len(gen))])
    assert torch.equal(top1, want)
    # and the score of a planted span built from those positions is the brute force one
    seq = full[0].tolist()
    span = (5, 15)
    np.testing.assert_allclose(instance_scores(top1, seq, gen, span).numpy(), _brute(top1.numpy(), seq, gen, span))


def test_analysis_spec_builds_the_analysis() -> None:
    from attnkit.registry import resolve

    spec = attnkit.get_spec("retrieval_score", "analysis")
    assert spec.sites == ("blocks.{l}.attn.hook_pattern@decode",)
    rs = resolve(spec.factory)(spec.make_params(threshold=0.2, min_recall=0.7))
    assert isinstance(rs, RetrievalScore) and (rs.threshold, rs.min_recall) == (0.2, 0.7)
    assert rs.attnkit_sites() == list(spec.sites)
    with pytest.raises(ValueError, match="min_recall"):
        spec.make_params(min_recall=-0.1)
