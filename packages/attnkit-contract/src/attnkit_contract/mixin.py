"""``AttentionContract``: the contract as a mixin of tests (the fsspec ``AbstractFixtures``
way). A plugin's ``tests/test_contract.py``::

    import pytest
    from attnkit_contract import AttentionContract
    from attnkit_slidingwin import SLIDINGWIN


    class TestSlidingWin(AttentionContract):
        @pytest.fixture
        def impl(self):
            return SLIDINGWIN

gives one test per ``(backend, check)``: ``TestSlidingWin::test_contract[numba-check_gqa]``.
"""

from __future__ import annotations

from typing import Any

import pytest

from attnkit_contract.harness import DEFAULT_TOLERANCES, ContractCase, default_case

__all__ = ["AttentionContract"]

_MISSING = object()


def _static_fixture(metafunc: Any, name: str, known: dict[str, Any]) -> Any:
    """Evaluate fixture ``name`` while collecting, when it is a plain function of ``known``.

    Which backends a spec has is only known from the ``impl`` fixture, but test ids must be
    fixed at collection. Fixtures that need anything else (``request``, parametrisation,
    ``yield``) give ``_MISSING`` and the test falls back to running every backend at once.
    """
    import inspect

    # pytest keeps the closure's definitions here; no public API exposes them (pytest 8, 9).
    defs = getattr(metafunc, "_arg2fixturedefs", {}).get(name)
    if not defs:
        return _MISSING
    fixturedef = defs[-1]
    if getattr(fixturedef, "params", None) is not None or any(a not in known for a in fixturedef.argnames):
        return _MISSING
    func = fixturedef.func
    if inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func):
        return _MISSING
    try:
        sig = inspect.signature(func)
        args = [known[a] for a in fixturedef.argnames]
        if "self" in sig.parameters and metafunc.cls is not None:
            return func(metafunc.cls(), *args)
        return func(*args)
    except Exception:  # the base class's NotImplementedError, or anything a fixture needs more for
        return _MISSING


class AttentionContract:
    """Mixin of contract tests; override :meth:`impl` to return the spec under test.

    Overridable fixtures (defaults in brackets): ``impl`` (required), ``backends`` [all of
    the spec's], ``checks`` [all of :data:`~attnkit_contract.ATTENTION_CHECKS`],
    ``tolerances`` [:data:`~attnkit_contract.harness.DEFAULT_TOLERANCES`], ``contract_device``
    [``ATTNKIT_CONTRACT_DEVICE`` or cpu], ``contract_case`` [built from those].

    Keep ``impl``, ``backends`` and ``checks`` plain functions (of ``self`` and ``impl``) so
    each backend gets its own test id; otherwise one test per check runs every backend.

    .. versionadded:: 0.1
    """

    @pytest.fixture
    def impl(self) -> Any:
        raise NotImplementedError("override the `impl` fixture in the plugin's tests to return its AttentionSpec")

    @pytest.fixture
    def backends(self, impl: Any) -> list[str] | None:
        return None

    @pytest.fixture
    def checks(self, impl: Any) -> list[str] | None:
        return None

    @pytest.fixture
    def tolerances(self) -> dict[str, tuple[float, float]]:
        return dict(DEFAULT_TOLERANCES)

    @pytest.fixture
    def contract_device(self) -> str:
        return default_case().device

    @pytest.fixture
    def contract_case(self, tolerances: dict[str, tuple[float, float]], contract_device: str) -> ContractCase:
        return default_case(tolerances=tolerances, device=contract_device)

    def pytest_generate_tests(self, metafunc: Any) -> None:
        if metafunc.function.__name__ != "test_contract":
            return
        from attnkit_contract.checks import ATTENTION_CHECKS, yield_contract
        from attnkit_contract.runner import expected_failure

        spec = _static_fixture(metafunc, "impl", {})
        backends: Any = _MISSING
        checks: Any = _MISSING
        if spec is not _MISSING:
            backends = _static_fixture(metafunc, "backends", {"impl": spec})
            checks = _static_fixture(metafunc, "checks", {"impl": spec})
        if _MISSING in (spec, backends, checks):
            names = list(ATTENTION_CHECKS)
            metafunc.parametrize("backend, check", [pytest.param(None, n, id=n) for n in names])
            return
        params = []
        for backend, name in yield_contract(spec, backends, checks):
            marks = [pytest.mark.attnkit_contract(spec=spec.name, plugin=spec.plugin, backend=backend, check=name)]
            reason = expected_failure(spec, backend, name)
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(backend, name, id=f"{backend}-{name}", marks=marks))
        metafunc.parametrize("backend, check", params)

    def test_contract(
        self, impl: Any, backends: Any, checks: Any, backend: str | None, check: str, contract_case: ContractCase
    ) -> None:
        from attnkit_contract.checks import ATTENTION_CHECKS
        from attnkit_contract.runner import check_spec

        if backend is not None:
            ATTENTION_CHECKS[check](impl, backend, contract_case)
            return
        if checks is not None and check not in checks:
            pytest.skip(f"{check} is not in this class's `checks` fixture")
        # Backends were not known at collection: run them all here, strict xfails included.
        results = check_spec(impl, backends, [check], case=contract_case)
        if results and all(r.outcome == "skipped" for r in results):
            pytest.skip("; ".join(f"{r.backend}: {r.message}" for r in results))
        xfails = [r for r in results if r.outcome == "xfail"]
        if xfails:
            pytest.xfail("; ".join(f"{r.backend}: {r.message}" for r in xfails))
