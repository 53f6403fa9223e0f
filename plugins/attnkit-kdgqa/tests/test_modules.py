"""KDGQA, DGQA and PGQA outputs against the float64 loop reference, and their state."""

from __future__ import annotations

import io
import math

import pytest
import torch
from _kdgqa_bruteforce import brute_kdgqa, brute_round
from _kdgqa_reference import norms_per_sample, project, reference_output

from attnkit.modules import ModuleConfig, MultiHeadAttention, build_module

CFG = ModuleConfig(dim=32, heads=8, kv_heads=4)
CFG_CAUSAL = ModuleConfig(dim=32, heads=8, kv_heads=4, causal=True)


def _module(spec: str, config: ModuleConfig = CFG, seed: int = 0, **params):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return build_module(spec, config, **params).double()


@pytest.mark.parametrize("config", [CFG, CFG_CAUSAL], ids=["encoder", "causal"])
@pytest.mark.parametrize("min_queries", [0, 1])
def test_kdgqa_per_sample_matches_reference(config, min_queries, x64):  # type: ignore[no-untyped-def]
    m = _module("kdgqa", config, min_queries=min_queries).eval()
    with torch.no_grad():
        got = m(x64)
    counts = [brute_kdgqa(n, config.heads, min_queries) for n in norms_per_sample(m, x64)]
    assert m.last_counts.tolist() == counts
    # The samples of x64 (seed 5) get different allocations, so the per-sample path is
    # exercised with and without a floor.
    assert len({tuple(c) for c in counts}) > 1
    # And the floor binds: with min_queries=0 some KV head gets no query head (the path where a
    # KV head is unused), with min_queries=1 the smallest share is exactly one query head.
    assert min(min(c) for c in counts) == min_queries
    want = reference_output(m, x64, counts)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_kdgqa_batch_scope_matches_reference_and_depends_on_batch(x64):  # type: ignore[no-untyped-def]
    m = _module("kdgqa", norm_scope="batch").eval()
    norms = norms_per_sample(m, x64)
    summed = [sum(col) for col in zip(*norms)]
    shared = brute_kdgqa(summed, CFG.heads)
    with torch.no_grad():
        got = m(x64)
        alone = m(x64[:1])
    torch.testing.assert_close(got, reference_output(m, x64, [shared] * 3), atol=1e-10, rtol=1e-10)
    own = brute_kdgqa(norms[0], CFG.heads)
    assert own != shared  # the seed is chosen so that sample 0's own allocation differs
    torch.testing.assert_close(alone, reference_output(m, x64[:1], [own]), atol=1e-10, rtol=1e-10)
    assert not torch.allclose(alone, got[:1])  # the paper's rule: one sample's output depends on the others


def test_kdgqa_sample_scope_is_batch_independent(x64):  # type: ignore[no-untyped-def]
    m = _module("kdgqa").train()  # train mode too: KDGQA has no train/eval difference
    with torch.no_grad():
        full = m(x64)
        for i in range(3):
            torch.testing.assert_close(m(x64[i : i + 1]), full[i : i + 1], atol=1e-12, rtol=1e-12)


def test_zero_query_kv_head_is_unused_and_gets_no_gradient():
    # Two KV heads: min-max gives every query head to the larger-norm one.
    config = ModuleConfig(dim=16, heads=4, kv_heads=2)
    m = _module("kdgqa", config).train()
    x = torch.randn(1, 5, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = m(x)
    counts = m.last_counts.tolist()[0]
    assert sorted(counts) == [0, 4]
    idle = counts.index(0)
    assert torch.isfinite(out).all()
    out.sum().backward()
    d = config.d_head
    rows = slice(idle * d, (idle + 1) * d)
    assert m.k_proj.weight.grad[rows].abs().max() == 0 and m.v_proj.weight.grad[rows].abs().max() == 0
    busy = slice((1 - idle) * d, (2 - idle) * d)
    assert m.k_proj.weight.grad[busy].abs().max() > 0
    torch.testing.assert_close(out, reference_output(m, x, [counts]).to(out.dtype), atol=1e-10, rtol=1e-10)


def test_equal_key_norms_give_static_gqa():
    config = ModuleConfig(dim=16, heads=4, kv_heads=2)
    m = _module("kdgqa", config).eval()
    d = config.d_head
    with torch.no_grad():
        # KV head 1 = KV head 0 with its features permuted: identical norms, distinct keys.
        perm = torch.arange(d).flip(0)
        m.k_proj.weight[d:] = m.k_proj.weight[:d][perm]
        m.k_proj.bias[d:] = m.k_proj.bias[:d][perm]
    x = torch.randn(2, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    norms = norms_per_sample(m, x)
    assert all(math.isclose(a, b, rel_tol=1e-14) for a, b in norms)
    with torch.no_grad():
        got = m(x)
    if m.last_counts.tolist() == [[2, 2], [2, 2]]:
        gqa = MultiHeadAttention(config).double()
        gqa.load_state_dict(m.state_dict())
        torch.testing.assert_close(got, gqa(x), atol=1e-12, rtol=1e-12)
    else:  # last-bit norm differences are a legitimate non-tie; then the rule still holds
        assert m.last_counts.tolist() == [brute_kdgqa(n, 4) for n in norms]
    assert torch.isfinite(got).all()


def _simulate_dgqa(module, batches, form, beta, window):  # type: ignore[no-untyped-def]
    """The DGQA buffer updates in plain Python floats."""
    g, heads = module.config.n_kv_heads, module.config.heads
    cache = [0.0] * g
    counts = [heads // g] * g
    history = []
    for step, x in enumerate(batches):
        if step % window == 0:
            m = [sum(col) for col in zip(*norms_per_sample(module, x))]
            if form == "diff":
                w = [abs(c - n) for c, n in zip(cache, m)]
            else:
                w = [beta * n + (1 - beta) * c for c, n in zip(cache, m)]
            counts = brute_round(w, heads)
            cache = [(c + n) / window for c, n in zip(cache, m)]
        history.append(list(counts))
    return history, cache


@pytest.mark.parametrize(("form", "window"), [("diff", 2), ("ema", 3), ("diff", 1)])
def test_dgqa_updates_in_training_only(form, window):  # type: ignore[no-untyped-def]
    m = _module("dgqa", form=form, window=window, beta=0.8)
    gen = torch.Generator().manual_seed(3)
    # Scale inputs differently so the norms move and the allocation leaves uniform.
    batches = [torch.randn(4, 6, 32, dtype=torch.float64, generator=gen) * (1 + i) for i in range(7)]
    want, want_cache = _simulate_dgqa(m, batches, form, 0.8, window)
    m.train()
    for i, x in enumerate(batches):
        with torch.no_grad():
            out = m(x)
        assert m.counts.tolist() == want[i], f"step {i}"
        torch.testing.assert_close(out, reference_output(m, x, [want[i]] * 4), atol=1e-10, rtol=1e-10)
    assert int(m.step) == len(batches)
    torch.testing.assert_close(m.cache, torch.tensor(want_cache, dtype=torch.float64), atol=1e-12, rtol=1e-12)
    # Eval: buffers frozen whatever the inputs, allocation the same for every sample.
    state = {k: v.clone() for k, v in m.state_dict().items()}
    m.eval()
    with torch.no_grad():
        for x in batches[:3]:
            m(x * 5)
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_dgqa_state_round_trip_and_precision():
    m = _module("dgqa", form="ema", window=1)
    m.train()
    with torch.no_grad():
        for i in range(3):
            m(torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) * (i + 1))
    m.eval()
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = _module("dgqa", seed=9, form="ema", window=1).eval()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(fresh.counts, m.counts) and torch.equal(fresh.step, m.step) and torch.equal(fresh.cache, m.cache)
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    assert set(m.state_dict()) >= {"cache", "counts", "step"}
    assert m.float().cache.dtype == torch.float64  # the cache never loses precision


def test_pgqa_eval_is_gqa_and_train_subtracts_official_noise():
    m = _module("pgqa", CFG).eval()
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    uniform = [[2, 2, 2, 2]] * 2
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference_output(m, x, uniform), atol=1e-10, rtol=1e-10)
        m.train()
        torch.manual_seed(11)
        got = m(x)
    # Independent noise: the official get_gaussian per group, same uniform draws.
    torch.manual_seed(11)
    u = torch.rand(4, 2, 5 * 4, dtype=torch.float64)
    q, k, v = project(m, x)
    clean = torch.zeros(2, 8, 5, 4, dtype=torch.float64)
    for h in range(8):
        s = q[:, :, h] @ k[:, :, h // 2].transpose(1, 2) / 2.0
        clean[:, h] = torch.softmax(s, -1) @ v[:, :, h // 2]
    noise = torch.zeros_like(clean)
    for grp in range(4):
        rows = clean[:, 2 * grp : 2 * grp + 2].reshape(2, 2, -1)
        mat = u[grp].clone()
        for i in range(2):
            mat[i, i] = 0.0
        mat = (mat - mat.mean(-1, keepdim=True)) / mat.std(-1, keepdim=True)
        noise[:, 2 * grp : 2 * grp + 2] = (mat * rows.std(-1, keepdim=True) + rows.mean(-1, keepdim=True)).view(
            2, 2, 5, 4
        )
    want = reference_output(m, x, uniform, noise=noise)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
