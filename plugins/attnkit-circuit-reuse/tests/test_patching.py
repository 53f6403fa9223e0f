"""Activation and path patching at [END] against planted answers and a brute-force
reference (plain forward hooks, full-sequence forwards in float64, no attnkit, no cache)."""

from __future__ import annotations

import pytest
import torch

from attnkit_circuit_reuse import patching as P


def _ld(logits, planted):
    return float(P.logit_diff(logits, planted.answer, planted.wrong).mean())


@pytest.fixture(scope="module")
def states(planted):
    return P.end_state(planted.model, planted.clean), P.end_state(planted.model, planted.corrupted)


def _score(logits, planted, states):
    clean, corrupt = states
    return P.score(_ld(logits, planted), _ld(clean.logits, planted), _ld(corrupt.logits, planted))


def test_end_state_matches_a_full_forward(planted, states, ref):
    clean, _ = states
    with torch.no_grad():
        full = planted.model(planted.clean).logits[:, -1]
    torch.testing.assert_close(clean.logits, full, rtol=0, atol=1e-10)
    for got, want in zip(clean.z, ref.z_end(planted.model, planted.clean)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_planted_sender_carries_the_whole_effect(planted, states):
    clean, corrupt = states
    assert _ld(clean.logits, planted) > 1 and _ld(corrupt.logits, planted) < -1  # the circuit works
    heads = [[(layer, h)] for layer in range(2) for h in range(4)]
    scores = [_score(lg, planted, states) for lg in P.activation_patch(planted.model, clean, corrupt, heads)]
    by_head = dict(zip([g[0] for g in heads], scores))
    assert by_head[(0, 1)] == pytest.approx(1.0, abs=1e-3)
    # the receiver's [END] output is the only place the sender's feature is read
    assert by_head[(1, 2)] == pytest.approx(1.0, abs=1e-9)
    # no other head of layer 0 writes, no other head of layer 1 reads anything the sender changes
    for head in [(0, 0), (0, 2), (0, 3), (1, 0), (1, 1), (1, 3)]:
        assert by_head[head] == pytest.approx(0.0, abs=1e-12)


def test_path_patching_planted_sender_to_receivers(planted, states, ref):
    clean, corrupt = states
    model = planted.model
    ap = _score(P.activation_patch(model, clean, corrupt, [[ref.SENDER]])[0], planted, states)
    to_receiver = P.path_patch_to_heads(model, clean, corrupt, [[ref.SENDER]], [ref.RECEIVER], inputs="v")[0]
    assert _score(to_receiver, planted, states) == pytest.approx(ap, abs=1e-12)
    assert _score(to_receiver, planted, states) == pytest.approx(1.0, abs=1e-3)
    # the other receivers, and the receiver's query (it reads only the END marker), get nothing
    for receivers, inputs in ((ref.OTHER_RECEIVERS, "qkv"), ([ref.RECEIVER], "q")):
        lg = P.path_patch_to_heads(model, clean, corrupt, [[ref.SENDER]], receivers, inputs=inputs)[0]
        assert _score(lg, planted, states) == pytest.approx(0.0, abs=1e-12)
    # no direct path: the unembedding ignores the sender's feature, and the receiver is frozen
    direct = P.path_patch_to_logits(model, clean, corrupt, [[ref.SENDER]])[0]
    assert _score(direct, planted, states) == pytest.approx(0.0, abs=1e-12)
    # the receiver itself, path-patched to the logits, carries the whole corrupted effect
    rec = P.path_patch_to_logits(model, clean, corrupt, [[ref.RECEIVER]])[0]
    assert _score(rec, planted, states) == pytest.approx(1.0, abs=1e-3)


def _random_llama():
    from attnkit.testing import tiny_causal_lm

    return tiny_causal_lm(seed=3).double()


@pytest.fixture(scope="module")
def random_case():
    model = _random_llama()
    g = torch.Generator().manual_seed(4)
    clean = torch.randint(3, 90, (2, 7), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(3, 90, (2,), generator=g)
    return model, clean, corrupted, P.end_state(model, clean), P.end_state(model, corrupted)


@pytest.mark.parametrize("inputs", ["q", "k", "v", "qkv"])
def test_path_patching_matches_brute_force_hooks(random_case, ref, inputs):
    model, clean_ids, corrupt_ids, clean, corrupt = random_case
    senders, receivers = [(0, 1)], [(1, 0), (1, 3)]
    got = P.path_patch_to_heads(model, clean, corrupt, [senders, [(0, 2)]], receivers, inputs=inputs)
    want = ref.path_patch(model, clean_ids, corrupt_ids, senders, receivers, inputs=inputs)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-9)
    want2 = ref.path_patch(model, clean_ids, corrupt_ids, [(0, 2)], receivers, inputs=inputs)
    torch.testing.assert_close(got[1], want2, rtol=0, atol=1e-9)  # groups side by side stay apart


def test_path_to_logits_and_activation_patching_match_brute_force(random_case, ref):
    model, clean_ids, corrupt_ids, clean, corrupt = random_case
    groups = [[(0, 0)], [(1, 2)], [(0, 3), (1, 1)]]
    pp = P.path_patch_to_logits(model, clean, corrupt, groups)
    ap = P.activation_patch(model, clean, corrupt, groups)
    for i, g in enumerate(groups):
        torch.testing.assert_close(pp[i], ref.path_patch(model, clean_ids, corrupt_ids, g, None), rtol=0, atol=1e-9)
        want = ref.path_patch(model, clean_ids, corrupt_ids, g, None, freeze=False)
        torch.testing.assert_close(ap[i], want, rtol=0, atol=1e-9)


def test_patching_every_head_recovers_the_corrupted_logits(random_case):
    model, _, corrupt_ids, clean, corrupt = random_case
    every = [(layer, h) for layer in range(2) for h in range(4)]
    with torch.no_grad():
        want = model(corrupt_ids).logits[:, -1]
    torch.testing.assert_close(P.activation_patch(model, clean, corrupt, [every])[0], want, rtol=0, atol=1e-10)
    # path patching every head "to the logits" freezes nothing that is not patched: the same
    torch.testing.assert_close(P.path_patch_to_logits(model, clean, corrupt, [every])[0], want, rtol=0, atol=1e-10)


def test_clean_equals_corrupted_gives_zero(random_case):
    model, _, _, clean, _ = random_case
    heads = [[(layer, h)] for layer in range(2) for h in range(4)]
    for lg in P.activation_patch(model, clean, clean, heads):
        torch.testing.assert_close(lg, clean.logits, rtol=0, atol=1e-12)
    assert torch.isnan(torch.tensor(P.score(1.0, 2.0, 2.0)))


def test_bad_inputs_name_the_argument(random_case):
    model, _, _, clean, corrupt = random_case
    with pytest.raises(ValueError, match="outside the model"):
        P.activation_patch(model, clean, corrupt, [[(5, 0)]])
    with pytest.raises(ValueError, match="inputs"):
        P.path_patch_to_heads(model, clean, corrupt, [[(0, 0)]], [(1, 0)], inputs="x")
    with pytest.raises(ValueError, match="receivers"):
        P.path_patch_to_heads(model, clean, corrupt, [[(0, 0)]], [])
    with pytest.raises(ValueError, match="ids"):
        P.end_state(model, torch.zeros(3, dtype=torch.long))


def test_recorder_keeps_the_last_position_of_each_head(random_case, ref):
    import attnkit

    model, clean_ids, _, _, _ = random_case
    rec = P.build()
    with torch.no_grad(), attnkit.patch(model, analyses=[rec]):
        model(clean_ids)
    got = rec.result()
    for layer, want in enumerate(ref.z_end(model, clean_ids)):
        torch.testing.assert_close(got[f"blocks.{layer}.attn.hook_z"], want, rtol=0, atol=1e-10)
