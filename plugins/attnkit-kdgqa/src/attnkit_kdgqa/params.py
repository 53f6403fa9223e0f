"""Parameters of the ``kdgqa``, ``dgqa`` and ``pgqa`` module specs.

Kept free of torch so the entry-point module can import them. Every check raises
``ValueError``/``TypeError`` naming the parameter; the checks that need the module's sizes
(``kv_heads`` against ``heads``, ``min_queries`` against the group size) run in
:func:`check_against_config` when the module is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DGQAParams",
    "KDGQAParams",
    "PGQAParams",
    "check_against_config",
    "dgqa_contract_params",
    "kdgqa_contract_params",
    "pgqa_contract_params",
]

NORM_SCOPES = ("sample", "batch")
DGQA_FORMS = ("diff", "ema")


def _int(spec: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{spec}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{spec}: {name} must be >= {minimum}, got {value}")


def _choice(spec: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{spec}: {name} must be one of {choices}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"{spec}: {name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class KDGQAParams:
    """Parameters of the ``kdgqa`` module spec (Key-Driven GQA).

    :param kv_heads: target KV heads ``G``. ``None``: the config's ``kv_heads`` when building,
        and ``heads // 2`` (the official code's default) when converting an MHA module with
        :func:`~attnkit.modules.from_pretrained_attention`. When set it must equal the
        config's ``kv_heads`` at build time.
    :param norm_scope: ``"sample"`` (default): each sample is allocated from its own key
        norms, so outputs do not depend on the rest of the batch. ``"batch"``: the paper's
        rule, norms summed over the batch (one allocation for the whole batch).
    :param min_queries: query heads every KV head keeps whatever its norm; the remaining
        ``heads - kv_heads * min_queries`` follow the paper's rule. ``0`` is the paper;
        ``heads // kv_heads`` forces static GQA.
    """

    kv_heads: int | None = None
    norm_scope: str = "sample"
    min_queries: int = 0

    def __post_init__(self) -> None:
        _int("kdgqa", "kv_heads", self.kv_heads, 1, optional=True)
        _choice("kdgqa", "norm_scope", self.norm_scope, NORM_SCOPES)
        _int("kdgqa", "min_queries", self.min_queries, 0)


@dataclass(frozen=True)
class DGQAParams:
    """Parameters of the ``dgqa`` module spec (Dynamic Key-Driven GQA).

    :param form: ``"diff"``: allocate by ``|cache - m|``, the change of the key norms ``m``
        against the decayed cache; ``"ema"``: by ``beta * m + (1 - beta) * cache``.
    :param beta: weight of the *current* norms in ``"ema"`` (the official code's 0.9; note it
        is the reverse of the usual EMA convention). Unused by ``"diff"``.
    :param window: the allocation is recomputed on every ``window``-th training forward
        (counted by the module's own ``step`` buffer), and the cache decays as
        ``cache = (cache + m) / window`` at each recomputation, as in the official code.
        Default 10 (the official ``model.py`` factory default).
    :param kv_heads: as for :class:`KDGQAParams`.
    :param min_queries: as for :class:`KDGQAParams`.
    """

    form: str = "diff"
    beta: float = 0.9
    window: int = 10
    kv_heads: int | None = None
    min_queries: int = 0

    def __post_init__(self) -> None:
        _choice("dgqa", "form", self.form, DGQA_FORMS)
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)):
            raise TypeError(f"dgqa: beta must be a float in [0, 1], got {type(self.beta).__name__} {self.beta!r}")
        if not 0.0 <= float(self.beta) <= 1.0:
            raise ValueError(f"dgqa: beta must be in [0, 1], got {self.beta}")
        object.__setattr__(self, "beta", float(self.beta))
        _int("dgqa", "window", self.window, 1)
        _int("dgqa", "kv_heads", self.kv_heads, 1, optional=True)
        _int("dgqa", "min_queries", self.min_queries, 0)


@dataclass(frozen=True)
class PGQAParams:
    """Parameters of the ``pgqa`` module spec (Perturbed GQA: static groups, noise in training).

    :param kv_heads: as for :class:`KDGQAParams`.
    """

    kv_heads: int | None = None

    def __post_init__(self) -> None:
        _int("pgqa", "kv_heads", self.kv_heads, 1, optional=True)


def check_against_config(spec: str, params: Any, heads: int, kv_heads: int) -> None:
    """Check ``params`` against the module's ``heads`` / ``kv_heads``.

    :raises ValueError: ``params.kv_heads`` disagrees with the config, the module is not
        grouped (``kv_heads >= heads``), or ``min_queries * kv_heads > heads``.
    """
    if params.kv_heads is not None and params.kv_heads != kv_heads:
        raise ValueError(
            f"{spec}: kv_heads={params.kv_heads} disagrees with the module config (heads={heads}, kv_heads={kv_heads})"
        )
    if kv_heads >= heads:
        raise ValueError(
            f"{spec}: needs fewer KV heads than query heads to group them, got heads={heads}, kv_heads={kv_heads}"
        )
    if heads % kv_heads:
        raise ValueError(f"{spec}: kv_heads={kv_heads} must divide heads={heads}")
    m = getattr(params, "min_queries", 0)
    if m * kv_heads > heads:
        raise ValueError(
            f"{spec}: min_queries={m} times kv_heads={kv_heads} exceeds heads={heads}; at most {heads // kv_heads}"
        )


def kdgqa_contract_params() -> list[dict[str, Any]]:
    """Parameter sets the module contract builds ``kdgqa`` with."""
    return [{}, {"min_queries": 1}]


def dgqa_contract_params() -> list[dict[str, Any]]:
    """Parameter sets the module contract builds ``dgqa`` with."""
    return [{"form": "diff"}, {"form": "ema", "window": 1}]


def pgqa_contract_params() -> list[dict[str, Any]]:
    """Parameter sets the module contract builds ``pgqa`` with."""
    return [{}]
