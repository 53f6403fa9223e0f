"""The contract over every installed attention, module, cache and analysis spec, run by :func:`attnkit_contract.run`
(``pytest --pyargs attnkit_contract.installed [--attnkit-plugin NAME]``).
"""

from __future__ import annotations

from typing import Any

from attnkit import load_plugins, registry
from attnkit_contract.analysis_checks import parametrize_with_analysis_contract
from attnkit_contract.cache_checks import parametrize_with_cache_contract
from attnkit_contract.module_checks import parametrize_with_module_contract
from attnkit_contract.parametrize import parametrize_with_contract

load_plugins()

# A kind with no installed spec gets no test: an empty parameter set would show up as a
# skipped "[NOTSET]" test in every run (`attnkit check` of a plugin without analyses, say).

if registry.attention_specs():

    @parametrize_with_contract(registry.attention_specs())
    def test_attention_contract(spec: Any, backend: str, check: Any) -> None:
        check(spec, backend)


if registry.module_specs():

    @parametrize_with_module_contract(registry.module_specs())
    def test_module_contract(spec: Any, check: Any) -> None:
        check(spec)


if registry.cache_specs():

    @parametrize_with_cache_contract(registry.cache_specs())
    def test_cache_contract(spec: Any, check: Any) -> None:
        check(spec)


if registry.analysis_specs():

    @parametrize_with_analysis_contract(registry.analysis_specs())
    def test_analysis_contract(spec: Any, check: Any) -> None:
        check(spec)
