"""Generated tasks against Python integer arithmetic, and task scoring against a plain
float64 cross-entropy and a greedy-decoding loop."""

from __future__ import annotations

import random
import re

import pytest
import torch

from attnkit.testing import WordTokenizer
from attnkit_thinking_sparks.scoring import ablated_metrics, encode_hf, item_scores, random_head_sets
from attnkit_thinking_sparks.tasks import ByteTokenizer, addition_item, addition_items, docs_text, few_shot_items
from attnkit_thinking_sparks.tinygpt import IGNORE, TaskBatch, build_tiny_gpt, encode_items, lm_windows, train_steps


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_written_out_addition_is_right_digit_by_digit(digits):
    rng = random.Random(digits)
    lengths = set()
    for _ in range(200):
        a, b = rng.randrange(10**digits), rng.randrange(10**digits)
        prompt, target = addition_item(a, b, digits)
        lengths.add(len(prompt + target))
        assert prompt == f"{a:0{digits}d}+{b:0{digits}d}:"
        *steps, answer = target.rstrip("\n").split(";")
        assert int(answer.lstrip("=")) == a + b
        carry = 0
        for i, step in enumerate(steps):  # least significant digit first
            da, db, c, s = map(int, re.fullmatch(r"(\d)\+(\d)\+(\d)=(\d\d)", step).groups())
            assert (da, db, c) == ((a // 10**i) % 10, (b // 10**i) % 10, carry)
            assert s == da + db + c
            carry = s // 10
    assert len(lengths) == 1  # a batch never needs padding
    with pytest.raises(ValueError, match="a must be"):
        addition_item(100, 1, 2)


def test_few_shot_items_and_docs():
    for prompt, answer in few_shot_items(20, seed=1, shots=2):
        lines = prompt.split("\n")
        assert len(lines) == 3
        for line in lines[:2]:
            lhs, rhs = line.split("=")
            assert eval(lhs) == int(rhs)
        assert eval(lines[2].rstrip("=")) == int(answer)
    assert addition_items(4, 2, seed=3) == addition_items(4, 2, seed=3)
    text = docs_text()
    assert len(text) > 100_000 and "for" in text
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("a+1\n")) == "a+1\n" and tok.encode("\u00e9") == [ord("?")]


def test_encode_items_marks_exactly_the_target_predictions():
    batch = encode_items([("12+34:", "xy"), ("56+78:", "zw")])
    assert batch.ids.shape == (2, 8)
    assert batch.labels[0].tolist() == [IGNORE] * 5 + [ord("x"), ord("y"), IGNORE]
    with pytest.raises(ValueError, match="one length"):
        encode_items([("1+1:", "2"), ("10+1:", "11")])


def _plain_scores(model, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    losses, exact = [], []
    with torch.no_grad():
        logits = model(batch.ids).logits.double()
    for i in range(len(batch)):
        pos = [t for t in range(batch.ids.shape[1]) if batch.labels[i, t] != IGNORE]
        ce = [float(-torch.log_softmax(logits[i, t], -1)[batch.labels[i, t]]) for t in pos]
        losses.append(sum(ce) / len(ce))
        # greedy decoding from the prompt, no teacher forcing
        ids = batch.ids[i, : pos[0] + 1].clone()
        ok = True
        for t in pos:
            with torch.no_grad():
                nxt = model(ids[None]).logits[0, -1].argmax()
            ok &= bool(nxt == batch.labels[i, t])
            ids = torch.cat([ids, nxt[None]])
        exact.append(ok)
    return torch.tensor(losses, dtype=torch.float64), torch.tensor(exact)


def test_item_scores_match_plain_cross_entropy_and_greedy_decoding():
    model = build_tiny_gpt(n_layers=2, d_model=32, n_heads=4, seed=0).double()
    batch = encode_items([("ab", "cd"), ("ef", "gh"), ("ij", "kl")])
    # make the targets the model's own greedy continuation for item 1 so exact match is True
    with torch.no_grad():
        ids = batch.ids[1, :2].clone()
        for _ in range(2):
            ids = torch.cat([ids, model(ids[None]).logits[0, -1].argmax()[None]])
    batch.ids[1, 2:] = ids[2:]
    batch.labels[1, 1:3] = ids[2:]
    with torch.no_grad():
        loss, exact = item_scores(model, [batch])
    want_loss, want_exact = _plain_scores(model, batch)
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=1e-10)
    assert exact.tolist() == want_exact.tolist() and exact[1]


def test_ablated_metrics_without_heads_is_the_unedited_model_and_with_heads_differs():
    model = build_tiny_gpt(n_layers=2, d_model=32, n_heads=4, seed=1)
    batch = encode_items(addition_items(6, 1, seed=0))
    with torch.no_grad():
        plain, _ = item_scores(model, [batch])
    loss, acc = ablated_metrics(model, [batch], [])
    assert abs(loss - float(plain.mean())) < 1e-5 and 0 <= acc <= 1
    assert abs(ablated_metrics(model, [batch], [(0, 1), (1, 3)])[0] - loss) > 1e-6


def test_encode_hf_groups_by_length_and_scores_the_answer():
    tok = WordTokenizer()
    batches = encode_hf([("one two", " three"), ("a b c", " d e"), ("x y", " z")], tok)
    assert [tuple(b.ids.shape) for b in batches] == [(2, 3), (1, 5)]
    assert batches[0].labels[0].tolist() == [IGNORE, tok.vocab["three"], IGNORE]
    assert (batches[1].labels[0] != IGNORE).sum() == 2


def test_random_head_sets_exclude_and_repeat():
    sets = random_head_sets(3, 4, 3, 5, seed=2, exclude=[(0, 0), (2, 3)])
    assert sets == random_head_sets(3, 4, 3, 5, seed=2, exclude=[(0, 0), (2, 3)])
    for s in sets:
        assert len(set(s)) == 3 and not {(0, 0), (2, 3)} & set(s)
    with pytest.raises(ValueError, match="size 11"):
        random_head_sets(3, 4, 11, 1, seed=0, exclude=[(0, 0), (0, 1)])


def test_tiny_gpt_runs_under_attnkit_and_trains_deterministically():
    import attnkit
    from attnkit.runtime import Capture

    def run() -> tuple[list[float], torch.Tensor]:
        model = build_tiny_gpt(n_layers=2, d_model=32, n_heads=4, seed=0)
        g = torch.Generator().manual_seed(0)
        losses, cks = train_steps(
            model, lambda s: lm_windows("hello world, " * 40, 4, 16, g), 6, lr=1e-2, seed=0, checkpoint_at=[3, 6]
        )
        assert [c.step for c in cks] == [3, 6]
        return losses, model.model.embed_tokens.weight.detach().clone()

    (l1, w1), (l2, w2) = run(), run()
    assert l1 == l2 and torch.equal(w1, w2) and l1[-1] < l1[0]
    model = build_tiny_gpt(n_layers=2, d_model=32, n_heads=4, seed=0)
    cap = Capture(["blocks.{l}.attn.hook_z"])
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[cap]):
        model(torch.zeros(1, 5, dtype=torch.long))
    assert tuple(cap.first("blocks.1.attn.hook_z").shape) == (1, 4, 5, 8)  # (B, H, T, D)
    with pytest.raises(ValueError, match="d_model"):
        build_tiny_gpt(d_model=30, n_heads=4)
