"""LazyEviction driven directly with synthetic attention streams (no model).

Controlled streams give every token its own one-hot key (``D`` = number of tokens), so a query
``sum_j L_j e_j`` gives token ``j`` the logit ``L_j`` and every other token 0: a "sink" token
with logit 12 at every step keeps the background below the paper's ``alpha = 1e-4``
(``e^-12 ~ 6e-6``) and a logit of 6 makes a *low-mass* recurrence (``e^-6 ~ 0.25%``, above
``alpha``). Random streams are checked against the plain-Python reference of the official
algorithm in ``_lazy_reference.py``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _lazy_reference import Reference, drive, h2o_reference, rows_of, score

from attnkit_lazyeviction import LAZYEVICTION, LazyEvictionParams
from attnkit_lazyeviction.policy import LazyEvictionPolicy, mri_score, update_recurrence

SINK = 12.0


def controlled(prompt: int, steps: int, logits_at, *, dv: int = 4, seed: int = 0):
    """Forwards ``(key, value, query)`` for ``B = Hkv = Hq = 1``: the prompt (queries attend to
    the sink, token 0), then ``steps`` single-token decode steps whose query gives
    ``logits_at(s)`` (``{position: logit}``, decode step ``s`` from 1) plus the sink."""
    d = prompt + steps
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(d, dtype=torch.float64)

    def query(extra: dict[int, float]) -> torch.Tensor:
        q = SINK * eye[0].clone()
        for pos, logit in extra.items():
            q[pos] += logit
        return q

    key = eye[:prompt].view(1, 1, prompt, d)
    value = torch.randn(1, 1, prompt, dv, generator=g, dtype=torch.float64)
    q = torch.stack([query({}) for _ in range(prompt)]).view(1, 1, prompt, d)
    forwards = [(key, value, q)]
    for s in range(1, steps + 1):
        pos = prompt + s - 1
        forwards.append(
            (
                eye[pos].view(1, 1, 1, d),
                torch.randn(1, 1, 1, dv, generator=g, dtype=torch.float64),
                query(logits_at(s)).view(1, 1, 1, d),
            )
        )
    return forwards


def random_stream(b: int, hkv: int, g: int, lengths: tuple[int, ...], *, d: int = 8, seed: int = 0, scale: float = 2.0):
    """Random forwards of ``lengths`` tokens each (the first is the prompt)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        k = torch.randn(b, hkv, n, d, generator=gen, dtype=torch.float64)
        v = torch.randn(b, hkv, n, d, generator=gen, dtype=torch.float64)
        q = scale * torch.randn(b, hkv * g, n, d, generator=gen, dtype=torch.float64)
        out.append((k, v, q))
    return out


def stat_of(policy: LazyEvictionPolicy, pos: int, b: int = 0, h: int = 0) -> tuple[int, int]:
    rec = policy.recurrence(0)
    where = (rec["positions"][b, h] == pos).nonzero()
    assert where.numel() == 1, f"position {pos} is not held"
    i = int(where[0, 0])
    return int(rec["last"][b, h, i]), int(rec["mri"][b, h, i])


# ---------------------------------------------------------------- the pieces
def test_update_recurrence_equals_step_by_step_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 7):
        last = torch.randint(-1, 5, (2, 3, 9), generator=gen)
        mri = torch.randint(0, 3, (2, 3, 9), generator=gen)
        imp = torch.rand(2, 3, n, 9, generator=gen) < 0.4
        steps = torch.arange(6, 6 + n)
        got_last, got_mri = update_recurrence(last, mri, imp, steps)
        want_last, want_mri = last.clone(), mri.clone()
        for i in range(n):
            for idx in imp[..., i, :].nonzero().tolist():
                t = int(steps[i])
                want_mri[tuple(idx)] = max(int(want_mri[tuple(idx)]), t - int(want_last[tuple(idx)]))
                want_last[tuple(idx)] = t
        assert torch.equal(got_last, want_last) and torch.equal(got_mri, want_mri)


def test_mri_score_closed_form() -> None:
    last = torch.tensor([10, 7, 3, 0, 9])
    mri = torch.tensor([0, 1, 4, 2, 10])
    got = mri_score(last, mri, 10)
    for i in range(5):
        m, x = int(mri[i]), 10 - int(last[i])
        bonus = 0.0 if m == 0 else 2 / (1 + math.exp(m - 1))
        want = 2 / (1 + math.exp(1 + x / (m + 1e-5))) + bonus
        assert got[i].item() == pytest.approx(want, rel=1e-12, abs=1e-300)
    # a token that just recurred with MRI 1 scores 2/(1+e) + 1; one that never recurred and is
    # older than the current step scores 0
    assert got[0].item() == pytest.approx(2 / (1 + math.e))
    assert mri_score(torch.tensor([3]), torch.tensor([0]), 9).item() == 0.0


# ---------------------------------------------------------------- the spec's streams
@pytest.mark.parametrize("period", [1, 2, 3, 5])
def test_token_attended_every_p_steps_has_mri_p_paper_prefill(period: int) -> None:
    """prefill="keep" (the paper's): prompt token 1 starts as recurring at step 0; attended at
    every decode step that is a multiple of P, its MRI is P and its last recurrence the latest
    such step."""
    steps = 4 * period + 1
    policy = LazyEvictionPolicy(budget=64, window=101, prefill="keep")
    forwards = controlled(3, steps, lambda s: {1: 6.0} if s % period == 0 else {})
    drive(policy, forwards)
    last, mri = stat_of(policy, 1)
    assert mri == period
    assert last == 2 + (steps // period) * period  # prompt end (position 2) + that step


@pytest.mark.parametrize("period", [2, 4])
def test_decode_token_attended_every_p_steps_has_mri_p(period: int) -> None:
    """prefill="compress": a decode token at position p starts at p - 1; attended at p - 1 + kP
    for k = 1, 2, ..., its MRI is P."""
    prompt, born = 4, 5  # decode step 5 writes position 8
    p = prompt + born - 1
    policy = LazyEvictionPolicy(budget=64, window=101)
    forwards = controlled(
        prompt, 30, lambda s: {p: 6.0} if (prompt + s - 1) > p and (prompt + s - 1 - (p - 1)) % period == 0 else {}
    )
    drive(policy, forwards)
    assert stat_of(policy, p)[1] == period
    # the prompt's tokens never got attention >= alpha besides the sink: MRI 0; the sink's is 1
    assert stat_of(policy, 2)[1] == 0 and stat_of(policy, 0)[1] == 1


def test_single_recurrence_then_decay() -> None:
    """Prompt token 2 attended once, at decode step 6 (prefill="keep": it starts at step 0):
    MRI 6, and its score falls at every later step, as the closed form says."""
    policy = LazyEvictionPolicy(budget=64, window=101, prefill="keep")
    prompt = 4
    forwards = controlled(prompt, 20, lambda s: {2: 6.0} if s == 6 else {})
    seen_scores = []
    for i, fwd in enumerate(forwards):
        drive(policy, [fwd])
        if i >= 6:
            rec = policy.recurrence(0)
            slot = int((rec["positions"][0, 0] == 2).nonzero()[0, 0])
            seen_scores.append(rec["score"][0, 0, slot].item())
            assert seen_scores[-1] == pytest.approx(score(prompt - 1 + 6, 6, prompt - 1 + i), rel=1e-12)
    assert stat_of(policy, 2) == (prompt - 1 + 6, 6)
    assert all(a > b for a, b in itertools.pairwise(seen_scores))


@pytest.mark.parametrize("prefill", ["keep", "compress"])
def test_periodic_low_mass_token_survives_where_h2o_evicts_it(prefill: str) -> None:
    """Prompt: the sink (0), six "burst" tokens (1..6) and a periodic token X (7). X gets ~0.25%
    of the attention at decode steps 2, 6, 10, ... (every 4, half-way between evictions); the
    burst tokens share ~6/7 of it once, at step 3, and never again. Cumulative attention (H2O,
    budget 12 = 6 heavy + 6 recent) ranks all six burst tokens above X and evicts X as soon as
    it leaves the recent window. LazyEviction (budget 12, W = 8) keeps X through every
    eviction: 2 steps after its last recurrence it is well within its MRI of 4, while the burst
    tokens are past theirs. Without the MRI (recency of the last recurrence alone) X would
    score 0 like them and lose the tie to the earlier tokens."""
    x, burst = 7, range(1, 7)

    def logits(s: int) -> dict[int, float]:
        out: dict[int, float] = {x: 6.0} if s % 4 == 2 else {}
        if s == 3:
            out.update(dict.fromkeys(burst, SINK))
        return out

    forwards = controlled(8, 40, logits)
    lazy = LazyEvictionPolicy(budget=12, window=8, prefill=prefill)
    _, kept, _ = drive(lazy, forwards)
    lazy_rows = [rows_of(k)[0][0] for k in kept]
    assert all(x in row for row in lazy_rows), "LazyEviction evicted the periodic token"
    assert sum(b in lazy_rows[-1] for b in burst) <= 2  # most burst tokens went
    assert stat_of(lazy, x)[1] == 4

    ref = h2o_reference(forwards, budget=12, recent=6)
    assert x not in ref[-1] and sum(b in ref[-1] for b in burst) == 5  # heavy = sink + 5 burst tokens
    try:
        from attnkit.cache import build_policy

        h2o = build_policy("h2o", budget=12, heavy_ratio=0.5)
    except (KeyError, LookupError, ValueError, ImportError):
        return  # the h2o spec (attnkit-sinklora) is not installed: the reference stands alone
    _, h2o_kept, _ = drive(h2o, forwards)
    assert [rows_of(k)[0][0] for k in h2o_kept] == ref  # the installed h2o is the reference


# ---------------------------------------------------------------- sizes and schedule
@pytest.mark.parametrize("prefill", ["compress", "keep"])
def test_sizes_schedule_and_recent_window(prefill: str) -> None:
    """Budget C = 6, W = 4, a 10-token prompt: evictions only at decode steps that are
    multiples of W (and at the prefill, for "compress"), back to exactly C; between them one
    more token per step, so attention sees at most C + W keys and the cache holds at most
    C + W - 1 between forwards; the W newest tokens are always held."""
    c, w, prompt = 6, 4, 10
    policy = LazyEvictionPolicy(budget=c, window=w, alpha=0.05, prefill=prefill)
    forwards = random_stream(2, 2, 2, (prompt,) + (1,) * 17)
    _, kept, attended = drive(policy, forwards)

    def held(s: int) -> int:  # after decode step s (0: the prefill)
        if prefill == "keep" and s < w:
            return prompt + s
        return c + s % w

    for s, (k, att) in enumerate(zip(kept, attended)):
        assert (k >= 0).sum(-1).eq(held(s)).all(), (s, (k >= 0).sum(-1).tolist(), held(s))
        assert att.eq(prompt if s == 0 else held(s - 1) + 1).all(), (s, att.tolist())
        seen = prompt + s
        for row in (r for seq in rows_of(k) for r in seq):
            assert set(range(seen - min(w, c), seen)) <= set(row)
        assert policy.layers[0].capacity <= (prompt if prefill == "keep" else c) + w
    assert max(int(a.max()) for a in attended[1:]) == (prompt + w if prefill == "keep" else c + w)
    assert max(held(s) for s in range(1, len(forwards))) <= (prompt if prefill == "keep" else c) + w - 1


def test_multi_token_forward_counts_every_step() -> None:
    """W = 4: a 3-token forward at steps 3..5 contains step 4, so it evicts; the next eviction
    is at step 8; an eviction step's attention used every stored key."""
    c, w = 5, 4
    policy = LazyEvictionPolicy(budget=c, window=w, alpha=0.05)
    forwards = random_stream(1, 2, 1, (8, 1, 1, 3, 1, 1, 1, 1))
    _, kept, attended = drive(policy, forwards)
    counts = [int((k >= 0).sum(-1).max()) for k in kept]
    # steps after each forward: 0, 1, 2, 5, 6, 7, 8, 9
    assert counts == [c, c + 1, c + 2, c, c + 1, c + 2, c, c + 1]
    assert int(attended[3].max()) == c + 2 + 3
    assert policy.decode_steps() == 9


# ---------------------------------------------------------------- against the reference
@pytest.mark.parametrize(
    ("aggregation", "prefill", "budget"),
    [("mean", "compress", 6), ("max", "compress", 0.5), ("mean", "keep", 7), ("max", "keep", 6)],
)
def test_matches_reference_on_random_streams(aggregation: str, prefill: str, budget: int | float) -> None:
    """B = 2, 2 KV heads of 2 query heads each, a 12-token prompt, single steps and one
    3-token forward: kept positions, (last, MRI) of every kept token and the attention output
    equal the plain-Python reference after every forward."""
    lengths = (12,) + (1,) * 7 + (3,) + (1,) * 6
    forwards = random_stream(2, 2, 2, lengths, seed=3)
    policy = LazyEvictionPolicy(budget=budget, window=3, alpha=0.06, aggregation=aggregation, prefill=prefill)
    ref = Reference(budget=budget, window=3, alpha=0.06, aggregation=aggregation, prefill=prefill)
    for i, fwd in enumerate(forwards):
        (out,), (kept,), _ = drive(policy, [fwd])
        want_out = ref.forward(*fwd)
        assert (out - want_out).abs().max().item() < 1e-12, f"forward {i}: attention output"
        got = rows_of(kept)
        for b in range(2):
            for h in range(2):
                assert got[b][h] == ref.kept(b, h), f"forward {i}, row {b}, head {h}"
                for pos, want in ref.stats(b, h).items():
                    assert stat_of(policy, pos, b, h) == want, f"forward {i}, token {pos}"
    assert ref.evicted_at  # evictions happened


def test_batch_of_two_streams_equals_each_alone() -> None:
    forwards = random_stream(2, 2, 3, (10,) + (1,) * 9 + (2,) + (1,) * 5, seed=5)
    make = lambda: LazyEvictionPolicy(budget=5, window=3, alpha=0.05, aggregation="max")  # noqa: E731
    both = make()
    outs, kept, _ = drive(both, forwards)
    for b in range(2):
        alone = make()
        one_outs, one_kept, _ = drive(alone, [tuple(t[b : b + 1] for t in fwd) for fwd in forwards])
        for i in range(len(forwards)):
            assert torch.equal(kept[i][b : b + 1], one_kept[i]), f"row {b}, forward {i}"
            assert (outs[i][b : b + 1] - one_outs[i]).abs().max().item() < 1e-12
        for h in range(2):
            rec = alone.recurrence(0)
            for j, pos in enumerate(rec["positions"][0, h].tolist()):
                if pos >= 0:
                    assert stat_of(both, pos, b, h) == (int(rec["last"][0, h, j]), int(rec["mri"][0, h, j]))


def test_gqa_aggregation_is_explicit_mean_differs_from_max() -> None:
    """One KV head, two query heads. Token 2 gets ~0.11 from both heads; token 1 gets ~0.107
    from query head 0 only, so its group mean (~0.054) is under alpha = 0.09 and its max is
    over it. With "max" tokens 1 and 2 recur every step, tie with the sink and the earlier one
    (1) takes the last non-recent slot; with "mean" token 1 never recurs (score 0) and token 2
    takes it."""
    d, prompt, steps = 24, 6, 12
    eye = torch.eye(d, dtype=torch.float64)
    key = eye[:prompt].view(1, 1, prompt, d)
    zeros = torch.zeros(1, 1, prompt, 2, dtype=torch.float64)
    forwards = [(key, zeros, (SINK * eye[0]).expand(1, 2, prompt, d).clone())]
    head0 = SINK * eye[0] + 10.0 * eye[1] + 10.0 * eye[2]
    head1 = SINK * eye[0] + 10.0 * eye[2]
    for s in range(steps):
        q = torch.stack([head0, head1]).view(1, 2, 1, d)
        forwards.append((eye[prompt + s].view(1, 1, 1, d), zeros[:, :, :1], q))
    kept = {}
    for how in ("mean", "max"):
        policy = LazyEvictionPolicy(budget=5, window=3, alpha=0.09, aggregation=how, prefill="keep")
        _, k, _ = drive(policy, forwards)
        kept[how] = rows_of(k[-1])[0][0]
        if how == "max":
            assert stat_of(policy, 1) == (prompt + steps - 1, 1)
        else:
            assert stat_of(policy, 2) == (prompt + steps - 1, 1)
    assert kept["max"][:2] == [0, 1] and kept["mean"][:2] == [0, 2]


def test_reset_forgets_everything_and_reruns_identically() -> None:
    forwards = random_stream(2, 1, 2, (9,) + (1,) * 8, seed=8)
    policy = LazyEvictionPolicy(budget=4, window=2, alpha=0.05)
    outs1, kept1, _ = drive(policy, forwards)
    policy.reset()
    assert policy.layers == {} and policy.nbytes() == 0 and policy.decode_steps() == 0
    # another sequence in between must not leak into the rerun
    drive(policy, random_stream(2, 1, 2, (5, 1, 1), seed=9))
    policy.reset()
    outs2, kept2, _ = drive(policy, forwards)
    fresh = LazyEvictionPolicy(budget=4, window=2, alpha=0.05)
    _, kept3, _ = drive(fresh, forwards)
    for a, b, c in zip(kept1, kept2, kept3):
        assert torch.equal(a, b) and torch.equal(a, c)
    for a, b in zip(outs1, outs2):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- parameters
def test_spec_defaults_are_the_papers() -> None:
    p = LAZYEVICTION.make_params()
    assert (p.budget, p.window, p.alpha, p.aggregation, p.prefill) == (1492, 101, 1e-4, "mean", "compress")


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"window": 2.5}, TypeError, "window"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": "1e-4"}, TypeError, "alpha"),
        ({"aggregation": "sum"}, ValueError, "aggregation"),
        ({"prefill": "drop"}, ValueError, "prefill"),
        ({"budget": 0}, ValueError, "budget"),
        ({"chunk": 0}, ValueError, "chunk"),
    ],
)
def test_bad_parameters_raise_naming_them(kwargs: dict, exc: type, name: str) -> None:
    with pytest.raises(exc, match=name):
        LazyEvictionParams(**kwargs)
    with pytest.raises(exc, match=name):
        LazyEvictionPolicy(**kwargs)
