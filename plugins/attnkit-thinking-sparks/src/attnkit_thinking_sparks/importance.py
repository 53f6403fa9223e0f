"""Head importance by zero ablation, and the paper's comparison of head sets across checkpoints.

Ablation importance of head ``(l, h)`` on a task: the rise of the task loss (mean target
cross-entropy, teacher forced) when the head's output ``z`` (the input of ``o_proj``, site
``blocks.{l}.attn.hook_z``) is zeroed at every position, through the core's
:class:`~attnkit.runtime.HeadEdit`. As in the paper's Eq. 6-7 the importance map is the
magnitude normalised to sum 1: ``I(l, h) = |dL(l, h)| / sum |dL|``.

Comparison across checkpoints (paper Eq. 8): ``E(l, h) = (I_post - I_pre) / (I_post + I_pre +
1e-6)`` in ``[-1, 1]``; a checkpoint's *circuit* is its ``k`` most important heads; heads in the
post-trained circuit but not the base one are *emergent*, those in both *retained*, those
only in the base one *pruned*.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "EPS",
    "HeadSets",
    "ablation_scan",
    "activation_frequency",
    "bootstrap_jaccard",
    "circuit",
    "compare_sets",
    "effect",
    "first_emergence",
    "normalise",
]

#: The paper's stabiliser in Eq. 8.
EPS = 1e-6

Head = tuple[int, int]


def _check_map(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor (L, H), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be (L, H), got shape {tuple(x.shape)}")


def ablation_scan(
    model: Any,
    loss_fn: Callable[[Any], torch.Tensor],
    n_layers: int,
    n_heads: int,
    *,
    heads: Sequence[Head] | None = None,
    progress: Callable[..., Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-item task loss with each head zero-ablated in turn.

    :param loss_fn: ``loss_fn(model) -> (N,)`` per-item losses of one forward (called inside
        :func:`attnkit.patch`, under ``torch.no_grad``).
    :param heads: the heads to scan (default every ``(ly, h)``); the others stay NaN.
    :returns: ``(clean (N,), ablated (L, H, N))`` float64 per-item losses.
    """
    import attnkit
    from attnkit.runtime.interventions import HeadEdit

    todo = list(heads) if heads is not None else [(ly, h) for ly in range(n_layers) for h in range(n_heads)]
    for ly, h in todo:
        if not (0 <= ly < n_layers and 0 <= h < n_heads):
            raise ValueError(f"heads: ({ly}, {h}) is outside a model of {n_layers} layers x {n_heads} heads")
    with torch.no_grad():
        with attnkit.patch(model, "dense"):
            clean = loss_fn(model).double().cpu()
        ablated = torch.full((n_layers, n_heads, clean.shape[0]), float("nan"), dtype=torch.float64)
        for ly, h in progress(todo, desc="ablate heads", leave=False) if progress else todo:
            with attnkit.patch(model, "dense", analyses=[HeadEdit({ly: [h]}, mode="zero")]):
                ablated[ly, h] = loss_fn(model).double().cpu()
    return clean, ablated


def normalise(delta: torch.Tensor) -> torch.Tensor:
    """``|delta| / sum |delta|`` over the heads that have a value (NaN stays NaN); all zero:
    all zero."""
    _check_map("delta", delta)
    mag = delta.abs()
    total = torch.nansum(mag)
    if total == 0:
        return torch.where(torch.isnan(mag), mag, torch.zeros_like(mag))
    return mag / total


def effect(pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """Eq. 8, ``(post - pre) / (post + pre + 1e-6)`` per head: 0 when equal, about +1 for a
    head important only after, -1 only before.

    :raises ValueError: naming both when the shapes differ.
    """
    _check_map("pre", pre)
    _check_map("post", post)
    if pre.shape != post.shape:
        raise ValueError(f"pre and post must have one shape, got {tuple(pre.shape)} and {tuple(post.shape)}")
    return (post - pre) / (post + pre + EPS)


def circuit(importance: torch.Tensor, k: int) -> list[Head]:
    """The ``k`` most important heads, most important first (ties: lower layer, then head);
    NaN heads are never chosen.

    :raises ValueError: naming ``k`` when it is not in ``[0, number of heads]``.
    """
    _check_map("importance", importance)
    n_layers, n_heads = importance.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n_layers * n_heads:
        raise ValueError(f"k must be an int in [0, {n_layers * n_heads}], got {k!r}")
    ranked = sorted(
        (-float(importance[ly, h]), ly, h)
        for ly in range(n_layers)
        for h in range(n_heads)
        if not torch.isnan(importance[ly, h])
    )
    return [(ly, h) for _, ly, h in ranked[:k]]


@dataclass(frozen=True)
class HeadSets:
    """Heads of the post-trained circuit against the base one.

    :ivar emergent: in post, not in base (sorted by post importance).
    :ivar retained: in both.
    :ivar pruned: in base, not in post.
    """

    emergent: list[Head]
    retained: list[Head]
    pruned: list[Head]

    def to_dict(self) -> dict[str, list[str]]:
        return {k: [f"L{ly}H{h}" for ly, h in v] for k, v in self.__dict__.items()}


def compare_sets(base: Sequence[Head], post: Sequence[Head]) -> HeadSets:
    """Emergent / retained / pruned heads from two circuits (order of ``post``, then ``base``)."""
    b, p = set(base), set(post)
    return HeadSets(
        emergent=[x for x in post if x not in b],
        retained=[x for x in post if x in b],
        pruned=[x for x in base if x not in p],
    )


def activation_frequency(circuits: Sequence[Sequence[Head]], n_layers: int, n_heads: int) -> torch.Tensor:
    """``(L, H)`` share of the checkpoints whose circuit holds each head."""
    if not circuits:
        raise ValueError("circuits must hold at least one checkpoint's circuit")
    freq = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    for c in circuits:
        for ly, h in set(c):
            freq[ly, h] += 1
    return freq / len(circuits)


def first_emergence(circuits: Sequence[Sequence[Head]], steps: Sequence[int]) -> dict[Head, int]:
    """For each head absent from the first circuit (the base) that joins a later one, the
    step of the first checkpoint whose circuit holds it.

    :raises ValueError: naming ``steps`` when it does not match ``circuits`` in length.
    """
    if len(steps) != len(circuits):
        raise ValueError(f"steps must have one entry per circuit, got {len(steps)} steps for {len(circuits)}")
    if not circuits:
        return {}
    base = set(circuits[0])
    out: dict[Head, int] = {}
    for c, step in zip(circuits[1:], steps[1:]):
        for head in c:
            if head not in base and head not in out:
                out[head] = int(step)
    return out


def bootstrap_jaccard(
    clean: torch.Tensor, ablated: torch.Tensor, k: int, n_resamples: int = 50, seed: int = 0
) -> tuple[float, float]:
    """Stability of the top-``k`` circuit under resampling the task items: mean and standard
    deviation of the Jaccard index between the full-data circuit and that of each bootstrap
    resample (the paper's trap: circuits are unstable).

    :param clean: ``(N,)`` per-item losses; :param ablated: ``(L, H, N)`` (from :func:`ablation_scan`).
    """
    if ablated.dim() != 3 or ablated.shape[-1] != clean.shape[0]:
        raise ValueError(
            f"ablated must be (L, H, N) with N = len(clean) = {clean.shape[0]}, got {tuple(ablated.shape)}"
        )
    full = set(circuit(normalise(ablated.mean(-1) - clean.mean()), k))
    g = torch.Generator().manual_seed(seed)
    n = clean.shape[0]
    scores = []
    for _ in range(n_resamples):
        idx = torch.randint(0, n, (n,), generator=g)
        c = set(circuit(normalise(ablated[..., idx].mean(-1) - clean[idx].mean()), k))
        union = full | c
        scores.append(len(full & c) / len(union) if union else 1.0)
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(scores) > 1 else 0.0
