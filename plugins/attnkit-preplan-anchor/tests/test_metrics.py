"""Known answers of the metrics on hand-made patterns, and float64 brute-force references."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit_preplan_anchor.metrics import (
    credit_weights,
    fai,
    group_map,
    head_span,
    middle_layers,
    split_heads,
    top_q_mask,
    waad,
)


def offset_pattern(t: int, d: int) -> torch.Tensor:
    """Every row t puts all its mass on max(t - d, 0)."""
    a = torch.zeros(t, t, dtype=torch.float64)
    for i in range(t):
        a[i, max(i - d, 0)] = 1.0
    return a


def random_causal(h: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(h, t, t, generator=g, dtype=torch.float64)
    x = x.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
    return x.softmax(-1)


def test_previous_token_head_has_waad_one() -> None:
    w = waad(offset_pattern(20, 1), window=10)
    assert w[0] == 0
    assert torch.equal(w[1:], torch.ones(19, dtype=torch.float64))


@pytest.mark.parametrize("d", [2, 7, 10, 15])
def test_fixed_offset_waad_is_clipped_offset(d: int) -> None:
    t, win = 40, 10
    w = waad(offset_pattern(t, d), window=win)
    want = torch.tensor([min(i if i < d else d, win) for i in range(t)], dtype=torch.float64)
    assert torch.equal(w, want)


def test_uniform_causal_waad_closed_form() -> None:
    t, win = 30, 10
    a = torch.ones(t, t, dtype=torch.float64).tril()
    a = a / a.sum(-1, keepdim=True)
    want = torch.tensor([sum(min(j, win) for j in range(i + 1)) / (i + 1) for i in range(t)], dtype=torch.float64)
    torch.testing.assert_close(waad(a, window=win), want, rtol=0, atol=1e-12)


def test_head_span_matches_brute_force_and_sink_vs_diagonal() -> None:
    h, t, rs = 3, 16, 5
    a = random_causal(h, t)
    want = torch.zeros(h, dtype=torch.float64)
    for hh in range(h):
        for q in range(rs, t):
            want[hh] += sum(float(a[hh, q, s]) * (q - s) for s in range(q + 1))
    want /= t - rs
    torch.testing.assert_close(head_span(a, rs), want, rtol=0, atol=1e-12)
    sink = torch.zeros(t, t, dtype=torch.float64)
    sink[:, 0] = 1
    diag = torch.eye(t, dtype=torch.float64)
    pat = torch.stack([diag, sink, offset_pattern(t, 1), offset_pattern(t, 4)])
    span = head_span(pat, 0)
    assert span[0] == 0
    assert span[1] == pytest.approx((t - 1) / 2)  # mean position
    loc, glob = split_heads(span, 0.25)
    assert loc.tolist() == [0] and glob.tolist() == [1]


def test_fai_single_anchor_and_empty_scope() -> None:
    t = 12
    a = torch.zeros(t, t, dtype=torch.float64)
    a[:, 0] = 1.0
    f = fai(a, 0, h_lo=1, h_hi=0)
    assert f[0] == 1.0
    assert torch.equal(f[1:-1], torch.zeros(t - 2, dtype=torch.float64))
    assert math.isnan(float(f[-1]))  # no query at least h_lo after the last token
    f3 = fai(a, 0, h_lo=3, h_hi=5)
    assert f3[-3:].isnan().all() and not f3[:-3].isnan().any()


def test_fai_matches_brute_force() -> None:
    t, rs, lo, hi = 25, 7, 2, 6
    a = random_causal(1, t, seed=3)[0]
    got = fai(a, rs, lo, hi)
    for s in range(t):
        scope = [q for q in range(rs, t) if s + lo <= q <= min(t - 1, s + hi)]
        if not scope:
            assert math.isnan(float(got[s]))
        else:
            assert float(got[s]) == pytest.approx(sum(float(a[q, s]) for q in scope) / len(scope), abs=1e-12)


def test_planted_anchor_has_top_fai() -> None:
    h, t, rs, anchor = 4, 48, 5, 13
    a = random_causal(h, t, seed=1)
    # every later query of every head sends half its mass to the anchor
    for q in range(anchor + 1, t):
        a[:, q] *= 0.5
        a[:, q, anchor] += 0.5
    f = fai(group_map(a, torch.arange(h)), rs, 1, 0)[rs:]
    assert int(torch.nan_to_num(f, nan=-1.0).argmax()) == anchor - rs
    assert float(f[anchor - rs]) >= 0.5
    assert top_q_mask(f, 1 / (t - rs - 1)).nonzero().flatten().tolist() == [anchor - rs]


def test_top_q_mask_counts_ties_and_nans() -> None:
    x = torch.tensor([1.0, 3.0, 3.0, float("nan"), 2.0, 0.0])
    m = top_q_mask(x, 0.4)  # 5 finite -> ceil(2.0) = 2
    assert m.tolist() == [False, True, True, False, False, False]
    m = top_q_mask(torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5)
    assert m.tolist() == [True, True, False, False]  # ties go to the earlier position
    with pytest.raises(ValueError, match="q must be"):
        top_q_mask(x, 0.0)


def brute_credit(w: list[float], f: list[float], q: float, g: float, alpha: float, k: int):  # type: ignore[no-untyped-def]
    n = len(w)
    delta = [abs(w[i] - w[i + 1]) for i in range(n - 1)]

    def topq(vals: list[float]) -> set[int]:
        idx = [i for i, v in enumerate(vals) if math.isfinite(v)]
        kk = max(1, math.ceil(q * len(idx) - 1e-9))
        return set(sorted(idx, key=lambda i: (-vals[i], i))[:kk])

    t_loc = topq([*delta, math.nan])
    t_glob = topq(f)
    tw = float(torch.tensor(w, dtype=torch.float64).median())
    td = float(torch.tensor(delta, dtype=torch.float64).median())
    dom, intro = set(), set()
    for t in t_glob:
        win = [(delta[u], u) for u in range(max(0, t - k), t) if u < n - 1]
        if w[t] <= tw and win:
            best = max(v for v, _ in win)
            if best >= td:
                dom.add(t)
                intro.add(min(u for v, u in win if v == best))
    gl = [1 + (g - 1) * (i in t_loc) for i in range(n)]
    gg = [1 + (g - 1) * (i in t_glob) for i in range(n)]
    gc = [
        1
        + (g - 1) * (i in t_glob and i not in dom)
        + (1 - alpha) * (g - 1) * (i in dom)
        + alpha * (g - 1) * (i in intro)
        for i in range(n)
    ]
    return gl, gg, gc, dom, intro


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_credit_weights_match_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 30
    w = (torch.rand(n, generator=g, dtype=torch.float64) * 10).tolist()
    f = (torch.rand(n, generator=g, dtype=torch.float64)).tolist()
    f[-1] = math.nan
    res = credit_weights(torch.tensor(w), torch.tensor(f), q=0.4, gamma_amp=1.5, alpha=0.3, k=3)
    gl, gg, gc, dom, intro = brute_credit(w, f, 0.4, 1.5, 0.3, 3)
    torch.testing.assert_close(res.gamma_local, torch.tensor(gl, dtype=torch.float64))
    torch.testing.assert_close(res.gamma_global, torch.tensor(gg, dtype=torch.float64))
    torch.testing.assert_close(res.gamma_coupled, torch.tensor(gc, dtype=torch.float64))
    assert set(torch.nonzero(res.dominated).flatten().tolist()) == dom
    assert set(torch.nonzero(res.intro).flatten().tolist()) == intro
    assert int(res.t_glob.sum()) == math.ceil(0.4 * (n - 1))
    assert int(res.t_loc.sum()) == math.ceil(0.4 * (n - 1))


def test_gamma_one_when_amp_one() -> None:
    w, f = torch.rand(20, dtype=torch.float64), torch.rand(20, dtype=torch.float64)
    res = credit_weights(w, f, gamma_amp=1.0)
    for gm in (res.gamma_local, res.gamma_global, res.gamma_coupled):
        assert torch.equal(gm, torch.ones(20, dtype=torch.float64))


def test_middle_layers() -> None:
    assert middle_layers(30) == [10, 12, 15, 18, 20]
    assert middle_layers(2) == [0, 1] or middle_layers(2) == [0]
    assert all(30 // 3 <= x <= 20 for x in middle_layers(30))


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"pattern must be \(H, T, T\).*\(4, 5\)"):
        head_span(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="response_start"):
        head_span(torch.zeros(1, 4, 4), 4)
    with pytest.raises(ValueError, match="avg must be"):
        waad(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="window"):
        waad(torch.zeros(3, 3), window=0)
    with pytest.raises(ValueError, match="h_lo"):
        fai(torch.zeros(3, 3), 0, h_lo=0)
    with pytest.raises(ValueError, match="same length"):
        credit_weights(torch.zeros(4), torch.zeros(5))
    with pytest.raises(TypeError, match=r"pattern must be a torch\.Tensor"):
        head_span([[0.0]])  # type: ignore[arg-type]
