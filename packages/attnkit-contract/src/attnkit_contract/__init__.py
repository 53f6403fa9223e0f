"""attnkit-contract: the checks every attnkit plugin must pass (attention kernels, modules,
cache policies, analyses).

Two ways in, as fsspec's abstract tests and scikit-learn's ``parametrize_with_checks``:

* :class:`AttentionContract`, a mixin of tests; a plugin overrides its ``impl`` fixture;
* :func:`parametrize_with_contract` over specs, with ``expected_failed_checks`` as strict
  xfails; :func:`check_spec` outside pytest; :func:`run` for the installed-spec suite.

The names load lazily so the pytest plugin (:mod:`attnkit_contract.plugin`), imported by every
pytest run, does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnkit_contract.analysis_checks import ANALYSIS_CHECKS, parametrize_with_analysis_contract
    from attnkit_contract.cache_checks import CACHE_CHECKS, parametrize_with_cache_contract
    from attnkit_contract.checks import ATTENTION_CHECKS
    from attnkit_contract.harness import DEFAULT_TOLERANCES, ContractCase
    from attnkit_contract.mixin import AttentionContract
    from attnkit_contract.module_checks import MODULE_CHECKS, parametrize_with_module_contract
    from attnkit_contract.parametrize import parametrize_with_contract
    from attnkit_contract.runner import CheckResult, ContractFailure, check_spec, run

__all__ = [
    "ANALYSIS_CHECKS",
    "ATTENTION_CHECKS",
    "CACHE_CHECKS",
    "DEFAULT_TOLERANCES",
    "MODULE_CHECKS",
    "AttentionContract",
    "CheckResult",
    "ContractCase",
    "ContractFailure",
    "check_spec",
    "parametrize_with_analysis_contract",
    "parametrize_with_cache_contract",
    "parametrize_with_contract",
    "parametrize_with_module_contract",
    "run",
]

_WHERE = {
    "ANALYSIS_CHECKS": "attnkit_contract.analysis_checks",
    "parametrize_with_analysis_contract": "attnkit_contract.analysis_checks",
    "ATTENTION_CHECKS": "attnkit_contract.checks",
    "DEFAULT_TOLERANCES": "attnkit_contract.harness",
    "ContractCase": "attnkit_contract.harness",
    "AttentionContract": "attnkit_contract.mixin",
    "parametrize_with_contract": "attnkit_contract.parametrize",
    "MODULE_CHECKS": "attnkit_contract.module_checks",
    "CACHE_CHECKS": "attnkit_contract.cache_checks",
    "parametrize_with_cache_contract": "attnkit_contract.cache_checks",
    "parametrize_with_module_contract": "attnkit_contract.module_checks",
    "CheckResult": "attnkit_contract.runner",
    "ContractFailure": "attnkit_contract.runner",
    "check_spec": "attnkit_contract.runner",
    "run": "attnkit_contract.runner",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("attnkit-contract")
        except PackageNotFoundError:
            return "0.1.0"
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnkit_contract' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
