"""CachePolicy storage, eviction and scoring, driven directly with random tensors; every
expectation is recomputed by brute force from the appended tensors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from attnkit.cache import (
    CachePolicy,
    FullPolicy,
    LayerState,
    SinkWindowParams,
    SinkWindowPolicy,
    WindowParams,
    WindowPolicy,
    query_probabilities,
    resolve_budget,
)

B, HKV, D = 2, 3, 4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny tensors gain nothing from intra-op threads; on a loaded machine they cost ~100x
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _kv(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, HKV, t, D, generator=g, dtype=torch.float64), torch.randn(
        B, HKV, t, D, generator=g, dtype=torch.float64
    )


def _drive(policy: CachePolicy, prompt: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``prompt`` tokens then ``steps`` single tokens into layer 0; returns every
    appended key and value, (B, Hkv, prompt + steps, D), for brute-force comparison."""
    k, v = _kv(prompt, 0)
    ks, vs = [k], [v]
    policy.append(0, k, v)
    for s in range(steps):
        k, v = _kv(1, s + 1)
        ks.append(k)
        vs.append(v)
        policy.append(0, k, v)
    return torch.cat(ks, dim=2), torch.cat(vs, dim=2)


def _assert_storage_matches(policy: CachePolicy, all_k: torch.Tensor, all_v: torch.Tensor) -> None:
    """Every kept slot holds exactly the key/value appended at its position."""
    state = policy.layers[0]
    for b in range(B):
        for h in range(HKV):
            pos = state.positions[b, h]
            real = pos[pos >= 0]
            assert torch.equal(state.keys[b, h, : len(real)], all_k[b, h, real])
            assert torch.equal(state.values[b, h, : len(real)], all_v[b, h, real])
            assert real.tolist() == sorted(real.tolist())


# ---------------------------------------------------------------------------- budgets / params
@pytest.mark.parametrize("bad", [0, -1, 0.0, -0.5, 1.5, float("nan"), float("inf")])
def test_bad_budget_value_names_budget(bad: float) -> None:
    with pytest.raises(ValueError, match="budget"):
        WindowParams(budget=bad)
    with pytest.raises(ValueError, match="budget"):
        WindowPolicy(bad)


@pytest.mark.parametrize("bad", ["8", None, True, [4]])
def test_bad_budget_type_names_budget(bad: object) -> None:
    with pytest.raises(TypeError, match="budget"):
        WindowParams(budget=bad)  # type: ignore[arg-type]


def test_resolve_budget_closed_form() -> None:
    assert resolve_budget(7, 100) == 7
    assert resolve_budget(0.25, 32) == 8
    assert resolve_budget(0.2, 13) == 2  # floor(2.6)
    assert resolve_budget(0.01, 10) == 1  # never below one token
    assert resolve_budget(1.0, 9) == 9
    with pytest.raises(ValueError, match="prompt_length"):
        resolve_budget(0.5, 0)


def test_sink_window_params_validate() -> None:
    with pytest.raises(ValueError, match="n_sink"):
        SinkWindowParams(budget=4, n_sink=4)
    with pytest.raises(ValueError, match="n_sink"):
        SinkWindowParams(budget=8, n_sink=-1)
    with pytest.raises(TypeError, match="n_sink"):
        SinkWindowParams(budget=8, n_sink=2.0)  # type: ignore[arg-type]
    # a ratio that resolves to <= n_sink tokens is refused when the prompt arrives
    policy = SinkWindowPolicy(0.25, n_sink=4)
    with pytest.raises(ValueError, match="n_sink"):
        policy.append(0, *_kv(16, 0))


def test_aggregation_validated() -> None:
    with pytest.raises(ValueError, match="aggregation"):
        WindowPolicy(4, aggregation="sum")


def test_params_module_imports_no_torch() -> None:
    code = "import sys, attnkit.cache.params, attnkit.default_plugins.caches; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_builtin_specs_registered() -> None:
    from attnkit import load_plugins, registry

    load_plugins()
    names = {s.name for s in registry.cache_specs()}
    assert {"full", "window", "sink_window"} <= names
    from attnkit.cache import build_policy

    assert isinstance(build_policy("full"), FullPolicy)
    w = build_policy("window", budget=5)
    assert isinstance(w, WindowPolicy) and w.budget == 5
    s = build_policy("sink_window", budget=9, n_sink=2)
    assert isinstance(s, SinkWindowPolicy) and s.n_sink == 2
    with pytest.raises(TypeError, match="unknown parameter"):
        build_policy("window", window=3)


# ---------------------------------------------------------------------------- eviction
def test_full_keeps_everything() -> None:
    policy = FullPolicy()
    all_k, all_v = _drive(policy, 5, 4)
    assert policy.kept_positions(0)[0, 0].tolist() == list(range(9))
    _assert_storage_matches(policy, all_k, all_v)


@pytest.mark.parametrize("budget", [1, 3, 6, 20])
def test_window_keeps_last_budget(budget: int) -> None:
    policy = WindowPolicy(budget)
    all_k, all_v = _drive(policy, 6, 5)
    want = list(range(max(0, 11 - budget), 11))
    for row in policy.kept_positions(0).reshape(-1, policy.stored_length()):
        assert row.tolist() == want
    # Every row keeps the same last ``budget`` positions, so no key returned is padding, and
    # the policy says so with None (no mask for the attention to apply), not an all-True mask.
    assert bool((policy.key_positions(0) >= 0).all())
    assert policy.key_padding_mask(0) is None
    _assert_storage_matches(policy, all_k, all_v)


def test_append_returns_kept_plus_new_then_evicts() -> None:
    """The step attends to the previous kept set plus the new token; storage then shrinks."""
    policy = WindowPolicy(4)
    policy.append(0, *_kv(6, 0))
    assert policy.stored_length() == 4
    k_new, v_new = _kv(1, 9)
    before = policy.layers[0].keys.clone()
    before_v = policy.layers[0].values.clone()
    k, v = policy.append(0, k_new, v_new)
    assert k.shape == (B, HKV, 5, D)
    assert torch.equal(k, torch.cat([before, k_new], dim=2))
    assert torch.equal(v, torch.cat([before_v, v_new], dim=2))
    assert policy.key_positions(0)[0, 0].tolist() == [2, 3, 4, 5, 6]
    assert policy.kept_positions(0)[0, 0].tolist() == [3, 4, 5, 6]


def test_sink_window_keeps_sinks_and_recent() -> None:
    policy = SinkWindowPolicy(7, n_sink=3)
    all_k, all_v = _drive(policy, 10, 6)
    assert policy.kept_positions(0)[1, 2].tolist() == [0, 1, 2, 12, 13, 14, 15]
    assert policy.always_kept(16, 7) == [0, 1, 2, 12, 13, 14, 15]
    _assert_storage_matches(policy, all_k, all_v)


class _RaggedPolicy(CachePolicy):
    """KV head 0 keeps all history (a 'retrieval head'), the others a short window."""

    def __init__(self, window: int) -> None:
        super().__init__(window)
        self.window = window

    def head_budgets(self, state: LayerState) -> torch.Tensor:
        budgets = torch.full((state.keys.shape[1],), self.window, dtype=torch.int64)
        budgets[0] = state.seen
        return budgets


def test_ragged_heads_padded_and_masked() -> None:
    policy = _RaggedPolicy(2)
    all_k, all_v = _drive(policy, 4, 3)
    pos = policy.kept_positions(0)
    assert pos.shape == (B, HKV, 7)
    assert pos[0, 0].tolist() == list(range(7))
    assert pos[0, 1].tolist() == [5, 6, -1, -1, -1, -1, -1]
    assert policy.kept_counts(0).tolist() == [[7, 2, 2], [7, 2, 2]]
    _assert_storage_matches(policy, all_k, all_v)
    # the next step returns padded rows with padding in the middle, which the mask marks
    policy.append(0, *_kv(1, 50))
    mask = policy.key_padding_mask(0)
    assert mask is not None and mask.shape == (B, HKV, 8)
    assert mask[0, 1].tolist() == [True, True, False, False, False, False, False, True]
    assert policy.key_positions(0)[0, 1].tolist() == [5, 6, -1, -1, -1, -1, -1, 7]


def test_ties_go_to_earlier_tokens() -> None:
    class Flat(CachePolicy):
        def scores(self, state: LayerState) -> torch.Tensor:
            return torch.zeros(state.positions.shape, dtype=torch.float64)

    policy = Flat(3)
    policy.append(0, *_kv(6, 0))
    assert policy.kept_positions(0)[0, 0].tolist() == [0, 1, 2]


def test_reset_and_reorder() -> None:
    policy = WindowPolicy(3)
    all_k, _ = _drive(policy, 4, 2)
    policy.reorder(torch.tensor([1, 1, 0]))
    assert policy.layers[0].keys.shape[0] == 3
    assert torch.equal(policy.layers[0].keys[0], all_k[1, :, 3:6])
    policy.reset()
    assert policy.nbytes() == 0 and policy.seen() == 0 and policy.layers == {}


def test_bad_inputs_raise_with_shapes() -> None:
    policy = WindowPolicy(3)
    with pytest.raises(ValueError, match=r"\(B, Hkv, T, D\)"):
        policy.append(0, torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(TypeError, match="tensors"):
        policy.append(0, [1], [2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before any append"):
        policy.observe(0, torch.zeros(B, 6, 1, D), 0.5)
    policy.append(0, *_kv(4, 0))
    with pytest.raises(ValueError, match="multiple of Hkv=3"):
        policy.observe(0, torch.zeros(B, 4, 1, D), 0.5)
    with pytest.raises(ValueError, match=r"\(B, Hkv, D\)"):
        policy.append(0, torch.zeros(1, HKV, 1, D), torch.zeros(1, HKV, 1, D))


def test_query_probabilities_equal_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(B, 6, 5, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, HKV, 7, D, generator=g, dtype=torch.float64)
    kpos = torch.tensor([0, 1, 2, 3, -1, 5, 6]).expand(B, HKV, 7)
    qpos = torch.arange(2, 7)
    got = torch.cat([p for _, p in query_probabilities(q, k, kpos, qpos, 0.3, chunk=2, dtype=torch.float64)], dim=3)
    for b in range(B):
        for hq in range(6):
            h = hq // 2
            for i, qp in enumerate(qpos.tolist()):
                allowed = [j for j in range(7) if 0 <= int(kpos[b, h, j]) <= qp]
                logits = torch.tensor([float(q[b, hq, i] @ k[b, h, j]) * 0.3 for j in allowed], dtype=torch.float64)
                want = torch.zeros(7, dtype=torch.float64)
                want[allowed] = torch.softmax(logits, 0)
                torch.testing.assert_close(got[b, h, hq % 2, i], want, atol=1e-12, rtol=0)
