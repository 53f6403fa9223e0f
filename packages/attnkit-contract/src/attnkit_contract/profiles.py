"""Contract profiles: which checks a run makes, by what each costs.

Every contract check carries cost tags, from the backend it runs (:attr:`attnkit.Backend.cost`:
``"compile"`` for ``torch.compile`` per shape, ``"interpreter"`` for Triton on CPU) and from
the check itself (:data:`CHECK_COSTS`: ``"export"`` for an ONNX export, ``"property"`` for
hypothesis examples, ``"sweep"`` for many lengths, ``"model"`` for a tiny transformers model).
A profile turns tags into a plan:

* ``quick`` (``nox -s tests``, ``attnkit check`` by default): every check of every cheap
  backend, with fewer hypothesis examples and lengths; one small ``check_matches_reference``
  per compiled or interpreted backend; no ONNX export (left to ``full``);
* ``full`` (``attnkit check --full``, ``nox -s plugin-<slug>``, the mixin and
  ``parametrize_with_*`` by default): everything at full size;
* ``rest`` (``nox -s slow``): what ``quick`` leaves out or runs at a reduced size (the latter
  again at full size), so ``quick`` + ``rest`` covers ``full``.

The profile comes from ``ATTNKIT_CONTRACT_PROFILE`` (or pytest's ``--attnkit-profile``),
default ``full``. What a profile leaves out is recorded while parametrising
(:func:`record_left_out`) so a run can say what it did not check and where that runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHECK_COSTS",
    "EXPENSIVE_BACKEND_COSTS",
    "PROFILES",
    "QUICK_EXAMPLES",
    "QUICK_LENGTHS",
    "LeftOut",
    "backend_costs",
    "current_profile",
    "included",
    "is_reduced",
    "left_out",
    "record_left_out",
]

PROFILES = ("quick", "full", "rest")

#: Cost tags of checks, by check name (attention, module, cache and analysis contracts).
CHECK_COSTS: dict[str, frozenset[str]] = {
    "check_onnx_export": frozenset({"export"}),
    "check_module_onnx_export": frozenset({"export"}),
    "check_hypothesis_property": frozenset({"property"}),
    "check_odd_lengths": frozenset({"sweep"}),
}
#: Backend costs that keep a backend to one small check in the quick profile.
EXPENSIVE_BACKEND_COSTS = frozenset({"compile", "interpreter"})
#: The one check such a backend gets in the quick profile.
QUICK_CHECK = "check_matches_reference"
#: Check costs the quick profile leaves to ``full`` altogether.
FULL_ONLY_CHECK_COSTS = frozenset({"export"})
#: Quick-profile sizes for the checks it keeps at a reduced size.
QUICK_EXAMPLES = 5
QUICK_LENGTHS = (1, 7, 13, 61)


def current_profile() -> str:
    """``ATTNKIT_CONTRACT_PROFILE`` (``quick``, ``full`` or ``rest``), default ``full``.

    :raises ValueError: any other value, naming the variable.
    """
    raw = os.environ.get("ATTNKIT_CONTRACT_PROFILE", "").strip().lower() or "full"
    if raw not in PROFILES:
        raise ValueError(f"ATTNKIT_CONTRACT_PROFILE must be one of {', '.join(PROFILES)}, got {raw!r}")
    return raw


def backend_costs(spec: Any, backend: str | None) -> frozenset[str]:
    """The cost tags of ``spec``'s backend ``backend`` that apply on this machine: an
    ``"interpreter"`` backend is only expensive where it runs under the interpreter (no CUDA)."""
    if backend is None or getattr(spec, "kind", None) != "attention":
        return frozenset()
    costs = set(getattr(spec.backend(backend), "cost", ()) or ())
    if "interpreter" in costs and _cuda():
        costs.discard("interpreter")
    return frozenset(costs)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _quick(spec: Any, backend: str | None, check: str) -> str | None:
    """Why the quick profile leaves ``(spec, backend, check)`` out, or ``None`` to keep it."""
    expensive = backend_costs(spec, backend) & EXPENSIVE_BACKEND_COSTS
    if expensive and check != QUICK_CHECK:
        return f"backend {backend!r} costs {'/'.join(sorted(expensive))}: quick runs its {QUICK_CHECK} only"
    full_only = CHECK_COSTS.get(check, frozenset()) & FULL_ONLY_CHECK_COSTS
    if full_only:
        return f"{check} costs {'/'.join(sorted(full_only))}"
    return None


def included(spec: Any, backend: str | None, check: str, profile: str | None = None) -> str | None:
    """``None`` when ``profile`` (default :func:`current_profile`) runs the check, else why not."""
    profile = profile or current_profile()
    if profile == "full":
        return None
    reason = _quick(spec, backend, check)
    if profile == "quick":
        return reason
    if reason is not None or is_reduced(spec, backend, check, "quick"):
        return None
    return "runs in the quick profile"


def is_reduced(spec: Any, backend: str | None, check: str, profile: str | None = None) -> bool:
    """Whether ``profile`` runs the check at a reduced size (fewer examples, lengths,
    parameter sets or dtypes than ``full``)."""
    if (profile or current_profile()) != "quick":
        return False
    if CHECK_COSTS.get(check, frozenset()) & {"property", "sweep"}:
        return True
    return bool(backend_costs(spec, backend) & EXPENSIVE_BACKEND_COSTS) and check == QUICK_CHECK


@dataclass(frozen=True)
class LeftOut:
    """A check a profile did not run: ``spec``, ``backend`` (``None`` for spec-level
    contracts), ``check`` and why."""

    spec: str
    plugin: str | None
    backend: str | None
    check: str
    reason: str


_LEFT_OUT: dict[tuple[str, str | None, str], LeftOut] = {}


def record_left_out(spec: Any, backend: str | None, check: str, reason: str) -> None:
    """Note that the current profile leaves ``(spec, backend, check)`` out."""
    key = (spec.name, backend, check)
    _LEFT_OUT[key] = LeftOut(spec.name, getattr(spec, "plugin", None), backend, check, reason)


def left_out(plugins: Iterable[str] | None = None) -> list[LeftOut]:
    """Everything recorded as left out so far, optionally only of these plugins' specs."""
    wanted = set(plugins) if plugins is not None else None
    return [x for x in _LEFT_OUT.values() if wanted is None or x.plugin in wanted]
