"""The passkey experiment's pieces: the generator plants the key where it says, landmarks sit
where ``insert_landmarks`` puts them, the lean training-time grouped softmax equals the
reference (values and gradients, float64), RoPE depends only on relative position; and
(slow) a tiny run of the whole experiment."""

import json
import math

import pytest
import torch

import attnkit
from attnkit.models.data import IGNORE_INDEX
from attnkit_landmark.experiment import (
    Config,
    PasskeyGPT,
    Vocab,
    apply_rope,
    block_positions,
    grouped_softmax_attention,
    passkey_accuracy,
    passkey_batch,
    run,
)
from attnkit_landmark.tokens import landmark_positions

V = Vocab()


@pytest.mark.parametrize("landmarks", [False, True])
@pytest.mark.parametrize(("length", "bs", "digits"), [(64, 16, 4), (45, 8, 3), (200, 32, 5)])
def test_passkey_is_planted_where_it_says(landmarks, length, bs, digits):
    b = passkey_batch(50, length, digits=digits, block_size=bs, landmarks=landmarks, seed=3)
    mem = bs - 1
    for row, mark, qp, key in zip(b.raw.tolist(), b.mark_pos.tolist(), b.query_pos.tolist(), b.keys.tolist()):
        assert len(row) == length
        assert row[mark] == V.mark and row.count(V.mark) == 1
        assert row[mark + 1 : mark + 1 + digits] == [V.digit0 + d for d in key]
        assert mark // mem == (mark + digits) // mem  # MARK and key inside one landmark block
        assert mark + digits < qp
        assert 0 <= length - (qp + 1 + digits) < mem  # the unscored pad after the answer
        assert row[qp] == V.query and row.count(V.query) == 1
        assert row[qp + 1 : qp + 1 + digits] == [V.digit0 + d for d in key]
        others = row[:mark] + row[mark + 1 + digits : qp] + row[qp + 1 + digits :]
        assert all(0 <= t < V.filler for t in others)
    # The scored targets are exactly the answer, in order.
    for tgt, key in zip(b.targets.tolist(), b.keys.tolist()):
        assert [t for t in tgt if t != IGNORE_INDEX] == [V.digit0 + d for d in key]


def test_landmarks_sit_at_the_end_of_every_block():
    length, bs = 100, 8
    b = passkey_batch(4, length, block_size=bs, seed=1)
    seq = torch.cat([b.inputs, b.raw[:, -1:]], dim=1)  # 100 % 7 != 0: the last token is regular
    total = length + length // (bs - 1)
    assert seq.shape[1] == total
    lm = landmark_positions(total, bs)
    is_lm = seq == V.landmark
    assert is_lm[:, lm].all()
    assert is_lm.sum(dim=1).tolist() == [len(lm)] * 4
    # Removing the landmarks gives back the raw row.
    for row, raw in zip(seq.tolist(), b.raw.tolist()):
        assert [t for t in row if t != V.landmark] == raw


def test_query_offset_in_its_block_varies():
    b = passkey_batch(300, 128, block_size=16, seed=0)
    assert set((b.query_pos % 15).tolist()) == set(range(15))


def test_passkey_depth_covers_every_block():
    # 120 regular tokens: the key (5 tokens) fits in blocks 0..7 (block 7 is tokens 105..119;
    # a key there needs a query at 110 or later, i.e. a pad of at most 5).
    b = passkey_batch(400, 120, block_size=16, seed=0)
    assert set((b.mark_pos // 15).tolist()) == set(range(8))
    assert len(set(b.mark_pos.tolist())) > 40


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"length": 20}, "length"), ({"digits": 20}, "digits"), ({"block_size": 1}, "block_size"), ({"n": 0}, "n")],
)
def test_passkey_batch_rejects_bad_sizes(kwargs, name):
    args = {"n": 2, "length": 64, "digits": 4, "block_size": 16, **kwargs}
    n, length = args.pop("n"), args.pop("length")
    with pytest.raises(ValueError, match=name):
        passkey_batch(n, length, **args)


def test_block_positions_give_every_landmark_the_last_position():
    pos = block_positions(40, 8)
    assert pos[landmark_positions(40, 8)].tolist() == [7] * 5
    assert pos[:8].tolist() == list(range(8))


@pytest.mark.parametrize(("t", "bs"), [(13, 4), (16, 4), (33, 8), (5, 8)])
def test_lean_grouped_softmax_equals_the_reference(t, bs):
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(2, 3, t, 8, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))
    got = grouped_softmax_attention(q, k, v, bs)
    ref_in = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    want = attnkit.attention(*ref_in, spec="landmark", block_size=bs, is_causal=True, backend="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * w).sum(), (q, k, v))
    want_g = torch.autograd.grad((want * w).sum(), ref_in)
    for a, b in zip(grads, want_g):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=g, dtype=torch.float64).unbind(0)

    def score(i, j):
        return float(apply_rope(q, torch.tensor([i])) @ apply_rope(k, torch.tensor([j])).transpose(-1, -2))

    assert score(5, 2) == pytest.approx(score(103, 100), abs=1e-9)
    assert score(0, 0) == pytest.approx(float(q @ k.transpose(-1, -2)), abs=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-6)


def test_lean_training_path_equals_the_registered_spec_in_the_model():
    torch.manual_seed(0)
    m = PasskeyGPT(V.size, 32, 1, 2, spec="landmark", spec_params={"block_size": 8}, positions="block",
                   block_size=8, backend="lean").double()  # fmt: skip
    b = passkey_batch(2, 40, digits=3, block_size=8, seed=0)
    lean = m(b.inputs)
    m.backend = "reference"
    torch.testing.assert_close(lean, m(b.inputs), rtol=0, atol=1e-10)
    m.spec, m.spec_params, m.backend = "landmark.retrieval", {"block_size": 8, "top_k": 99}, "numba"
    torch.testing.assert_close(lean, m(b.inputs), rtol=0, atol=1e-10)  # every block kept: no retrieval


def test_passkey_accuracy_counts_exact_and_digit_hits():
    b = passkey_batch(6, 40, digits=3, block_size=8, landmarks=False, seed=2)

    class Oracle(torch.nn.Module):  # right on rows 0-2, one digit wrong on rows 3-5
        def forward(self, x):
            idx = {tuple(r.tolist()): i for i, r in enumerate(b.inputs)}
            out = torch.zeros(*x.shape, V.size)
            for n, row in enumerate(x):
                i = idx[tuple(row.tolist())]
                tgt = b.targets[i].clamp(min=0).clone()
                if i >= 3:
                    last = (b.targets[i] != IGNORE_INDEX).nonzero()[-1]
                    tgt[last] = V.digit0 + (tgt[last] - V.digit0 + 1) % 10
                out[n].scatter_(-1, tgt[:, None], 1.0)
            return out

    acc = passkey_accuracy(Oracle(), b, batch_size=4)
    assert acc["exact"] == pytest.approx(0.5)
    assert acc["digit"] == pytest.approx(15 / 18)


@pytest.mark.slow
def test_tiny_experiment_runs_and_learns(tmp_path):
    cfg = Config(length=48, factors=(1, 2), block_size=8, top_k=(1, 2), digits=2, dim=32, layers=2, heads=2,
                 steps=150, batch_size=16, train_rows=512, lr=3e-3, n_eval=16, ablation=True)  # fmt: skip
    out = tmp_path / "passkey.json"
    res = run(cfg, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert set(res["models"]) == {"plain", "landmark", "plain-block"}
    for kind, e in res["models"].items():
        assert e["steps"] == 150
        assert e["final_loss"] < math.log(V.size) - 0.5, kind  # it trained
        for f in ("1x", "2x"):
            modes = ["retrieval_top1", "retrieval_top2", "grouped"] if kind == "landmark" else ["full"]
            for mode in modes:
                assert 0.0 <= e["eval"][f][mode]["exact"] <= e["eval"][f][mode]["digit"] <= 1.0
    assert res["models"]["landmark"]["eval"]["2x"]["tokens"] == 96 + 96 // 7 - 1
