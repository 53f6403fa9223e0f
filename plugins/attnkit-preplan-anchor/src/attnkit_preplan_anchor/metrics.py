"""Pure functions of attention patterns: head span, local/global head groups, WAAD, FAI,
preplan / anchor tokens and the per-token credit weights of the paper (v2, Sec. 4-5).

Conventions: a pattern is ``(H, T, T)`` post-softmax attention (query rows, key columns) of
one sequence; positions ``0..T-1``; the response set ``R`` is ``response_start..T-1``
(generated tokens). Prompt tokens are keys but never queries of ``R``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "CreditResult",
    "credit_weights",
    "fai",
    "group_map",
    "head_span",
    "middle_layers",
    "split_heads",
    "top_q_mask",
    "waad",
]


def _check_pattern(name: str, a: torch.Tensor, ndim: int) -> None:
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(a).__name__}")
    if a.ndim != ndim or a.shape[-1] != a.shape[-2]:
        want = "(H, T, T)" if ndim == 3 else "(T, T)"
        raise ValueError(f"{name} must be {want} (queries x keys), got shape {tuple(a.shape)}")


def _check_start(response_start: int, t: int) -> None:
    if isinstance(response_start, bool) or not isinstance(response_start, int):
        raise TypeError(f"response_start must be an int, got {type(response_start).__name__}")
    if not 0 <= response_start < t:
        raise ValueError(f"response_start must be in [0, {t - 1}] for T={t}, got {response_start}")


def _distance(t: int, device: Any) -> torch.Tensor:
    pos = torch.arange(t, device=device)
    return (pos[:, None] - pos[None, :]).clamp(min=0)


def middle_layers(n_layers: int, count: int = 5) -> list[int]:
    """``count`` evenly spaced layers of the middle third ``[L//3, 2L//3]`` (App. B.2)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    lo, hi = n_layers // 3, (2 * n_layers) // 3
    hi = min(hi, n_layers - 1)
    if hi - lo + 1 <= count:
        return list(range(lo, hi + 1))
    return sorted({round(lo + i * (hi - lo) / (count - 1)) for i in range(count)})


def head_span(pattern: torch.Tensor, response_start: int = 0) -> torch.Tensor:
    """Eq. 7: ``d(h) = 1/|R| sum_{t in R} sum_{s<=t} A[h,t,s] (t-s)``, shape ``(H,)``."""
    _check_pattern("pattern", pattern, 3)
    t = pattern.shape[-1]
    _check_start(response_start, t)
    dist = _distance(t, pattern.device).to(pattern.dtype)
    per_query = (pattern * dist).sum(-1)  # (H, T)
    return per_query[:, response_start:].mean(-1)


def split_heads(span: torch.Tensor, q_head: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the local (smallest span) and global (largest span) heads: the bottom and top
    ``max(1, floor(q_head * n))`` heads; ties keep the lower index first."""
    if not isinstance(span, torch.Tensor) or span.ndim != 1 or span.numel() < 2:
        raise ValueError(f"span must be a 1-D tensor of >= 2 head spans, got {getattr(span, 'shape', span)}")
    if not 0.0 < q_head <= 0.5:
        raise ValueError(f"q_head must be in (0, 0.5], got {q_head}")
    n = max(1, math.floor(q_head * span.numel() + 1e-9))
    order = torch.sort(span, stable=True).indices
    return order[:n].clone(), torch.sort(-span, stable=True).indices[:n].clone()


def group_map(pattern: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """Eq. 8: the mean pattern ``(T, T)`` of the heads ``heads``."""
    _check_pattern("pattern", pattern, 3)
    return pattern[heads].mean(0)


def waad(avg: torch.Tensor, window: int = 10) -> torch.Tensor:
    """Def. 4.1: ``WAAD_t = sum_{s<=t} Abar[t,s] min(t-s, W)`` for every position, ``(T,)``."""
    _check_pattern("avg", avg, 2)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    dist = _distance(avg.shape[-1], avg.device).clamp(max=window).to(avg.dtype)
    return (avg * dist).sum(-1)


def fai(avg: torch.Tensor, response_start: int = 0, h_lo: int = 1, h_hi: int = 0) -> torch.Tensor:
    """Def. 4.2: ``FAI_s = 1/|T(s)| sum_{t in T(s)} Abar[t,s]``, ``T(s) = {t in R: s+h_lo <= t
    <= s+h_hi}`` (``h_hi=0``: to the end). ``(T,)``, NaN where ``T(s)`` is empty (keys within
    ``h_lo`` of the end)."""
    _check_pattern("avg", avg, 2)
    t = avg.shape[-1]
    _check_start(response_start, t)
    if h_lo < 1 or h_hi < 0 or (h_hi and h_hi < h_lo):
        raise ValueError(f"need 1 <= h_lo <= h_hi (or h_hi=0), got h_lo={h_lo}, h_hi={h_hi}")
    pos = torch.arange(t, device=avg.device)
    gap = pos[:, None] - pos[None, :]
    scope = (pos[:, None] >= response_start) & (gap >= h_lo)
    if h_hi:
        scope &= gap <= h_hi
    m = scope.to(avg.dtype)
    count = m.sum(0)
    total = (avg * m).sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def top_q_mask(x: torch.Tensor, q: float) -> torch.Tensor:
    """Boolean mask of the ``ceil(q * n)`` largest finite entries (``n`` finite entries); ties
    go to the earlier position. NaN entries are never chosen."""
    if not isinstance(x, torch.Tensor) or x.ndim != 1:
        raise ValueError(f"x must be a 1-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    finite = torch.isfinite(x)
    n = int(finite.sum())
    out = torch.zeros_like(finite)
    if n == 0:
        return out
    k = min(n, max(1, math.ceil(q * n - 1e-9)))
    keyed = torch.where(finite, x, torch.full_like(x, -math.inf))
    idx = torch.sort(-keyed, stable=True).indices[:k]
    out[idx] = True
    return out


@dataclass
class CreditResult:
    """Per response token (length ``n = |R|``): ``delta`` (NaN at the last token), the sets
    ``t_loc`` (preplan tokens: top-q WAAD jumps), ``t_glob`` (anchors: top-q FAI),
    ``dominated`` (``D``), ``intro`` (``I(D)``), and the three ``gamma`` weight vectors."""

    delta: torch.Tensor
    t_loc: torch.Tensor
    t_glob: torch.Tensor
    dominated: torch.Tensor
    intro: torch.Tensor
    gamma_local: torch.Tensor
    gamma_global: torch.Tensor
    gamma_coupled: torch.Tensor
    tau_waad: float
    tau_delta: float

    def to_dict(self) -> dict[str, Any]:
        def lst(x: torch.Tensor) -> list[Any]:
            if x.dtype == torch.bool:
                return [int(i) for i in torch.nonzero(x).flatten().tolist()]
            return [None if not math.isfinite(v) else float(v) for v in x.tolist()]

        return {
            "delta": lst(self.delta),
            "preplan_tokens": lst(self.t_loc),
            "anchor_tokens": lst(self.t_glob),
            "dominated_anchors": lst(self.dominated),
            "intro_tokens": lst(self.intro),
            "gamma_local": lst(self.gamma_local),
            "gamma_global": lst(self.gamma_global),
            "gamma_coupled": lst(self.gamma_coupled),
            "tau_waad": self.tau_waad,
            "tau_delta": self.tau_delta,
        }


def credit_weights(
    waad_r: torch.Tensor,
    fai_r: torch.Tensor,
    *,
    q: float = 0.4,
    gamma_amp: float = 1.5,
    alpha: float = 0.5,
    k: int = 3,
    tau_waad: float | None = None,
    tau_delta: float | None = None,
) -> CreditResult:
    """Eq. 14-19 on response tokens: ``waad_r``, ``fai_r`` are WAAD and FAI restricted to R.

    ``Delta_t = |WAAD_t - WAAD_{t+1}|`` (NaN at the last token, never chosen); ``T_loc =
    TopQ(Delta)``, ``T_glob = TopQ(FAI)``. An anchor ``t`` is locally dominated when
    ``WAAD_t <= tau_waad`` and ``max_{u in t-k..t-1} Delta_u >= tau_delta`` (taus default to
    the medians over R: library choice); ``intro(t)`` is that argmax ``u`` (first on ties).
    """
    if not isinstance(waad_r, torch.Tensor) or not isinstance(fai_r, torch.Tensor):
        raise TypeError("waad_r and fai_r must be torch.Tensors")
    if waad_r.ndim != 1 or fai_r.shape != waad_r.shape or waad_r.numel() < 2:
        raise ValueError(
            f"waad_r and fai_r must be 1-D of the same length >= 2, got {tuple(waad_r.shape)} and {tuple(fai_r.shape)}"
        )
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    n = waad_r.numel()
    w = waad_r.double()
    delta = torch.full((n,), float("nan"), dtype=torch.float64)
    delta[:-1] = (w[:-1] - w[1:]).abs()
    t_loc = top_q_mask(delta, q)
    t_glob = top_q_mask(fai_r.double(), q)
    tw = float(w.median()) if tau_waad is None else float(tau_waad)
    td = float(delta[:-1].median()) if tau_delta is None else float(tau_delta)
    dominated = torch.zeros(n, dtype=torch.bool)
    intro = torch.zeros(n, dtype=torch.bool)
    for t in torch.nonzero(t_glob).flatten().tolist():
        lo = max(0, t - k)
        if lo >= t or float(w[t]) > tw:
            continue
        window = delta[lo:t]
        ok = torch.isfinite(window)
        if not bool(ok.any()):
            continue
        vals = torch.where(ok, window, torch.full_like(window, -math.inf))
        best = float(vals.max())
        if best >= td:
            dominated[t] = True
            intro[lo + int(torch.nonzero(vals == best)[0])] = True
    g = gamma_amp - 1.0
    one = torch.ones(n, dtype=torch.float64)
    gamma_local = one + g * t_loc.double()
    gamma_global = one + g * t_glob.double()
    gamma_coupled = (
        one + g * (t_glob & ~dominated).double() + (1.0 - alpha) * g * dominated.double() + alpha * g * intro.double()
    )
    return CreditResult(delta, t_loc, t_glob, dominated, intro, gamma_local, gamma_global, gamma_coupled, tw, td)
