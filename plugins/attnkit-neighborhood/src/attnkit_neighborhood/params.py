"""Parameters of neighborhood attention and their validation against the inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Axes = tuple[int, ...]


def _as_positive_ints(name: str, value: object) -> int | Axes:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of ints, got bool")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
        return value
    if isinstance(value, (tuple, list)):
        if not 1 <= len(value) <= 3:
            raise ValueError(f"{name} must have 1 to 3 entries (one per token axis), got {len(value)}")
        for v in value:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} entries must be ints, got {value!r}")
            if v < 1:
                raise ValueError(f"{name} entries must be >= 1, got {value!r}")
        return tuple(value)
    raise TypeError(f"{name} must be an int or a tuple of ints, got {type(value).__name__}")


@dataclass(frozen=True)
class NeighborhoodParams:
    """Parameters of :data:`attnkit_neighborhood.NEIGHBORHOOD`.

    :param kernel_size: keys per axis each query sees (an int for every axis, or one per
        axis). Even sizes take ``k/2`` keys before and ``k/2 - 1`` after, as NATTEN does.
    :param dilation: step between neighbours per axis; tokens form ``dilation`` interleaved
        groups and a query only sees its own group.
    """

    kernel_size: int | Axes = 7
    dilation: int | Axes = 1

    def __post_init__(self) -> None:
        ks = _as_positive_ints("kernel_size", self.kernel_size)
        dl = _as_positive_ints("dilation", self.dilation)
        object.__setattr__(self, "kernel_size", ks)
        object.__setattr__(self, "dilation", dl)

    def per_axis(self, n_axes: int) -> tuple[Axes, Axes]:
        """``(kernel_size, dilation)`` as tuples of ``n_axes`` entries."""
        out = []
        for name, value in (("kernel_size", self.kernel_size), ("dilation", self.dilation)):
            if isinstance(value, int):
                out.append((value,) * n_axes)
            elif len(value) != n_axes:
                raise ValueError(f"{name} has {len(value)} entries but the input has {n_axes} token axes")
            else:
                out.append(tuple(value))
        return out[0], out[1]


def normalize(
    params: NeighborhoodParams, spatial: Axes, is_causal: bool | tuple[bool, ...]
) -> tuple[Axes, Axes, tuple[bool, ...]]:
    """Per-axis ``(kernel_size, dilation, is_causal)`` for token axes ``spatial``."""
    n = len(spatial)
    ks, dl = params.per_axis(n)
    causal = tuple(is_causal) if isinstance(is_causal, tuple) else (bool(is_causal),) * n
    return ks, dl, causal


def validate(params: NeighborhoodParams, q: Any, k: Any, v: Any, is_causal: bool | tuple[bool, ...]) -> None:
    """Check the parameters against ``q (B, H, *S, D)``; raises ``ValueError`` naming them."""
    spatial = tuple(q.shape[2:-1])
    kv_spatial = tuple(k.shape[2:-1])
    if spatial != kv_spatial:
        raise ValueError(
            f"neighborhood attention is self-attention: q token axes {spatial} must equal k token axes {kv_spatial}"
        )
    ks, dl, _ = normalize(params, spatial, is_causal)
    for axis, (n, kk, d) in enumerate(zip(spatial, ks, dl)):
        if kk * d > n:
            raise ValueError(
                f"kernel_size * dilation must not exceed the input size on every axis; axis {axis} has size {n} "
                f"but kernel_size={kk}, dilation={d} (product {kk * d})"
            )


def contract_params(seq_len: int) -> list[dict[str, Any]]:
    """Parameter sets the contract suite runs with at sequence length ``seq_len``."""
    if seq_len < 2:
        return [{"kernel_size": 1}]
    cases: list[dict[str, Any]] = [{"kernel_size": min(5, seq_len)}]
    if seq_len >= 4:
        cases.append({"kernel_size": 4})
    if seq_len >= 9:
        cases.append({"kernel_size": 3, "dilation": 3})
    return cases
