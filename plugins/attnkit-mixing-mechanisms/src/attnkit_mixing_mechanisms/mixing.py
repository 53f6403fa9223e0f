"""The mixing model: the patched answer distribution as a weighted mix of what each retrieval
mechanism predicts, fitted per position of the queried entity.

For one patched sample with ``n`` candidate groups, each mechanism predicts a distribution over
the groups (rows of ``components (M, n)``):

* ``positional``: a discretised Gaussian around the positional pointer ``c`` with width
  ``sigma`` (``sigma = 0``: one-hot at ``c``); the paper finds the positional pointer fuzzy;
* ``lexical``: one-hot at the group of the counterfactual's query name, ``w``;
* ``reflexive``: one-hot at the group holding the counterfactual's answer token, ``s``;
* ``no_effect``: one-hot at the base's own queried group, ``q``;
* ``uniform``: ``1 / n`` (whatever none of the mechanisms explains).

The model is ``p = sum_m pi_m components[m]`` with ``pi`` on the simplex. :func:`fit_em`
maximises the likelihood ``sum_b sum_a y_b(a) log p_b(a)`` of the measured distributions
``y (B, n)`` (the soft-count form of maximum likelihood; a concave problem, so EM reaches the
global maximum); :func:`fit_lsq` minimises ``sum_b ||y_b - p_b||^2`` exactly by enumerating
the active sets of the simplex constraint. ``sigma`` is chosen by likelihood over a grid.

This is a per-position mixture reading of the paper's causal model, which sums the mechanisms
in *logit* space (``logit(a) = w_pos N(a; p, s(p)) + g_k[k] 1{a=k} + g_i[i] 1{a=i}``, softmax,
fitted jointly on all ``(p, k, i)`` cells by Adam on JS divergence). Weights of a mixture of
distributions are shares of probability mass, directly comparable across positions, and their
fit is convex; the logit form is not implemented here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["COMPONENTS", "MixFit", "components", "fit_em", "fit_lsq", "fit_position", "log_likelihood"]

COMPONENTS = ("positional", "lexical", "reflexive", "no_effect", "uniform")
SIGMAS = (0.0, 0.5, 0.75, 1.0, 1.5)


def components(targets: torch.Tensor, n: int, sigma: float = 0.0) -> torch.Tensor:
    """``(B, M, n)`` float64 mechanism predictions for ``targets (B, 4)`` (base groups of
    positional, lexical, reflexive, no-effect, as :data:`~attnkit_mixing_mechanisms.prompts.MECHANISMS`).

    :raises ValueError: for targets outside ``[0, n)`` or a negative ``sigma``.
    """
    if targets.dim() != 2 or targets.shape[1] != 4:
        raise ValueError(f"targets must be (B, 4), got {tuple(targets.shape)}")
    if targets.numel() and (targets.min() < 0 or targets.max() >= n):
        raise ValueError(f"targets must lie in [0, {n}), got range [{int(targets.min())}, {int(targets.max())}]")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    b = targets.shape[0]
    a = torch.arange(n, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(targets.long(), n).to(torch.float64)  # (B, 4, n)
    if sigma > 0:
        c = targets[:, 0:1].to(torch.float64)
        g = torch.exp(-((a[None] - c) ** 2) / (2 * sigma**2))
        pos = g / g.sum(-1, keepdim=True)
    else:
        pos = onehot[:, 0]
    uni = torch.full((b, n), 1.0 / n, dtype=torch.float64)
    return torch.stack([pos, onehot[:, 1], onehot[:, 2], onehot[:, 3], uni], dim=1)


def _check(y: torch.Tensor, comps: torch.Tensor) -> None:
    if y.dim() != 2 or comps.dim() != 3 or comps.shape[0] != y.shape[0] or comps.shape[2] != y.shape[1]:
        raise ValueError(
            f"y must be (B, n) and components (B, M, n) with the same B and n, got {tuple(y.shape)} and {tuple(comps.shape)}"
        )
    if y.shape[0] == 0:
        raise ValueError("y is empty: no samples to fit")


def log_likelihood(pi: torch.Tensor, y: torch.Tensor, comps: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean over samples of ``sum_a y(a) log p(a)`` (nats) for weights ``pi (M,)``."""
    p = torch.einsum("m,bmn->bn", pi.to(torch.float64), comps)
    return float((y.to(torch.float64) * torch.log(p.clamp_min(eps))).sum(-1).mean())


def fit_em(y: torch.Tensor, comps: torch.Tensor, iters: int = 2000, tol: float = 1e-12) -> torch.Tensor:
    """Maximum-likelihood mixture weights ``(M,)`` of ``y (B, n)`` over ``comps (B, M, n)`` (EM)."""
    _check(y, comps)
    y = y.to(torch.float64)
    m = comps.shape[1]
    pi = torch.full((m,), 1.0 / m, dtype=torch.float64)
    last = -float("inf")
    for _ in range(iters):
        p = torch.einsum("m,bmn->bn", pi, comps).clamp_min(1e-300)
        # responsibility of component m for the mass y_b(a)
        r = pi[None, :, None] * comps / p[:, None, :]
        pi = (r * y[:, None, :]).sum(-1).mean(0)
        pi = pi / pi.sum()
        ll = log_likelihood(pi, y, comps)
        if ll - last < tol:
            break
        last = ll
    return pi


def fit_lsq(y: torch.Tensor, comps: torch.Tensor) -> torch.Tensor:
    """Least-squares mixture weights ``(M,)`` on the simplex: ``argmin sum_b ||y_b - pi @ comps_b||^2``.

    Exact: for every support set the equality-constrained problem has a closed form (KKT with
    one multiplier); the best feasible one is the minimum (``M`` is small, ``2^M - 1`` sets).
    """
    _check(y, comps)
    y = y.to(torch.float64)
    m = comps.shape[1]
    gram = torch.einsum("bin,bjn->ij", comps, comps)  # (M, M)
    lin = torch.einsum("bin,bn->i", comps, y)  # (M,)
    const = float((y * y).sum())
    best, best_pi = float("inf"), None
    for k in range(1, m + 1):
        for support in itertools.combinations(range(m), k):
            s = list(support)
            g, h = gram[s][:, s], lin[s]
            kkt = torch.zeros(k + 1, k + 1, dtype=torch.float64)
            kkt[:k, :k], kkt[:k, k], kkt[k, :k] = 2 * g, 1.0, 1.0
            rhs = torch.cat([2 * h, torch.ones(1, dtype=torch.float64)])
            sol = torch.linalg.lstsq(kkt, rhs[:, None]).solution[:, 0]
            w = sol[:k]
            if (w < -1e-12).any():
                continue
            pi = torch.zeros(m, dtype=torch.float64)
            pi[s] = w.clamp_min(0)
            pi = pi / pi.sum()
            loss = float(pi @ gram @ pi - 2 * pi @ lin + const)
            if loss < best - 1e-15:
                best, best_pi = loss, pi
    assert best_pi is not None  # a single vertex is always feasible
    return best_pi


@dataclass(frozen=True)
class MixFit:
    """The fit of one position.

    :ivar weights: ``{component: weight}`` (maximum likelihood, on the simplex).
    :ivar lsq_weights: the least-squares weights at the same ``sigma``.
    :ivar sigma: the positional width chosen by likelihood.
    :ivar log_lik: mean log-likelihood per sample at the fit (nats).
    :ivar n: samples.
    """

    weights: dict[str, float]
    lsq_weights: dict[str, float]
    sigma: float
    log_lik: float
    n: int


def fit_position(y: torch.Tensor, targets: torch.Tensor, sigmas: Sequence[float] = SIGMAS) -> MixFit:
    """Fit the mixing model to the samples of one position: ``y (B, n)`` measured candidate
    distributions, ``targets (B, 4)``; ``sigma`` picked from ``sigmas`` by likelihood."""
    n = y.shape[1]
    best: tuple[float, float, torch.Tensor] | None = None
    for sigma in sigmas:
        comps = components(targets, n, sigma)
        pi = fit_em(y, comps)
        ll = log_likelihood(pi, y, comps)
        if best is None or ll > best[0] + 1e-9:
            best = (ll, sigma, pi)
    assert best is not None
    ll, sigma, pi = best
    lsq = fit_lsq(y, components(targets, n, sigma))
    return MixFit(
        weights=dict(zip(COMPONENTS, (float(x) for x in pi))),
        lsq_weights=dict(zip(COMPONENTS, (float(x) for x in lsq))),
        sigma=float(sigma),
        log_lik=ll,
        n=int(y.shape[0]),
    )
