"""The cache contract on the built-in policies, and proof that each check catches the bug it
is for (a broken policy must fail it)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from attnkit import load_plugins, registry
from attnkit.cache import CachePolicy, LayerState, SinkWindowPolicy, WindowParams, WindowPolicy
from attnkit.registry import KVCacheSpec
from attnkit_contract.cache_checks import (
    CACHE_CHECKS,
    cache_contract_params,
    check_cache_always_kept,
    check_cache_batch_independence,
    check_cache_budget_respected,
    check_cache_full_budget_equals_full,
    check_cache_memory_shrinks,
    check_cache_reset,
    parametrize_with_cache_contract,
)

load_plugins()
BUILTIN = [registry.get(n, kind="cache") for n in ("full", "window", "sink_window")]


@parametrize_with_cache_contract(BUILTIN)
def test_builtin_cache_contract(spec: Any, check: Any) -> None:
    check(spec)


def _spec(name: str, policy_class: type, **kwargs: Any) -> KVCacheSpec:
    return KVCacheSpec(name=name, params=WindowParams, factory=lambda p: policy_class(p.budget, **kwargs))


class _NeverEvicts(WindowPolicy):
    def select(self, state: LayerState) -> torch.Tensor | None:
        return None


class _BatchSummed(CachePolicy):
    """The H2O trap: one score per key summed over the batch, so sequences pick each other's keys."""

    def scores(self, state: LayerState) -> torch.Tensor:
        return state.keys.norm(dim=-1).sum(dim=0, keepdim=True).expand(state.positions.shape).to(torch.float64)


class _LosesSinks(SinkWindowPolicy):
    def forced(self, state: LayerState) -> torch.Tensor | None:
        return None


class _SticksAfterReset(WindowPolicy):
    def reset(self) -> None:
        pass


class _ShiftsValues(WindowPolicy):
    """Returns values one slot off: wrong even when nothing is evicted."""

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().append(layer_idx, key, value)
        return k, v.roll(1, dims=2)


@pytest.mark.parametrize(
    ("spec", "check", "message"),
    [
        (_spec("never_evicts", _NeverEvicts), check_cache_budget_respected, "holds"),
        (_spec("never_evicts", _NeverEvicts), check_cache_memory_shrinks, "bytes"),
        (_spec("batch_summed", _BatchSummed), check_cache_batch_independence, "sequence"),
        (_spec("loses_sinks", _LosesSinks, n_sink=2), check_cache_always_kept, "always-kept"),
        (_spec("sticks", _SticksAfterReset), check_cache_reset, "reset"),
        (_spec("shifts", _ShiftsValues), check_cache_full_budget_equals_full, "full attention"),
    ],
    ids=["budget", "memory", "batch", "always_kept", "reset", "full"],
)
def test_checks_catch_bugs(spec: KVCacheSpec, check: Any, message: str) -> None:
    with pytest.raises((AssertionError, ValueError), match=message):
        check(spec)


def test_params_ids_and_xfails() -> None:
    spec = KVCacheSpec(
        name="xf",
        params=WindowParams,
        factory="attnkit.cache.builtin:build_window",
        expected_failed_checks={"cache:check_cache_reset": "known"},
    )
    params = cache_contract_params([spec])
    assert [p.id for p in params] == [f"xf-{n}" for n in CACHE_CHECKS]
    marks = {p.id: [m.name for m in p.marks] for p in params}
    assert "xfail" in marks["xf-check_cache_reset"] and "xfail" not in marks["xf-check_cache_always_kept"]
    with pytest.raises(TypeError, match="cache specs"):
        cache_contract_params([registry.get("dense")])
    with pytest.raises(TypeError, match="KVCacheSpec"):
        check_cache_reset(registry.get("dense"))
