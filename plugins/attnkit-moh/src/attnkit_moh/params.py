"""Parameters of the ``moh`` module spec and how they resolve against a module's head count.

Imported by the entry-point module, so it must not import torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PATHS", "ROUTERS", "HeadLayout", "MoHParams", "contract_params", "resolve_layout"]

ROUTERS = ("learned", "query_norm")
PATHS = ("auto", "gather", "masked")
#: Share of heads active when neither ``top_k`` nor ``active_fraction`` is given.
DEFAULT_ACTIVE_FRACTION = 0.75


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class MoHParams:
    """Parameters of the ``moh`` module spec (MoH, arXiv:2410.11842).

    :param shared_heads: heads ``0 .. h_s-1`` that every token uses; default ``max(1, heads // 4)``.
    :param top_k: routed heads each token activates (the paper code's ``routed_head``); the
        pool is ``heads - shared_heads``. Give this or ``active_fraction``, not both.
    :param active_fraction: share of all heads active per token; ``top_k`` becomes
        ``round(active_fraction * heads) - shared_heads``. Default 0.75 when ``top_k`` is unset.
    :param router: ``"learned"`` (two-stage routing with ``W_r``, ``W_s``, ``W_h``) or
        ``"query_norm"`` (parameter-free, binary: the MoH-LLaMA3 router).
    :param aux_loss_weight: ``β``; the module's ``aux_loss`` in training is ``β · l_aux``.
    :param kernel: attention kernel spec the heads run (``"dense"``); only ``"dense"`` has the
        selected-heads (gather) path, other kernels run every head and mask.
    :param kernel_params: that kernel's parameters.
    :param path: ``"auto"`` (gather for sequences of at least ``gather_min_tokens`` tokens,
        masked for shorter ones and while exporting / compiling),
        ``"gather"`` (compute only selected (token, head) pairs) or ``"masked"`` (every head,
        then gate: the paper code's formulation).
    :param gather_min_tokens: shortest sequence ``"auto"`` gathers for; below it the gather's
        bookkeeping (sort, index, scatter) costs more than the attention it saves.
    """

    shared_heads: int | None = None
    top_k: int | None = None
    active_fraction: float | None = None
    router: str = "learned"
    aux_loss_weight: float = 0.01
    kernel: str = "dense"
    kernel_params: Mapping[str, Any] = field(default_factory=dict)
    path: str = "auto"
    gather_min_tokens: int = 64

    def __post_init__(self) -> None:
        if self.shared_heads is not None and (not _is_int(self.shared_heads) or self.shared_heads < 0):
            raise ValueError(f"moh: shared_heads must be an int >= 0 or None, got {self.shared_heads!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
            raise ValueError(f"moh: top_k must be an int >= 0 or None, got {self.top_k!r}")
        if self.active_fraction is not None:
            f = self.active_fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f) or not 0.0 < f <= 1.0:
                raise ValueError(f"moh: active_fraction must be a number in (0, 1], got {f!r}")
            if self.top_k is not None:
                raise ValueError(
                    f"moh: give top_k or active_fraction, not both (got top_k={self.top_k}, active_fraction={f})"
                )
        if self.router not in ROUTERS:
            raise ValueError(f"moh: router must be one of {', '.join(ROUTERS)}, got {self.router!r}")
        w = self.aux_loss_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"moh: aux_loss_weight must be a finite number >= 0, got {w!r}")
        if self.path not in PATHS:
            raise ValueError(f"moh: path must be one of {', '.join(PATHS)}, got {self.path!r}")
        if not _is_int(self.gather_min_tokens) or self.gather_min_tokens < 1:
            raise ValueError(f"moh: gather_min_tokens must be a positive int, got {self.gather_min_tokens!r}")
        if not isinstance(self.kernel, str) or not self.kernel:
            raise TypeError(f"moh: kernel must be the name of an attention spec, got {self.kernel!r}")
        if not isinstance(self.kernel_params, Mapping):
            raise TypeError(f"moh: kernel_params must be a dict, got {type(self.kernel_params).__name__}")
        object.__setattr__(self, "kernel_params", dict(self.kernel_params))
        if self.path == "gather" and self.kernel != "dense":
            raise ValueError(
                f"moh: path='gather' needs kernel='dense' (a gathered subset of queries has no token layout "
                f"for kernel {self.kernel!r}); use path='auto' or 'masked'"
            )


@dataclass(frozen=True)
class HeadLayout:
    """The resolved head split: ``shared`` always-on heads, a pool of ``routed`` heads of which
    each token uses ``top_k``."""

    heads: int
    shared: int
    routed: int
    top_k: int

    @property
    def active(self) -> int:
        """Heads each token uses."""
        return self.shared + self.top_k

    @property
    def active_fraction(self) -> float:
        return self.active / self.heads


def resolve_layout(params: MoHParams, heads: int) -> HeadLayout:
    """Resolve ``params`` against a module with ``heads`` query heads.

    :raises ValueError: naming the parameter and the sizes when they do not fit.
    """
    shared = params.shared_heads if params.shared_heads is not None else max(1, heads // 4)
    if shared > heads:
        raise ValueError(f"moh: shared_heads={shared} exceeds the module's heads={heads}")
    pool = heads - shared
    if params.top_k is not None:
        top_k = params.top_k
        if top_k > pool:
            raise ValueError(
                f"moh: top_k={top_k} exceeds the routed pool heads - shared_heads = {heads} - {shared} = {pool}"
            )
    else:
        fraction = params.active_fraction if params.active_fraction is not None else DEFAULT_ACTIVE_FRACTION
        active = min(heads, math.floor(fraction * heads + 0.5))
        if active < max(shared, 1):
            raise ValueError(
                f"moh: active_fraction={fraction} gives {active} active heads of heads={heads}, fewer than "
                f"shared_heads={shared} (or none at all)"
            )
        top_k = active - shared
    if top_k == 0 and pool > 0:
        raise ValueError(
            f"moh: top_k=0 with {pool} routed heads (heads={heads}, shared_heads={shared}) leaves them unused; "
            "top_k=0 needs shared_heads == heads"
        )
    if shared + top_k == 0:
        raise ValueError(f"moh: no head is active (shared_heads=0, top_k=0, heads={heads})")
    if params.router == "query_norm" and top_k > 0 and pool < 2:
        raise ValueError(
            f"moh: router='query_norm' normalises by the std over routed heads and needs a pool of >= 2, "
            f"got heads - shared_heads = {heads} - {shared} = {pool}"
        )
    return HeadLayout(heads=heads, shared=shared, routed=pool, top_k=top_k)


def contract_params() -> list[dict[str, Any]]:
    """Parameter sets the module contract builds ``moh`` with (its configs have 4 heads, 2 kv)."""
    return [
        {},  # shared 1, top-2 of 3 routed: shared gate fixed to 1, two-stage routing
        {"shared_heads": 2, "top_k": 1},  # a learned shared gate, and W_r reached only via the LB loss
        {"shared_heads": 2, "top_k": 1, "router": "query_norm"},
    ]
