"""Hidden attention sinks and ACT's attention calibration on post-softmax maps.

Shape legend: ``B`` batch, ``H`` heads, ``Tq`` queries, ``Tk`` keys. A pattern is
``(B, H, Tq, Tk)`` attention probabilities whose queries are the *last* ``Tq`` positions of
the ``Tk`` keys (a prefill has ``Tq == Tk``; a decode step ``Tq == 1``; a chunk after a cache
lies between), so query ``i`` sees keys ``j <= Tk - Tq + i``.

The released code (GATECH-EIC/ACT, ``atten_process_eval``) divides each column sum by
``N - j``, which is right only for a square causal map of one unpadded sequence; here the
divisor is the number of *real* queries that can see key ``j`` (rows with no mass are
padding and do not count), so left-padded batches, decode steps and chunks get the same
column mean a lone square prefill would.
"""

from __future__ import annotations

import torch

__all__ = [
    "calibrate",
    "causal_column_mean",
    "detect_sinks",
    "first_real_key",
    "query_counts",
    "real_keys",
    "sink_candidates",
]


def _check_pattern(pattern: torch.Tensor, name: str = "pattern") -> None:
    if not isinstance(pattern, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (B, H, Tq, Tk), got {type(pattern).__name__}")
    if pattern.dim() != 4:
        raise ValueError(f"{name} must be (B, H, Tq, Tk) attention probabilities, got shape {tuple(pattern.shape)}")
    if pattern.shape[2] > pattern.shape[3]:
        raise ValueError(
            f"{name} has more queries than keys (Tq={pattern.shape[2]} > Tk={pattern.shape[3]}): "
            "queries must be the last Tq of the keys"
        )
    if not pattern.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {pattern.dtype}")


def _visible(tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """``(Tq, Tk)`` bool: query ``i`` (position ``Tk - Tq + i``) may see key ``j``."""
    pos = torch.arange(tq, device=device)[:, None] + (tk - tq)
    return torch.arange(tk, device=device)[None, :] <= pos


def real_keys(pattern: torch.Tensor) -> torch.Tensor:
    """``(B, Tk)`` bool: keys some query of some head attends to (padding keys get none).

    Inferred from the pattern of *all* heads of a layer, so a key that one head ignores to
    the last bit of float precision still counts as real.
    """
    _check_pattern(pattern)
    return (pattern > 0).any(dim=2).any(dim=1)


def first_real_key(pattern: torch.Tensor) -> torch.Tensor:
    """``(B,)`` int64 index of each sequence's first real key (its first token: 0 without
    left padding). A sequence with no real key gets 0."""
    real = real_keys(pattern)
    idx = torch.arange(real.shape[1], device=real.device).expand_as(real)
    big = torch.full_like(idx, real.shape[1])
    first = torch.where(real, idx, big).min(dim=1).values
    return torch.where(first == real.shape[1], torch.zeros_like(first), first)


def query_counts(pattern: torch.Tensor) -> torch.Tensor:
    """``(B, H, Tk)`` float: how many real queries (rows with mass) may see each key."""
    _check_pattern(pattern)
    tq, tk = pattern.shape[2], pattern.shape[3]
    rows = (pattern.sum(-1) > 0).to(pattern.dtype)  # (B, H, Tq)
    vis = _visible(tq, tk, pattern.device).to(pattern.dtype)  # (Tq, Tk)
    return torch.einsum("bhq,qk->bhk", rows, vis)


def causal_column_mean(pattern: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, counts)``, both ``(B, H, Tk)``: the attention each key receives averaged over
    the real queries that can see it (0 where none can), and those query counts."""
    counts = query_counts(pattern)
    total = pattern.sum(dim=2)
    mean = torch.where(counts > 0, total / counts.clamp_min(1), torch.zeros_like(total))
    return mean, counts


def sink_candidates(
    pattern: torch.Tensor,
    *,
    rule: str = "absolute",
    thres: float = 0.1,
    alpha: float = 5.0,
    min_queries: int = 1,
) -> torch.Tensor:
    """``(B, H, Tk)`` bool: every column above the threshold, before any sink is spared.

    :param rule: ``"absolute"``: causal column mean ``> thres`` (the released code);
        ``"relative"``: ``> alpha / N``, ``N`` the sequence's real keys (uniform attention
        over ``N`` keys gives ``1/N``).
    :param min_queries: only keys seen by at least this many real queries qualify.
    """
    if rule not in ("absolute", "relative"):
        raise ValueError(f"rule must be 'absolute' or 'relative', got {rule!r}")
    mean, counts = causal_column_mean(pattern)
    if rule == "absolute":
        level = torch.full_like(mean[..., :1], float(thres))
    else:
        n = real_keys(pattern).sum(-1).clamp_min(1).to(mean.dtype)  # (B,)
        level = (float(alpha) / n)[:, None, None]
    hits = (mean > level) & (counts >= min_queries)
    return hits & real_keys(pattern)[:, None, :]


def detect_sinks(
    pattern: torch.Tensor,
    *,
    rule: str = "absolute",
    thres: float = 0.1,
    alpha: float = 5.0,
    spare: str = "first_token",
    min_queries: int = 1,
    first: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, H, Tk)`` bool: the sinks calibration reduces (the spared one removed).

    :param spare: ``"first_token"``: the first real token is never a calibrated sink (the
        paper's intent: the initial sink is left alone); ``"first_hit"``: the first column
        above the threshold is dropped whatever its position (the released ``indices[1:]``,
        which lets a real hidden sink escape when the first token is below the threshold).
    :param first: ``(B,)`` first real key per sequence; default :func:`first_real_key` of
        ``pattern`` (pass it when ``pattern`` holds only some heads of a layer).
    """
    if spare not in ("first_token", "first_hit"):
        raise ValueError(f"spare must be 'first_token' or 'first_hit', got {spare!r}")
    hits = sink_candidates(pattern, rule=rule, thres=thres, alpha=alpha, min_queries=min_queries)
    tk = hits.shape[-1]
    idx = torch.arange(tk, device=hits.device)
    if spare == "first_token":
        f = first_real_key(pattern) if first is None else first.to(hits.device)
        if f.shape != (hits.shape[0],):
            raise ValueError(f"first must be (B,) = ({hits.shape[0]},), got {tuple(f.shape)}")
        return hits & (idx[None, None, :] != f[:, None, None])
    # the first True of each (b, h) row goes
    first_hit = torch.where(hits, idx, torch.full_like(idx, tk)).min(dim=-1, keepdim=True).values
    return hits & (idx != first_hit)


def calibrate(pattern: torch.Tensor, sinks: torch.Tensor, beta: float) -> torch.Tensor:
    """ACT's calibration: in every row, the attention on sink keys is multiplied by ``beta``
    and the ``(1 - beta)`` taken is added to the other keys in proportion to their weights.

    ``A'[i, j] = beta * A[i, j]`` for ``j`` in ``S``; otherwise
    ``A[i, j] + (1 - beta) * sum_{s in S} A[i, s] * A[i, j] / sum_{k not in S} A[i, k]``.
    Row sums are unchanged; ratios among non-sink keys are kept. A row with no non-sink
    mass has nowhere to move attention to and is left as it is (the released code divides
    by zero there and writes NaN).

    :param pattern: ``(B, H, Tq, Tk)`` probabilities.
    :param sinks: ``(B, H, Tk)`` bool, the keys to reduce (per head).
    :param beta: in ``[0, 1]``; ``1`` is the identity.
    :returns: a new tensor, same shape and dtype.
    """
    _check_pattern(pattern)
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be a float in [0, 1], got {beta!r}")
    b, h, _, tk = pattern.shape
    if tuple(sinks.shape) != (b, h, tk):
        raise ValueError(
            f"sinks must be (B, H, Tk) = {(b, h, tk)} for pattern {tuple(pattern.shape)}, got {tuple(sinks.shape)}"
        )
    s = sinks.to(torch.bool)[:, :, None, :]
    on_sink = torch.where(s, pattern, torch.zeros_like(pattern))
    rest = pattern - on_sink
    sink_mass = on_sink.sum(-1, keepdim=True)
    rest_mass = rest.sum(-1, keepdim=True)
    moved = (1.0 - beta) * sink_mass
    share = rest / rest_mass.clamp_min(torch.finfo(pattern.dtype).tiny)
    new = torch.where(s, pattern * beta, pattern + moved * share)
    ok = (rest_mass > 0) & (sink_mass > 0)
    return torch.where(ok, new, pattern)
