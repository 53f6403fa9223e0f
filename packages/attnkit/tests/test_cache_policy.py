"""CachePolicy storage, eviction and scoring, driven directly with random tensors; every
expectation is recomputed by brute force from the appended tensors. Slots are reused in place,
so storage is compared through each slot's position, never through slot order."""

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
from attnkit.cache.policy import GROW_STEP
from attnkit.testing import torch_threads

B, HKV, D = 2, 3, 4


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _kv(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, HKV, t, D, generator=g, dtype=torch.float64), torch.randn(
        B, HKV, t, D, generator=g, dtype=torch.float64
    )


def _step(policy: CachePolicy, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward's worth for layer 0: append, then what an attention function does next
    (observe, with queries the non-scoring policies ignore)."""
    out = policy.append(0, k, v)
    policy.observe(0, torch.zeros(B, HKV, k.shape[2], D, dtype=k.dtype), 0.5)
    return out


def _drive(policy: CachePolicy, prompt: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill ``prompt`` tokens then ``steps`` single tokens into layer 0; returns every
    appended key and value, (B, Hkv, prompt + steps, D), for brute-force comparison."""
    k, v = _kv(prompt, 0)
    ks, vs = [k], [v]
    _step(policy, k, v)
    for s in range(steps):
        k, v = _kv(1, s + 1)
        ks.append(k)
        vs.append(v)
        _step(policy, k, v)
    return torch.cat(ks, dim=2), torch.cat(vs, dim=2)


def _rows(policy: CachePolicy, layer: int = 0) -> list[list[int]]:
    """Kept positions per (sequence, KV head) row, sorted, without empty slots."""
    pos = policy.kept_positions(layer)
    return [[int(p) for p in row if p >= 0] for row in pos.reshape(-1, pos.shape[-1])]


def _assert_storage_matches(policy: CachePolicy, all_k: torch.Tensor, all_v: torch.Tensor) -> None:
    """Every kept slot holds exactly the key/value appended at its position, each position
    once; kept_positions() is each row's positions sorted."""
    state = policy.layers[0]
    for b in range(B):
        for h in range(HKV):
            pos = state.positions[b, h]
            slots = (pos >= 0).nonzero().flatten()
            real = pos[slots]
            assert torch.equal(state.keys[b, h, slots], all_k[b, h, real])
            assert torch.equal(state.values[b, h, slots], all_v[b, h, real])
            assert len(set(real.tolist())) == len(real)
            kept = policy.kept_positions(0)[b, h]
            assert kept[: len(real)].tolist() == sorted(real.tolist()) and bool((kept[len(real) :] == -1).all())


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
    # ... and so is a row whose real tokens (after left padding) are too few for it
    policy = SinkWindowPolicy(0.25, n_sink=4)
    policy.defer_eviction = True  # as inside an AttnkitCache: the mask comes with observe()
    policy.append(0, *_kv(20, 0))
    mask = torch.ones(B, 1, 20, 20, dtype=torch.bool).tril()
    mask[1, :, :, :6] = False  # row 1: 14 real tokens, 0.25 * 14 -> 3 <= n_sink
    with pytest.raises(ValueError, match="n_sink"):
        policy.observe(0, torch.zeros(B, HKV, 20, D), 0.5, mask)


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
    # decode steps write into spare room (one copy per GROW_STEP tokens, not per token)
    state = policy.layers[0]
    assert state.capacity == 5 + 1 + GROW_STEP and state.hi == 9
    assert policy.key_padding_mask(0) is None


@pytest.mark.parametrize("budget", [1, 3, 6, 20])
def test_window_keeps_last_budget(budget: int) -> None:
    policy = WindowPolicy(budget)
    all_k, all_v = _drive(policy, 6, 5)
    want = list(range(max(0, 11 - budget), 11))
    assert _rows(policy) == [want] * (B * HKV)
    # storage: the budget plus the one slot the next token goes into
    assert policy.layers[0].capacity == budget + 1
    # Every row keeps the same last ``budget`` positions, so no key returned is padding, and
    # the policy says so with None (no mask for the attention to apply), not an all-True mask.
    assert bool((policy.key_positions(0) >= 0).all())
    assert policy.key_padding_mask(0) is None
    _assert_storage_matches(policy, all_k, all_v)


def test_append_returns_kept_plus_new_then_evicts() -> None:
    """The step attends to the previous kept set plus the new token; storage then shrinks,
    and the next token takes the freed slot in place (a ring buffer: no copy, no sort)."""
    policy = WindowPolicy(4)
    _step(policy, *_kv(6, 0))
    assert policy.stored_length() == 4 and policy.kept_counts(0).tolist() == [[4] * HKV] * B
    k_new, v_new = _kv(1, 9)
    before = policy.layers[0].keys.clone()
    before_v = policy.layers[0].values.clone()
    k, v = _step(policy, k_new, v_new)
    assert k.shape == (B, HKV, 5, D)
    assert torch.equal(k, torch.cat([before, k_new], dim=2))
    assert torch.equal(v, torch.cat([before_v, v_new], dim=2))
    assert policy.key_positions(0)[0, 0].tolist() == [2, 3, 4, 5, 6]
    assert _rows(policy)[0] == [3, 4, 5, 6]
    # the next token overwrites the slot of position 2 (slot 0), in the same buffer
    buffer = policy.layers[0].kbuf.data_ptr()
    k_next, _ = _kv(1, 10)
    k, _ = _step(policy, k_next, k_next)
    assert policy.layers[0].kbuf.data_ptr() == buffer
    assert policy.key_positions(0)[0, 0].tolist() == [7, 3, 4, 5, 6]
    assert torch.equal(k[:, :, 0], k_next[:, :, 0]) and policy.key_padding_mask(0) is None
    assert _rows(policy)[0] == [4, 5, 6, 7]


def test_sink_window_keeps_sinks_and_recent() -> None:
    policy = SinkWindowPolicy(7, n_sink=3)
    all_k, all_v = _drive(policy, 10, 6)
    assert _rows(policy)[-1] == [0, 1, 2, 12, 13, 14, 15]
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
    assert policy.kept_positions(0).shape[-1] == policy.stored_length() >= 7
    assert _rows(policy)[0] == list(range(7))
    assert _rows(policy)[1] == [5, 6]
    assert policy.kept_counts(0).tolist() == [[7, 2, 2], [7, 2, 2]]
    _assert_storage_matches(policy, all_k, all_v)
    # the next step returns rows with empty slots, which the mask marks: exactly the slots
    # holding a real key, the new one included
    policy.append(0, *_kv(1, 50))
    mask = policy.key_padding_mask(0)
    pos = policy.key_positions(0)
    assert mask is not None and mask.shape == pos.shape
    assert torch.equal(mask, pos >= 0)
    assert sorted(int(p) for p in pos[0, 1] if p >= 0) == [5, 6, 7]
    assert sorted(int(p) for p in pos[0, 0] if p >= 0) == list(range(8))


def test_ties_go_to_earlier_tokens() -> None:
    class Flat(CachePolicy):
        def scores(self, state: LayerState) -> torch.Tensor:
            return torch.zeros(state.positions.shape, dtype=torch.float64)

    policy = Flat(3)
    _step(policy, *_kv(6, 0))
    assert _rows(policy)[0] == [0, 1, 2]
    # ... also once slots are out of order (the ring): a decode step drops the newest tie
    for s in range(3):
        _step(policy, *_kv(1, 20 + s))
        assert _rows(policy)[0] == [0, 1, 2]


def test_reset_and_reorder() -> None:
    policy = WindowPolicy(3)
    all_k, _ = _drive(policy, 4, 2)
    policy.reorder(torch.tensor([1, 1, 0]))
    state = policy.layers[0]
    assert state.keys.shape[0] == 3
    for h in range(HKV):
        slots = (state.positions[0, h] >= 0).nonzero().flatten()
        assert torch.equal(state.keys[0, h, slots], all_k[1, h, state.positions[0, h, slots]])
        assert sorted(state.positions[0, h, slots].tolist()) == [3, 4, 5]
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


# ---------------------------------------------------------------------------- compress="prompt"
@pytest.mark.parametrize("follow", ["tokens", "chunk"])
def test_compress_prompt_compresses_the_context_once_and_keeps_what_follows(follow: str) -> None:
    """kvpress's setting: the first forward (the context) is cut to the budget, everything
    appended after it (a question, the answer) is kept; "always" evicts it again."""
    once, always = WindowPolicy(4), WindowPolicy(4)
    once.compress = "prompt"
    ks, vs = [], []
    for policy in (once, always):
        k, v = _kv(10, 0)
        ks, vs = [k], [v]
        _step(policy, k, v)
        if follow == "chunk":  # an appended question of 3 tokens, then 2 answer tokens
            chunks = [_kv(3, 1), _kv(1, 2), _kv(1, 3)]
        else:
            chunks = [_kv(1, s + 1) for s in range(5)]
        for k, v in chunks:
            ks.append(k)
            vs.append(v)
            _step(policy, k, v)
    # the context's last 4 (6..9), then all 5 new tokens (10..14)
    assert _rows(once) == [[6, 7, 8, 9, 10, 11, 12, 13, 14]] * (B * HKV)
    assert _rows(always) == [[11, 12, 13, 14]] * (B * HKV)
    _assert_storage_matches(once, torch.cat(ks, dim=2), torch.cat(vs, dim=2))
    # growing after the context does not copy the buffers every step
    assert once.layers[0].capacity >= 9


def test_compress_mode_validated_and_fixed_after_first_use() -> None:
    with pytest.raises(ValueError, match="compress must be one of"):
        WindowPolicy(4, compress="question")
    policy = WindowPolicy(4)
    _step(policy, *_kv(6, 0))
    with pytest.raises(ValueError, match="before the policy's first append"):
        policy.compress = "prompt"
    policy.reset()
    policy.compress = "prompt"
    assert policy.compress == "prompt"


class _Scoring(CachePolicy):
    """A query-observing policy (recency scores; only needs_queries matters here)."""

    needs_queries = True


def test_scoring_policy_refuses_a_step_nobody_observed() -> None:
    policy = _Scoring(4)
    policy.append(0, *_kv(6, 0))
    with pytest.raises(RuntimeError, match="observe\\(\\) was not called for layer 0"):
        policy.append(0, *_kv(1, 1))
    # a non-scoring policy evicts on what it knows (recency needs no queries)
    plain = WindowPolicy(4)
    plain.defer_eviction = True
    plain.append(0, *_kv(6, 0))
    plain.append(0, *_kv(1, 1))
    assert _rows(plain)[0] == [2, 3, 4, 5, 6]
