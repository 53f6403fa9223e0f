"""H2O: heavy-hitter selection against a naive per-sequence recomputation, reductions to the
window and full policies, the planted heavy hitter, and the cache contract."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from attnkit.cache import AttnkitCache, FullPolicy, WindowPolicy
from attnkit.testing import torch_threads
from attnkit_sinklora.h2o import SCORE, H2OPolicy, build
from attnkit_sinklora.h2o_params import H2OParams, split_budget

B, HKV, G, D = 2, 2, 2, 8
HQ = HKV * G


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _step_inputs(t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, t, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, HKV, t, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, HKV, t, D, generator=g, dtype=torch.float64)
    return q, k, v


def _naive(
    prompt: int, steps: int, budget: int, heavy_ratio: float, aggregation: str, scale: float
) -> list[list[list[list[int]]]]:
    """Kept positions [step][b][h] by a direct transcription of H2O: per sequence and KV head,
    scores[p] += agg over the group of the attention token p got from this step's queries;
    keep the `recent` newest plus the `heavy` best-scored older tokens (ties: earlier)."""
    heavy, recent = split_budget(budget, heavy_ratio)
    all_q, all_k = [], []
    for i, t in enumerate([prompt] + [1] * steps):
        q, k, _ = _step_inputs(t, i)
        all_q.append(q)
        all_k.append(k)
    q_cat, k_cat = torch.cat(all_q, 2), torch.cat(all_k, 2)
    history = []
    kept = [[[] for _ in range(HKV)] for _ in range(B)]
    score = [[{} for _ in range(HKV)] for _ in range(B)]
    seen = 0
    for t in [prompt] + [1] * steps:
        new = list(range(seen, seen + t))
        seen += t
        for b in range(B):
            for h in range(HKV):
                cand = kept[b][h] + new
                for p in new:
                    score[b][h][p] = 0.0
                per_g = []
                for gq in range(G):
                    acc = dict.fromkeys(cand, 0.0)
                    for qp in new:
                        vis = [p for p in cand if p <= qp]
                        logits = torch.stack([q_cat[b, h * G + gq, qp] @ k_cat[b, h, p] * scale for p in vis])
                        for p, a in zip(vis, torch.softmax(logits, 0).tolist()):
                            acc[p] += a
                    per_g.append(acc)
                for p in cand:
                    vals = [acc[p] for acc in per_g]
                    score[b][h][p] += sum(vals) / G if aggregation == "mean" else max(vals)
                if len(cand) > budget:
                    rec = [p for p in cand if p >= seen - recent]
                    old = [p for p in cand if p < seen - recent]
                    best = sorted(old, key=lambda p: (-score[b][h][p], p))[:heavy]
                    cand = sorted(rec + best)
                    score[b][h] = {p: score[b][h][p] for p in cand}
                kept[b][h] = cand
        history.append([[list(kept[b][h]) for h in range(HKV)] for b in range(B)])
    return history


@pytest.mark.parametrize(
    ("budget", "heavy_ratio", "aggregation"), [(6, 0.5, "mean"), (5, 0.6, "max"), (4, 1.0, "mean")]
)
def test_selection_equals_naive_recomputation(budget: int, heavy_ratio: float, aggregation: str) -> None:
    prompt, steps, scale = 9, 6, 0.7
    want = _naive(prompt, steps, budget, heavy_ratio, aggregation, scale)
    policy = H2OPolicy(budget, heavy_ratio=heavy_ratio, aggregation=aggregation)
    for i, t in enumerate([prompt] + [1] * steps):
        q, k, v = _step_inputs(t, i)
        policy.append(0, k, v)
        policy.observe(0, q, scale)
        got = [[[int(p) for p in row if p >= 0] for row in seq] for seq in policy.kept_positions(0)]
        assert got == want[i], f"step {i}"
        state = policy.layers[0]
        assert state.extra[SCORE].shape == state.pbuf.shape
        assert state.extra_view(SCORE).dtype == torch.float64  # float64 inputs keep float64 scores


def test_heavy_zero_equals_window() -> None:
    h2o, window = H2OPolicy(5, heavy_ratio=0.0), WindowPolicy(5)
    for i, t in enumerate([8, 1, 1, 1, 1]):
        q, k, v = _step_inputs(t, i)
        h2o.append(0, k, v)
        h2o.observe(0, q, 0.5)
        window.append(0, k, v)
        window.observe(0, q, 0.5)
        assert torch.equal(h2o.kept_positions(0), window.kept_positions(0))
        # the same slots too: the one freed is the one the next token takes
        assert torch.equal(h2o.layers[0].positions, window.layers[0].positions)
        assert torch.equal(h2o.layers[0].keys, window.layers[0].keys)


def test_planted_heavy_hitter_survives() -> None:
    """Key 2 of sequence 1 aligns with every query; it outlives the window, others do not."""
    policy = H2OPolicy(4, heavy_ratio=0.5)
    direction = torch.ones(D, dtype=torch.float64)
    for i, t in enumerate([6] + [1] * 8):
        q, k, v = _step_inputs(t, 100 + i)
        q = q + 3.0 * direction
        if i == 0:
            k[1, :, 2] = 4.0 * direction
        policy.append(0, k, v)
        policy.observe(0, q, D**-0.5)
    kept = policy.kept_positions(0)
    assert all(2 in kept[1, h].tolist() for h in range(HKV))
    # it outscores the rest: most queries put most of their attention on it
    state = policy.layers[0]
    scores = state.extra_view(SCORE)[1, 0].masked_fill(state.positions[1, 0] < 0, float("-inf"))
    assert int(state.positions[1, 0, int(scores.argmax())]) == 2
    # a window of the same budget has dropped it long ago
    assert policy.seen(0) - 4 > 2


def test_budget_covers_sequence_equals_full_model() -> None:
    from attnkit_contract.cache_checks import tiny_llama

    model = tiny_llama()
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    outs = []
    for policy in (FullPolicy(), H2OPolicy(64), H2OPolicy(1.0)):
        cache = AttnkitCache(policy, config=model.config)
        with torch.no_grad():
            outs.append(model(ids, cache=cache, use_cache=True).logits)
            outs.append(model(ids[:, :1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(outs[2], outs[0], atol=0, rtol=0)
    torch.testing.assert_close(outs[3], outs[1], atol=0, rtol=0)
    torch.testing.assert_close(outs[4], outs[0], atol=0, rtol=0)


def test_h2o_in_generate_keeps_budget_and_refuses_a_step_nobody_observed() -> None:
    from attnkit_contract.cache_checks import tiny_llama

    model = tiny_llama()
    ids = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(2))
    cache = AttnkitCache(H2OPolicy(0.25), config=model.config)
    with torch.no_grad():
        model.generate(
            ids, attention_mask=torch.ones_like(ids), cache=cache, max_new_tokens=5, do_sample=False, pad_token_id=0
        )
    assert cache.policy.resolved_budget(0) == 5
    assert int(cache.policy.kept_counts(0).max()) == 5
    assert float(cache.policy.layers[0].extra[SCORE].sum()) > 0
    # a caller that never observes would evict on scores that never saw its queries: refused
    policy = H2OPolicy(3)
    _, k, v = _step_inputs(5, 0)
    policy.append(0, k, v)
    _, k, v = _step_inputs(1, 1)
    with pytest.raises(RuntimeError, match="observe\\(\\) was not called"):
        policy.append(0, k, v)


def test_params_validate() -> None:
    assert build(H2OParams(budget=8, heavy_ratio=0.25)).split(8) == (2, 6)
    with pytest.raises(ValueError, match="heavy_ratio"):
        H2OParams(heavy_ratio=1.5)
    with pytest.raises(TypeError, match="heavy_ratio"):
        H2OParams(heavy_ratio="half")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aggregation"):
        H2OParams(aggregation="sum")
    with pytest.raises(ValueError, match="budget"):
        H2OParams(budget=0)
    with pytest.raises(TypeError, match="H2OParams"):
        build({"budget": 3})
    with pytest.raises(ValueError, match="chunk"):
        H2OPolicy(4, chunk=0)


def test_params_module_imports_no_torch() -> None:
    code = "import sys, attnkit_sinklora.h2o_params; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def _h2o_spec() -> list[object]:
    from attnkit import load_plugins, registry

    load_plugins()
    return [s for s in registry.cache_specs() if s.name == "h2o"]


try:
    from attnkit_contract.cache_checks import parametrize_with_cache_contract

    @parametrize_with_cache_contract(_h2o_spec())
    def test_h2o_cache_contract(spec: object, check: object) -> None:
        check(spec)  # type: ignore[operator]
except ImportError:  # pragma: no cover - attnkit-contract not installed
    pass


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kpos: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
    """Brute-force attention: query at position p sees the slots whose position is in [0, p]."""
    out = torch.zeros(q.shape[0], q.shape[1], q.shape[2], v.shape[-1], dtype=q.dtype)
    for b in range(q.shape[0]):
        for hq in range(q.shape[1]):
            h = hq // G
            for i, p in enumerate(qpos.tolist()):
                ok = [j for j in range(k.shape[2]) if 0 <= int(kpos[b, h, j]) <= p]
                w = torch.softmax(torch.stack([q[b, hq, i] @ k[b, h, j] * 0.4 for j in ok]), 0)
                out[b, hq, i] = sum(wj * v[b, h, j] for wj, j in zip(w, ok))
    return out


def test_output_handed_back_equals_dense_attention() -> None:
    """observe(attend=True) returns the attention it computed while scoring (so the adapter
    skips its kernel): prefill in several query chunks, decode steps into reused slots, and a
    multi-token step after eviction all equal brute-force attention over the returned keys."""
    policy = H2OPolicy(5, heavy_ratio=0.4, chunk=3)
    seen = 0
    for i, t in enumerate([9, 1, 1, 4, 1]):
        q, k, v = _step_inputs(t, 200 + i)
        keys, values = policy.append(0, k, v)
        kpos = policy.key_positions(0).clone()
        out = policy.observe(0, q, 0.4, attend=True)
        assert out is not None and out.shape == (B, HQ, t, D)
        want = _dense(q, keys, values, kpos, torch.arange(seen, seen + t))
        torch.testing.assert_close(out, want, atol=1e-12, rtol=0)
        seen += t
    assert int(policy.kept_counts(0).max()) == 5
    # a caller that runs its own attention gets nothing back
    other = H2OPolicy(5)
    q, k, v = _step_inputs(9, 200)
    other.append(0, k, v)
    assert other.observe(0, q, 0.4) is None


def test_left_padded_batch_through_patch_equals_alone() -> None:
    """H2O through attnkit.patch (dense attention handed back by the policy): a left-padded
    row's scores ignore the padding and its ratio budget counts its real tokens."""
    import attnkit
    from attnkit_contract.cache_checks import tiny_llama

    model = tiny_llama()
    long_ids = torch.randint(3, 128, (1, 14), generator=torch.Generator().manual_seed(8))
    short_ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(9))
    ids = torch.cat([long_ids, torch.cat([torch.zeros(1, 5, dtype=torch.long), short_ids], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0

    def run(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        cache = AttnkitCache(H2OPolicy(0.5), config=model.config)
        with torch.no_grad():
            out = model.generate(
                x, attention_mask=m, cache=cache, max_new_tokens=6, do_sample=False, pad_token_id=0,
                output_logits=True, return_dict_in_generate=True,
            )  # fmt: skip
        return torch.stack(out.logits, dim=1)

    with attnkit.patch(model, "dense"):
        batch = run(ids, mask)
        for i, alone in enumerate((long_ids, short_ids)):
            torch.testing.assert_close(batch[i], run(alone, torch.ones_like(alone))[0], atol=1e-10, rtol=0)
