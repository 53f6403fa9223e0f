"""``parametrize_with_contract``: one pytest test per ``(spec, backend, check)``, in the
manner of scikit-learn's ``parametrize_with_checks``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest

__all__ = ["BoundCheck", "contract_params", "parametrize_with_contract"]

F = TypeVar("F", bound=Callable[..., Any])

#: Marker put on every generated test: ``attnkit_contract(spec=, plugin=, backend=, check=)``.
MARKER = "attnkit_contract"


class BoundCheck:
    """A check bound to one backend: ``check(spec)`` runs it (``check(spec, case)`` too)."""

    def __init__(self, name: str, backend: str) -> None:
        self.name = name
        self.backend = backend

    def __call__(self, spec: Any, case: Any = None) -> None:
        from attnkit_contract.checks import ATTENTION_CHECKS

        ATTENTION_CHECKS[self.name](spec, self.backend, case)

    def __repr__(self) -> str:
        return f"{self.name}[{self.backend}]"


def contract_params(specs: Iterable[Any], *, with_backend: bool = True) -> list[Any]:
    """The ``pytest.param`` list behind :func:`parametrize_with_contract`.

    Each value is ``(spec, backend, check_function)``, or ``(spec, BoundCheck)`` when
    ``with_backend`` is false; ids are ``<spec>.<backend>-<check>``. Entries of the spec's
    ``expected_failed_checks`` become ``xfail(strict=True)``.
    """
    from attnkit_contract.checks import ATTENTION_CHECKS, yield_contract
    from attnkit_contract.runner import expected_failure

    params = []
    for spec in specs:
        if getattr(spec, "kind", None) != "attention":
            raise TypeError(f"parametrize_with_contract takes attention specs, got {spec!r}")
        for backend, name in yield_contract(spec):
            marks: list[Any] = [
                pytest.mark.attnkit_contract(spec=spec.name, plugin=spec.plugin, backend=backend, check=name)
            ]
            reason = expected_failure(spec, backend, name)
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            values = (spec, backend, ATTENTION_CHECKS[name]) if with_backend else (spec, BoundCheck(name, backend))
            params.append(pytest.param(*values, id=f"{spec.name}.{backend}-{name}", marks=marks))
    return params


def parametrize_with_contract(specs: Iterable[Any]) -> Callable[[F], F]:
    """Parametrise a test over every ``(spec, backend, check)`` of ``specs``.

    The decorated test takes ``spec, backend, check`` and calls ``check(spec, backend)``, or
    takes ``spec, check`` and calls ``check(spec)``::

        @parametrize_with_contract(attnkit.list_specs("attention"))
        def test_attention_contract(spec, backend, check):
            check(spec, backend)

    Ids look like ``neighborhood.numba-check_matches_reference``; each test carries the
    ``attnkit_contract`` marker (so ``--attnkit-plugin`` can select it), and checks listed in
    a spec's ``expected_failed_checks`` (``"check_x"`` or ``"backend:check_x"``) are strict
    xfails: one that passes fails the run.

    :param specs: attention specs (e.g. ``registry.attention_specs()``).
    :returns: a decorator applying ``pytest.mark.parametrize``.

    .. versionadded:: 0.1
    """
    specs = list(specs)

    def decorate(fn: F) -> F:
        names = inspect.signature(fn).parameters
        with_backend = "backend" in names
        argnames = "spec, backend, check" if with_backend else "spec, check"
        return pytest.mark.parametrize(argnames, contract_params(specs, with_backend=with_backend))(fn)

    return decorate
