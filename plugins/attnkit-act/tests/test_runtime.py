"""The run-time objects under ``attnkit.patch`` on a tiny random Llama, the scorer's
batching, the sink scan on planted maps, parameters and registration."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.registry import resolve
from attnkit.runtime import Capture, Run
from attnkit_act import ACT, ActParams
from attnkit_act.params import parse_heads, parse_layers
from attnkit_act.runtime import AttentionCalibration, SinkScan, build
from attnkit_act.scoring import score_items
from attnkit_act.tasks import Item, make_items, split_items


def _loop_calibrate(row: list[float], sinks: list[int], beta: float) -> list[float]:
    sink = sum(row[j] for j in sinks)
    rest = sum(x for j, x in enumerate(row) if j not in sinks)
    if sink == 0 or rest == 0:
        return list(row)
    return [beta * x if j in sinks else x + (1 - beta) * sink * x / rest for j, x in enumerate(row)]


def _loop_sinks(a: list[list[float]], thres: float, first: int) -> list[int]:
    t = len(a)
    real = [sum(r) > 0 for r in a]
    out = []
    for j in range(t):
        seen = [a[i][j] for i in range(j, t) if real[i]]
        if seen and any(a[i][j] > 0 for i in range(t)) and sum(seen) / len(seen) > thres and j != first:
            out.append(j)
    return out


def _tiny():
    from attnkit.testing import tiny_causal_lm

    return tiny_causal_lm(seed=0).double()


def test_calibration_edits_only_chosen_heads_as_the_loop_does():
    model = _tiny()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (1, 10), generator=g)
    params = ActParams(thres=0.1, beta=0.3)
    # layer 0 is unedited in both runs, so layer 1's input is the same: compare layer 1
    plain = Capture(["blocks.1.attn.hook_pattern@prefill"])
    with torch.no_grad(), attnkit.patch(model, analyses=[plain]):
        model(ids)
    edited = Capture(["blocks.1.attn.hook_pattern@prefill"])
    act = AttentionCalibration({1: [0, 2]}, params)
    with torch.no_grad(), attnkit.patch(model, analyses=[act, edited]):
        model(ids)
    before = plain.first("blocks.1.attn.hook_pattern")[0]
    after = edited.first("blocks.1.attn.hook_pattern")[0]
    n_sinks = 0
    for h in range(4):
        a = before[h].tolist()
        if h in (0, 2):
            s = _loop_sinks(a, 0.1, 0)
            n_sinks += len(s)
            want = torch.tensor([_loop_calibrate(r, s, 0.3) for r in a], dtype=torch.float64)
        else:
            want = before[h]
        torch.testing.assert_close(after[h], want, rtol=0, atol=1e-12)
    assert act.result() == {"sequences": 1, "sinks": {"1": n_sinks}}


class _CharTok:
    """A character tokenizer (ids 3..), enough for the scorer: ``__call__`` and pad id."""

    pad_token_id = 0

    def __call__(self, text: str, add_special_tokens: bool = True):
        from types import SimpleNamespace

        return SimpleNamespace(input_ids=[3 + (ord(c) % 90) for c in text])

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


def test_left_padded_batches_score_as_single_items_with_calibration_on():
    model = _tiny()
    tok = _CharTok()
    items = [
        Item("ab cd ef gh", ("x", "y"), 0, "t"),
        Item("a much longer prompt here", ("x", "z"), 1, "t"),
        Item("mid size one", ("y", "z"), 0, "t"),
    ]
    params = ActParams(thres=0.05)
    heads = {0: [0, 1, 2, 3], 1: [1]}
    single = score_items(model, tok, items, [AttentionCalibration(heads, params)], batch_size=1)
    batched = score_items(model, tok, items, [AttentionCalibration(heads, params)], batch_size=3)
    plain = score_items(model, tok, items, [], batch_size=3)
    torch.testing.assert_close(batched.logprob, single.logprob, rtol=0, atol=1e-9)
    assert torch.equal(batched.correct, single.correct)
    assert not torch.allclose(plain.logprob, single.logprob)  # the edit does something


def _planted(t: int, sink: int, first_mass: float) -> torch.Tensor:
    """(1, 2, T, T): head 0 has a hidden sink at ``sink``; token 0's column is scaled to
    ``first_mass`` of its uniform share in rows >= 1; head 1 is uniform."""
    a = torch.zeros(1, 2, t, t, dtype=torch.float64)
    for i in range(t):
        a[0, :, i, : i + 1] = 1.0 / (i + 1)
    for i in range(1, t):
        a[0, 0, i, 0] *= first_mass
        if i >= sink:
            a[0, 0, i, sink] += 0.5
        a[0, 0, i] /= a[0, 0, i].sum()
    return a


def test_sink_scan_counts_hidden_sinks_and_escapes():
    scan = SinkScan(ActParams(thres=0.2, min_queries=4))
    run = Run(n_layers=2, analyses=[scan])
    run.visit("hook_pattern", 0, _planted(16, 6, first_mass=0.0))  # token 0 is no sink
    run.visit("hook_pattern", 1, _planted(16, 6, first_mass=8.0))  # token 0 is a sink
    r = scan.result()
    assert r.hidden_abs[0].tolist() == [1.0, 0.0] and r.hidden_abs[1].tolist() == [1.0, 0.0]
    assert r.first_is_sink[:, 0].tolist() == [0.0, 1.0]
    assert r.escaped[:, 0].tolist() == [1.0, 0.0]  # indices[1:] would spare key 6 in layer 0
    assert r.sequences.tolist() == [1, 1]


def test_params_validate_and_parse():
    assert parse_heads("3:0,5;7:2") == {3: (0, 5), 7: (2,)}
    assert parse_layers("2-29:3") == (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)
    assert parse_layers((4, 2)) == (2, 4)
    assert ActParams().layers_for(30) == (2, 5, 8, 11, 14, 17, 20, 23, 26, 29)
    with pytest.raises(ValueError, match=r"search_layers.*30"):
        ActParams(search_layers="28-30").layers_for(30)
    for kw, word in [
        ({"beta": 1.5}, "beta"),
        ({"thres": 0.0}, "thres"),
        ({"rule": "x"}, "rule"),
        ({"heads": "3"}, "heads"),
        ({"heads": "a:1"}, "heads"),
        ({"search_layers": "2-x"}, "search_layers"),
        ({"n_cal": 0}, "n_cal"),
    ]:
        with pytest.raises(ValueError, match=word):
            ActParams(**kw)
    with pytest.raises(TypeError, match="batch_size"):
        ActParams(batch_size="8")


def test_tasks_are_seeded_disjoint_and_single_token_labels():
    cal, test = split_items(20, 30, seed=3)
    assert not {i.prompt for i in cal} & {i.prompt for i in test}
    assert [i.prompt for i in split_items(20, 30, seed=3)[0]] == [i.prompt for i in cal]
    assert {i.family for i in make_items(10)} == {"sentiment", "antonym"}
    for it in cal + test:
        assert 0 <= it.label < len(it.choices)


def test_registered_and_factory_builds_both_objects():
    attnkit.load_plugins()
    spec = attnkit.get_spec("act", "analysis")
    assert spec.name == ACT.name and spec.plugin == "attnkit-act"
    assert isinstance(resolve(spec.factory)(spec.make_params()), SinkScan)
    edit = build(ActParams(heads="1:0"))
    assert isinstance(edit, AttentionCalibration)
    assert edit.attnkit_sites() == ["blocks.1.attn.hook_pattern@prefill"]


def test_head_out_of_range_names_the_sizes():
    act = AttentionCalibration({0: [7]})
    run = Run(n_layers=1, analyses=[act])
    with pytest.raises(ValueError, match=r"heads \[7\].*4 query heads"):
        run.visit("hook_pattern", 0, torch.full((1, 4, 3, 3), 1 / 3))
