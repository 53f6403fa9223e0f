"""The mixing-model fits against planted weights and a brute-force search over the simplex."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from attnkit_mixing_mechanisms.mixing import COMPONENTS, components, fit_em, fit_lsq, fit_position, log_likelihood


def _targets(b: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=g)[:4] for _ in range(b)])


def _simplex_grid(m: int, steps: int) -> torch.Tensor:
    pts = [c for c in itertools.product(range(steps + 1), repeat=m - 1) if sum(c) <= steps]
    g = torch.tensor([[*c, steps - sum(c)] for c in pts], dtype=torch.float64)
    return g / steps


def test_components_closed_form() -> None:
    t = torch.tensor([[2, 0, 4, 1]])
    comps = components(t, 6, sigma=0.0)[0]
    assert comps[0].tolist() == [0, 0, 1, 0, 0, 0]  # positional one-hot at c = 2
    assert comps[1].argmax() == 0 and comps[2].argmax() == 4 and comps[3].argmax() == 1
    assert torch.allclose(comps[4], torch.full((6,), 1 / 6, dtype=torch.float64))
    g = components(t, 6, sigma=1.0)[0, 0]
    ref = torch.tensor([math.exp(-((a - 2) ** 2) / 2) for a in range(6)], dtype=torch.float64)
    torch.testing.assert_close(g, ref / ref.sum())
    assert torch.allclose(components(t, 6, sigma=1e-3)[0, 0], comps[0])


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_fits_recover_planted_weights(sigma: float) -> None:
    planted = torch.tensor([0.45, 0.25, 0.15, 0.1, 0.05], dtype=torch.float64)
    t = _targets(40, 6, seed=1)
    comps = components(t, 6, sigma)
    y = torch.einsum("m,bmn->bn", planted, comps)
    torch.testing.assert_close(fit_em(y, comps, iters=20000, tol=0.0), planted, atol=1e-4, rtol=0)
    torch.testing.assert_close(fit_lsq(y, comps), planted, atol=1e-9, rtol=0)
    fit = fit_position(y, t)
    assert fit.sigma == sigma
    assert fit.weights.keys() == set(COMPONENTS) and fit.n == 40
    assert abs(fit.weights["positional"] - 0.45) < 1e-3


def test_fits_match_brute_force_on_noisy_distributions() -> None:
    g = torch.Generator().manual_seed(7)
    t = _targets(30, 5, seed=2)
    comps = components(t, 5, 0.0)
    planted = torch.tensor([0.5, 0.2, 0.2, 0.05, 0.05], dtype=torch.float64)
    y = torch.einsum("m,bmn->bn", planted, comps) + 0.2 * torch.rand(30, 5, generator=g, dtype=torch.float64)
    y = y / y.sum(-1, keepdim=True)
    grid = _simplex_grid(5, 20)  # step 0.05
    mix = torch.einsum("gm,bmn->gbn", grid, comps)
    ll = (y * mix.clamp_min(1e-12).log()).sum(-1).mean(-1)
    sq = ((y - mix) ** 2).sum((-1, -2))
    em, lsq = fit_em(y, comps), fit_lsq(y, comps)
    assert log_likelihood(em, y, comps) >= float(ll.max()) - 1e-9
    assert (em - grid[ll.argmax()]).abs().max() < 0.1  # two grid steps: the optimum is flat
    lsq_loss = float(((y - torch.einsum("m,bmn->bn", lsq, comps)) ** 2).sum())
    assert lsq_loss <= float(sq.min()) + 1e-12
    assert (lsq - grid[sq.argmin()]).abs().max() < 0.1
    assert torch.all(em >= 0) and torch.all(lsq >= 0)
    assert abs(float(em.sum()) - 1) < 1e-12 and abs(float(lsq.sum()) - 1) < 1e-12


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"targets must be \(B, 4\)"):
        components(torch.zeros(3, 2, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        components(torch.tensor([[0, 1, 2, 7]]), 5)
    with pytest.raises(ValueError, match=r"got \(4, 5\) and \(3, 5, 5\)"):
        fit_em(torch.zeros(4, 5), components(_targets(3, 5, 0), 5))
