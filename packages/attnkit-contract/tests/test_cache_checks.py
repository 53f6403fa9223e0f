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
    check_cache_left_padding,
    check_cache_memory_shrinks,
    check_cache_multi_token_after_eviction,
    check_cache_reset,
    parametrize_with_cache_contract,
)

load_plugins()
BUILTIN = [
    registry.get(n, kind="cache")
    for n in ("full", "window", "sink_window", "snapkv", "observed_attention", "key_norm", "adakv")
]


@parametrize_with_cache_contract(BUILTIN)
def test_builtin_cache_contract(spec: Any, check: Any) -> None:
    check(spec)


def _spec(name: str, policy_class: type, **kwargs: Any) -> KVCacheSpec:
    return KVCacheSpec(name=name, params=WindowParams, factory=lambda p: policy_class(p.budget, **kwargs))


class _NeverEvicts(WindowPolicy):
    def select(self, state: LayerState) -> torch.Tensor | None:
        return None


class _SlackTooSmall(WindowPolicy):
    """Never evicts but declares a lag of 2 tokens: a 16-token prompt exceeds any budget + 2."""

    def select(self, state: LayerState) -> torch.Tensor | None:
        return None

    def budget_slack(self) -> int:
        return 2


class _NegativeSlack(WindowPolicy):
    def budget_slack(self) -> int:
        return -1


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


class _PaddingSinks(SinkWindowPolicy):
    """Counts sinks from column 0, so a left-padded row's sinks are its padding (issue 9)."""

    def forced(self, state: LayerState) -> torch.Tensor | None:
        return (state.positions >= 0) & (state.positions < self.n_sink)


class _RatioOfPaddedLength(WindowPolicy):
    """Resolves a ratio budget against the padded length, not the row's real tokens."""

    def on_resolve(self, state: LayerState) -> None:
        budget = self.resolve_budget(state.seen)
        state.row_budget = torch.full_like(state.row_budget, budget)  # type: ignore[arg-type]
        state.budget = budget


class _SeesEvictedKeys(WindowPolicy):
    """Claims every returned slot holds a real key: after eviction the freed slot (whose old
    key is still in memory until the next token overwrites it) stays visible."""

    def key_padding_mask(self, layer_idx: int) -> torch.Tensor | None:
        return None


class _NewTokensFirst(WindowPolicy):
    """Puts a multi-token step's new keys before the kept ones: causality among them (and
    what is attended) breaks, although every single-token step is right."""

    def append(self, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().append(layer_idx, key, value)
        n = key.shape[2]
        if n > 1 and k.shape[2] > n:
            k, v = k.roll(n, dims=2), v.roll(n, dims=2)
            self._view_positions[layer_idx] = self._view_positions[layer_idx].roll(n, dims=2)
        return k, v


class _LayerRagged(CachePolicy):
    """A correct policy whose layers hold different numbers of slots (layer 1 keeps twice the
    budget, as layers with retrieval heads do): transformers sizes its one mask by layer 0."""

    def head_budgets(self, state: LayerState) -> torch.Tensor | None:
        assert state.row_budget is not None
        wide = next(i for i, s in self.layers.items() if s is state) == 1
        return state.row_budget.view(-1, 1) * (2 if wide else 1)


def test_multi_token_check_passes_layer_ragged_storage() -> None:
    check_cache_multi_token_after_eviction(_spec("layer_ragged", _LayerRagged))
    check_cache_left_padding(_spec("layer_ragged", _LayerRagged))


@pytest.mark.parametrize(
    ("spec", "check", "message"),
    [
        (_spec("never_evicts", _NeverEvicts), check_cache_budget_respected, "holds"),
        (_spec("slack_too_small", _SlackTooSmall), check_cache_budget_respected, r"slack 2"),
        (_spec("negative_slack", _NegativeSlack), check_cache_budget_respected, "budget_slack"),
        (_spec("never_evicts", _NeverEvicts), check_cache_memory_shrinks, "bytes"),
        (_spec("batch_summed", _BatchSummed), check_cache_batch_independence, "sequence"),
        (_spec("loses_sinks", _LosesSinks, n_sink=2), check_cache_always_kept, "always-kept"),
        (_spec("sticks", _SticksAfterReset), check_cache_reset, "reset"),
        (_spec("shifts", _ShiftsValues), check_cache_full_budget_equals_full, "full attention"),
        (_spec("padding_sinks", _PaddingSinks, n_sink=2), check_cache_left_padding, "left-padded row 1"),
        (_spec("ratio_of_padded", _RatioOfPaddedLength), check_cache_left_padding, "left-padded row 1"),
        (_spec("sees_evicted", _SeesEvictedKeys), check_cache_multi_token_after_eviction, "question"),
        (_spec("new_first", _NewTokensFirst), check_cache_multi_token_after_eviction, "question"),
    ],
    ids=[
        "budget",
        "budget_slack_exceeded",
        "budget_slack_negative",
        "memory",
        "batch",
        "always_kept",
        "reset",
        "full",
        "left_padding_sinks",
        "left_padding_ratio",
        "multi_token_evicted_visible",
        "multi_token_order",
    ],
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


def test_budget_checks_are_not_generated_for_a_policy_without_budget() -> None:
    # Applicability comes from what the spec declares (no ``budget`` field), not a skip at run time.
    ids = {p.id for p in cache_contract_params([registry.get("full", kind="cache")])}
    budget_checks = {"check_cache_budget_respected", "check_cache_memory_shrinks", "check_cache_params_validate"}
    assert ids == {f"full-{n}" for n in CACHE_CHECKS if n not in budget_checks}
