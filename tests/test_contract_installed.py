"""The contract over every installed attention, module and cache spec (``-k neighborhood.numba``
etc. select; ``--attnkit-plugin NAME`` keeps one plugin's specs)."""

from __future__ import annotations

from typing import Any

from attnkit import load_plugins, registry
from attnkit_contract import (
    parametrize_with_cache_contract,
    parametrize_with_contract,
    parametrize_with_module_contract,
)

load_plugins()


@parametrize_with_contract(registry.attention_specs())
def test_attention_contract(spec: Any, backend: str, check: Any) -> None:
    check(spec, backend)


@parametrize_with_module_contract(registry.module_specs())
def test_module_contract(spec: Any, check: Any) -> None:
    check(spec)


@parametrize_with_cache_contract(registry.cache_specs())
def test_cache_contract(spec: Any, check: Any) -> None:
    check(spec)
