"""Ablation importance against planted answers and a hook-free brute force, and the
checkpoint comparison (Eq. 8, circuits, head sets, frequencies) against plain loops."""

from __future__ import annotations

import random

import pytest
import torch

from attnkit.testing import TINY_VOCAB, tiny_causal_lm
from attnkit_thinking_sparks import importance as imp

N_LAYERS, N_HEADS, HEAD_DIM = 2, 4, 16  # tiny_causal_lm: 4 query / 2 KV heads of 16


def _data(seed: int = 3, n: int = 6, t: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, TINY_VOCAB, (n, t), generator=g), torch.randint(0, TINY_VOCAB, (n, t), generator=g)


def _loss_fn(ids: torch.Tensor, labels: torch.Tensor):  # type: ignore[no-untyped-def]
    def fn(model):  # type: ignore[no-untyped-def]
        logits = model(ids).logits.double()
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return ce.mean(1)

    return fn


def _block(model, layer):  # type: ignore[no-untyped-def]
    return model.model.layers[layer].self_attn.o_proj.weight


def _brute_force_delta(model, ids, labels) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """dL per head by deleting the head's column block of o_proj (no hooks, no attnkit)."""
    fn = _loss_fn(ids, labels)
    with torch.no_grad():
        clean = fn(model).mean()
        out = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.float64)
        for layer in range(N_LAYERS):
            for h in range(N_HEADS):
                w = _block(model, layer)
                saved = w[:, h * HEAD_DIM : (h + 1) * HEAD_DIM].clone()
                w[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = 0
                out[layer, h] = fn(model).mean() - clean
                w[:, h * HEAD_DIM : (h + 1) * HEAD_DIM] = saved
    return out


def _scan(model, ids, labels) -> torch.Tensor:  # type: ignore[no-untyped-def]
    clean, ablated = imp.ablation_scan(model, _loss_fn(ids, labels), N_LAYERS, N_HEADS)
    assert ablated.shape == (N_LAYERS, N_HEADS, ids.shape[0])
    return ablated.mean(-1) - clean.mean()


def test_zero_ablation_equals_removing_the_heads_o_proj_columns():
    model = tiny_causal_lm(seed=1).double()
    ids, labels = _data()
    delta = _scan(model, ids, labels)
    torch.testing.assert_close(delta, _brute_force_delta(model, ids, labels), rtol=0, atol=1e-10)
    assert float(delta.abs().min()) > 1e-6  # every head of a random model matters a little


def test_the_head_that_carries_the_output_ranks_first_and_a_silenced_head_scores_zero():
    model = tiny_causal_lm(seed=2).double()
    with torch.no_grad():
        _block(model, 1)[:, 2 * HEAD_DIM : 3 * HEAD_DIM] *= 25.0  # planted: L1H2 dominates the residual write
        _block(model, 0)[:, 1 * HEAD_DIM : 2 * HEAD_DIM] = 0.0  # L0H1 writes nothing by construction
    ids, labels = _data(seed=4)
    delta = _scan(model, ids, labels)
    importance = imp.normalise(delta)
    assert imp.circuit(importance, 1) == [(1, 2)]
    assert importance[0, 1] == 0.0 and delta[0, 1] == 0.0
    brute = _brute_force_delta(model, ids, labels)
    assert int(brute.abs().argmax()) == 1 * N_HEADS + 2
    torch.testing.assert_close(delta, brute, rtol=0, atol=1e-10)


def test_only_writing_head_gets_all_importance():
    model = tiny_causal_lm(seed=5).double()
    with torch.no_grad():
        _block(model, 0).zero_()
        w = _block(model, 1)
        keep = w[:, 3 * HEAD_DIM : 4 * HEAD_DIM].clone()
        w.zero_()
        w[:, 3 * HEAD_DIM : 4 * HEAD_DIM] = keep * 10
    importance = imp.normalise(_scan(model, *_data(seed=6)))
    want = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.float64)
    want[1, 3] = 1.0
    torch.testing.assert_close(importance, want, rtol=0, atol=1e-12)


def test_scan_refuses_heads_outside_the_model():
    model = tiny_causal_lm(seed=0)
    with pytest.raises(ValueError, match=r"heads: \(2, 0\)"):
        imp.ablation_scan(model, lambda m: torch.zeros(1), N_LAYERS, N_HEADS, heads=[(2, 0)])


def test_normalise_is_share_of_magnitude():
    d = torch.tensor([[0.5, -1.5], [0.0, float("nan")]], dtype=torch.float64)
    got = imp.normalise(d)
    torch.testing.assert_close(got[:1], torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    assert got[1, 0] == 0 and torch.isnan(got[1, 1])
    assert torch.equal(imp.normalise(torch.zeros(2, 2)), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="delta"):
        imp.normalise(torch.zeros(3))


# -- checkpoint comparison against plain loops ----------------------------------------------


def _random_map(rng: random.Random, n_layers: int, n_heads: int) -> torch.Tensor:
    m = torch.tensor([[rng.random() ** 3 for _ in range(n_heads)] for _ in range(n_layers)], dtype=torch.float64)
    return m / m.sum()


def test_effect_matches_the_formula_and_its_limits():
    rng = random.Random(0)
    pre, post = _random_map(rng, 3, 5), _random_map(rng, 3, 5)
    got = imp.effect(pre, post)
    for ly in range(3):
        for h in range(5):
            a, b = float(pre[ly, h]), float(post[ly, h])
            assert abs(float(got[ly, h]) - (b - a) / (b + a + 1e-6)) < 1e-15
    assert torch.equal(imp.effect(pre, pre), torch.zeros(3, 5, dtype=torch.float64))
    only_post = torch.zeros(1, 2, dtype=torch.float64)
    only_post[0, 0] = 0.5
    e = imp.effect(torch.zeros(1, 2, dtype=torch.float64), only_post)
    assert e[0, 0] > 1 - 1e-5 and e[0, 1] == 0
    assert imp.effect(only_post, torch.zeros(1, 2, dtype=torch.float64))[0, 0] < -1 + 1e-5
    with pytest.raises(ValueError, match="pre and post"):
        imp.effect(pre, post[:2])


@pytest.mark.parametrize("seed", range(5))
def test_circuits_sets_frequency_and_emergence_match_brute_force(seed):
    rng = random.Random(seed)
    n_layers, n_heads, k = 3, 4, 4
    maps = [_random_map(rng, n_layers, n_heads) for _ in range(4)]
    steps = [0, 10, 20, 30]
    circuits = [imp.circuit(m, k) for m in maps]
    for m, c in zip(maps, circuits):
        values = sorted((float(m[ly, h]) for ly in range(n_layers) for h in range(n_heads)), reverse=True)
        assert [float(m[x]) for x in c] == values[:k]
    sets = imp.compare_sets(circuits[0], circuits[-1])
    for head in [(ly, h) for ly in range(n_layers) for h in range(n_heads)]:
        in_base, in_post = head in circuits[0], head in circuits[-1]
        assert (head in sets.emergent) == (in_post and not in_base)
        assert (head in sets.retained) == (in_post and in_base)
        assert (head in sets.pruned) == (in_base and not in_post)
    freq = imp.activation_frequency(circuits, n_layers, n_heads)
    first = imp.first_emergence(circuits, steps)
    for ly in range(n_layers):
        for h in range(n_heads):
            assert float(freq[ly, h]) == sum((ly, h) in c for c in circuits) / 4
            later = [s for c, s in zip(circuits[1:], steps[1:]) if (ly, h) in c]
            want = later[0] if later and (ly, h) not in circuits[0] else None
            assert first.get((ly, h)) == want


def test_circuit_breaks_ties_by_position_and_skips_nan():
    m = torch.tensor([[1.0, float("nan")], [1.0, 2.0]])
    assert imp.circuit(m, 3) == [(1, 1), (0, 0), (1, 0)]
    with pytest.raises(ValueError, match="k must"):
        imp.circuit(m, 5)


def test_bootstrap_jaccard_is_one_for_a_planted_stable_circuit_and_checks_shapes():
    clean = torch.zeros(20, dtype=torch.float64)
    ablated = torch.zeros(2, 3, 20, dtype=torch.float64) + 0.01 * torch.rand(2, 3, 20, dtype=torch.float64)
    ablated[1, 2] += 1.0
    ablated[0, 0] += 0.5
    assert imp.bootstrap_jaccard(clean, ablated, 2, n_resamples=10) == (1.0, 0.0)
    with pytest.raises(ValueError, match="ablated"):
        imp.bootstrap_jaccard(clean, ablated[..., :5], 2)
