"""Running the checks outside a pytest parametrisation: :func:`check_spec` (like
scikit-learn's ``check_estimator``) and :func:`run` (the installed-spec suite in-process, what
``attnkit check PLUGIN`` calls).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = ["CheckResult", "ContractFailure", "check_spec", "expected_failure", "resolve_plugin", "run"]


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one ``(spec, backend, check)``.

    :param outcome: ``passed``, ``skipped``, ``xfail`` (failed as the spec expects),
        ``failed``, or ``xpass`` (passed although listed in ``expected_failed_checks``: a
        failure, as with ``xfail(strict=True)``).
    :param message: the skip reason, the expected-failure reason or the assertion message.
    """

    spec: str
    backend: str
    check: str
    outcome: str
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("passed", "skipped", "xfail")

    @property
    def id(self) -> str:
        return f"{self.spec}.{self.backend}-{self.check}"


class ContractFailure(AssertionError):
    """Raised by :func:`check_spec` when a check fails; ``results`` holds every outcome."""

    def __init__(self, message: str, results: list[CheckResult]) -> None:
        super().__init__(message)
        self.results = results


def expected_failure(spec: Any, backend: str, check: str) -> str | None:
    """The reason ``spec.expected_failed_checks`` gives for ``check`` under ``backend``
    (key ``"backend:check"`` first, then ``"check"``), or ``None``."""
    expected = getattr(spec, "expected_failed_checks", None) or {}
    for key in (f"{backend}:{check}", check):
        if key in expected:
            return str(expected[key])
    return None


def check_spec(
    spec: Any,
    backends: Sequence[str] | None = None,
    checks: Sequence[str] | None = None,
    *,
    case: Any = None,
    raise_on_failure: bool = True,
    profile: str | None = None,
) -> list[CheckResult]:
    """Run every contract check on ``spec`` and report each outcome.

    :param spec: an :class:`~attnkit.AttentionSpec`, or the name of an installed one.
    :param backends: only these backends (default: all of the spec's).
    :param checks: only these check names (default: all of :data:`ATTENTION_CHECKS`).
    :param case: a :class:`~attnkit_contract.harness.ContractCase` (default: from the
        environment).
    :param raise_on_failure: raise :class:`ContractFailure` (an ``AssertionError``) listing
        every failed or unexpectedly passing check.
    :param profile: ``quick``, ``full`` or ``rest`` (default: ``ATTNKIT_CONTRACT_PROFILE``,
        else ``full``; see :mod:`attnkit_contract.profiles`).
    :returns: one :class:`CheckResult` per ``(backend, check)`` the profile runs.

    .. versionadded:: 0.1
    """
    from attnkit_contract.checks import ATTENTION_CHECKS, yield_contract

    if isinstance(spec, str):
        import attnkit

        spec = attnkit.get_spec(spec, "attention")
    results = []
    for backend, name in yield_contract(spec, backends, checks, profile=profile):
        xfail_reason = expected_failure(spec, backend, name)
        try:
            ATTENTION_CHECKS[name](spec, backend, case)
        except pytest.skip.Exception as exc:
            results.append(CheckResult(spec.name, backend, name, "skipped", str(exc.msg)))
            continue
        except Exception as exc:  # a crash in a kernel is as much a contract failure as a wrong value
            message = str(exc) if isinstance(exc, AssertionError) else f"{type(exc).__name__}: {exc}"
            outcome = "xfail" if xfail_reason is not None else "failed"
            results.append(
                CheckResult(spec.name, backend, name, outcome, xfail_reason if xfail_reason is not None else message)
            )
            continue
        if xfail_reason is not None:
            results.append(
                CheckResult(spec.name, backend, name, "xpass", f"expected to fail ({xfail_reason}) but passed")
            )
        else:
            results.append(CheckResult(spec.name, backend, name, "passed"))
    bad = [r for r in results if not r.ok]
    if bad and raise_on_failure:
        lines = [f"{r.id} {r.outcome.upper()}: {r.message}" for r in bad]
        raise ContractFailure(f"{len(bad)} of {len(results)} contract checks failed:\n" + "\n".join(lines), results)
    return results


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_plugin(plugin: str) -> set[str]:
    """The ``spec.plugin`` values (distribution names) that ``plugin`` designates.

    Accepts a distribution name (``attnkit-neighborhood``), its import or entry-point name
    (``attnkit_neighborhood``, ``neighborhood``), or ``attnkit`` for the built-ins.

    :raises ValueError: no installed plugin has that name; the message lists them, and a
        plugin that failed to load is reported with its error.
    """
    from attnkit.plugins import get_plugins

    want = _canonical(plugin)
    infos = get_plugins()
    matched = []
    for info in infos:
        names = {info.name, info.distribution or "", info.module or ""}
        if any(n and _canonical(n) in (want, f"attnkit-{want}") for n in names):
            matched.append(info)
    broken = [i for i in matched if i.error is not None]
    working = [i for i in matched if i.error is None]
    if not working:
        if broken:
            raise ValueError(f"plugin {plugin!r} is installed but failed to load: {broken[0].error}")
        have = sorted({i.distribution or i.name for i in infos})
        raise ValueError(f"no installed attnkit plugin is called {plugin!r}; installed: {', '.join(have) or 'none'}")
    return {i.distribution or i.name for i in working}


def run(
    plugin: str | None = None,
    pytest_args: Sequence[str] = (),
    *,
    profile: str | None = None,
    progress: bool = False,
) -> int:
    """Run the contract suite over installed specs with pytest, in-process.

    :param plugin: only the specs of this plugin (see :func:`resolve_plugin`); ``None`` runs
        every installed spec.
    :param pytest_args: extra pytest arguments (``-x``, ``-k numba``, ``-q`` ...).
    :param profile: ``quick``, ``full`` or ``rest`` (:mod:`attnkit_contract.profiles`);
        default ``ATTNKIT_CONTRACT_PROFILE``, else ``full``.
    :param progress: print one line per check (spec, backend, check, result, seconds) and a
        summary naming what the profile left out, instead of pytest's own output.
    :returns: pytest's exit code (0 when every check passed, was skipped or xfailed).
    :raises ValueError: ``plugin`` is not installed (the message lists what is).

    .. versionadded:: 0.1
    .. versionchanged:: 0.2 ``profile`` and ``progress``.
    """
    from attnkit_contract import profiles

    args = ["--pyargs", "attnkit_contract.installed", "-p", "no:cacheprovider"]
    dists = None
    if plugin is not None:
        dists = resolve_plugin(plugin)  # fail before pytest starts, with the list of installed plugins
        args += ["--attnkit-plugin", plugin]
    if profile is not None:
        if profile not in profiles.PROFILES:
            raise ValueError(f"profile must be one of {', '.join(profiles.PROFILES)}, got {profile!r}")
        args += ["--attnkit-profile", profile]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        # Without autoload the pytest11 entry point is not read; name the plugin module.
        args += ["-p", "attnkit_contract.plugin"]
    if not progress:
        return int(pytest.main([*args, *pytest_args]))
    from attnkit_contract.progress import ProgressReport

    # pytest captures fd 1 while it runs: write the progress to a duplicate taken now.
    stream = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        report = ProgressReport(stream, plugin=plugin, dists=dists, profile=profile or profiles.current_profile())
        return int(pytest.main([*args, "-p", "no:terminal", *pytest_args], plugins=[report]))
    finally:
        stream.close()


def spec_check_params(
    specs: Any, kind: str, checks: Any, backend: str, caller: str, applies: Mapping[str, Any] | None = None
) -> list[Any]:
    """``pytest.param((spec, check_function))`` for every spec of ``kind`` and every check the
    contract profile runs (:mod:`attnkit_contract.profiles`), with ids ``<spec>-<check>``, the
    ``attnkit_contract`` marker, and strict xfails from the spec's ``expected_failed_checks``
    (filed under ``backend``). Module, cache and analysis contracts share it.

    :param applies: check name -> ``(spec) -> bool``: a check whose rule says False does not
        apply to the spec (from what it declares) and is not generated.
    :raises TypeError: naming ``caller`` for a spec of another kind.
    """
    from attnkit_contract import profiles

    params = []
    for spec in specs:
        if getattr(spec, "kind", None) != kind:
            raise TypeError(f"{caller} takes {kind} specs, got {spec!r}")
        for name, fn in checks.items():
            rule = (applies or {}).get(name)
            if rule is not None and not rule(spec):
                continue
            left_out = profiles.included(spec, None, name)
            if left_out is not None:
                profiles.record_left_out(spec, None, name, left_out)
                continue
            marks: list[Any] = [
                pytest.mark.attnkit_contract(spec=spec.name, plugin=spec.plugin, backend=backend, check=name)
            ]
            reason = expected_failure(spec, backend, name)
            if reason is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=reason))
            params.append(pytest.param(spec, fn, id=f"{spec.name}-{name}", marks=marks))
    return params
