"""Whether a backend's optional modules are installed, found without importing them.

``attnkit info`` and ``attnkit plugins`` say which backends can run here. A backend's
``can_run`` imports what it needs, so that a broken install is a reason rather than a crash
inside a kernel, but importing numba takes seconds (and triton or scipy's BLAS a good part
of one more). These commands look up the modules a backend declares in
:attr:`Backend.requires <attnkit.Backend>` with :func:`importlib.util.find_spec` and read
the installed version from the distribution's metadata instead; a call still goes through
``can_run``.

Importing this module imports neither torch nor any of the modules it looks up.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ModuleStatus", "find", "reason_here", "reason_unavailable", "triton_interpreter_requested"]


@dataclass(frozen=True)
class ModuleStatus:
    """What an installed-module lookup found.

    :param name: the import name looked up (``"numba"``).
    :param found: whether :func:`importlib.util.find_spec` found it.
    :param version: the version of the distribution of the same name, when it has metadata.
    """

    name: str
    found: bool
    version: str | None = None

    def __str__(self) -> str:
        if not self.found:
            return f"{self.name} (not installed)"
        return f"{self.name} {self.version}" if self.version else self.name


def find(name: str) -> ModuleStatus:
    """Look module ``name`` up without importing it (a dotted name imports its parents)."""
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a module without a spec
        found = False
    version = None
    if found:
        from importlib import metadata

        try:
            version = metadata.version(name.partition(".")[0])
        except metadata.PackageNotFoundError:  # importable, but not from a distribution of that name
            version = None
    return ModuleStatus(name, found, version)


def triton_interpreter_requested() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for the Triton interpreter: the reading
    :mod:`attnkit.kernels.gpu` falls back to when it cannot ask Triton (which means importing
    it)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def reason_unavailable(requires: Sequence[str], device_type: str) -> str | None:
    """Why the modules in ``requires`` cannot serve a call on ``device_type``, or ``None``.

    Only presence is checked, plus the one rule presence does not settle: Triton kernels run
    on CPU tensors only under the Triton interpreter.
    """
    missing = [name for name in requires if not find(name).found]
    if missing:
        return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    if "triton" in requires and device_type == "cpu" and not triton_interpreter_requested():
        return "CPU tensors run only under the Triton interpreter, and TRITON_INTERPRET=1 is not set"
    return None


def reason_here(backend: Any, call: Any) -> str | None:
    """What ``attnkit info`` reports for ``backend`` (an :class:`attnkit.Backend`) on ``call``.

    The declared fields first (devices, dtypes, flags), then, for a backend that declares
    ``requires``, those modules looked up without importing them; a backend that declares
    none is asked through its ``can_run`` as a call would.
    """
    if not backend.requires:
        return backend.reason_not_to_run(call)
    return backend.declared_reason(call) or reason_unavailable(backend.requires, call.device.type)
