"""End to end: ``attnkit.patch(model, cache="lazyeviction", ...)`` and ``model.generate`` on a
tiny random Llama (float64, fast) and on SmolLM2-135M-Instruct (slow), with
:class:`~attnkit_lazyeviction.usage.KVUsage` measuring the cache at every forward. The sizes
are checked against their closed form: ``budget + s mod W`` held after decode step ``s``."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.testing import TINY_VOCAB, tiny_causal_lm
from attnkit_lazyeviction.usage import KVUsage


def _tiny():
    return tiny_causal_lm(seed=0).double()


def _generate(model, ids, new, cache=None):
    kwargs = {} if cache is None else {"cache": cache}
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, dim=1)


def test_budget_over_the_sequence_equals_the_full_cache() -> None:
    model = _tiny()
    ids = torch.randint(3, TINY_VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    want_tok, want_logits = _generate(model, ids, 12)  # transformers' own cache and attention
    with attnkit.patch(model, cache="lazyeviction", cache_params={"budget": 64, "window": 4}):
        tok, logits = _generate(model, ids, 12)
    assert torch.equal(tok, want_tok)
    assert (logits - want_logits).abs().max().item() < 1e-9


def test_generate_sizes_follow_the_lag() -> None:
    """Budget 8, W = 4, a 20-token prompt, 12 new tokens (the prefill and 11 decode forwards):
    held after forward s is 8 + s mod 4, attention sees at most 8 + 4, and the means and bytes
    KVUsage reports are those of that sequence."""
    c, w, prompt, new = 8, 4, 20, 12
    model = _tiny()
    ids = torch.randint(3, TINY_VOCAB, (2, prompt), generator=torch.Generator().manual_seed(1))
    params = {"budget": c, "window": w, "alpha": 0.05}
    with attnkit.patch(model, cache="lazyeviction", cache_params=params) as session:
        cache = session.new_cache()
        with KVUsage(cache) as usage:
            tok, _ = _generate(model, ids, new, cache=cache)
    assert tok.shape == (2, new)
    rows = usage.per_forward()
    assert [r["forward"] for r in rows] == list(range(new))
    for r in rows:
        s = r["forward"]
        assert r["held_max"] == c + s % w and r["held_mean"] == c + s % w, r
        assert r["attended_max"] == (prompt if s == 0 else c + (s - 1) % w + 1), r
    layers, b, hkv, head_dim = 2, 2, 2, 16
    slot = 2 * head_dim * 8  # float64 key and value of one token, one KV head
    summary = usage.summary()
    held = [c + s % w for s in range(1, new)]
    assert summary["peak_attended_slots"] == c + w
    assert summary["peak_held_slots"] == c + w - 1
    assert summary["mean_held_slots"] == pytest.approx(sum(held) / len(held))
    assert summary["peak_held_bytes"] == (c + w - 1) * layers * b * hkv * slot
    assert summary["mean_held_bytes"] == pytest.approx(sum(held) / len(held) * layers * b * hkv * slot)
    assert summary["peak_allocated_bytes"] == (c + w) * layers * b * hkv * slot  # budget + W slots
    assert "observe" not in vars(cache.policy)  # unwrapped on exit


def test_kv_usage_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="cache"):
        KVUsage(object())
    with pytest.raises(ValueError, match="nothing was recorded"):
        KVUsage(attnkit.cache.build_policy("lazyeviction")).summary()


@pytest.mark.slow
def test_smollm2_generate_under_lazyeviction() -> None:
    """SmolLM2-135M-Instruct on a stdlib docstring: a budget over the sequence reproduces the
    full cache's greedy tokens; budget 64 with W = 16 holds 64 + s mod 16 after every decode
    step and attention never sees more than 80 keys."""
    from attnkit.models import load

    try:
        model, tok = load("smollm2")
    except (ImportError, FileNotFoundError, RuntimeError) as exc:
        pytest.skip(f"SmolLM2 is not installed: {exc}")
    import json

    text = json.__doc__ or ""
    ids = tok(text, return_tensors="pt").input_ids[:, :160]
    new = 40
    with torch.no_grad():
        full = model.generate(ids, max_new_tokens=new, do_sample=False)[:, ids.shape[1] :]
    with attnkit.patch(model, cache="lazyeviction", cache_params={"budget": 512, "window": 16}), torch.no_grad():
        same = model.generate(ids, max_new_tokens=new, do_sample=False)[:, ids.shape[1] :]
    assert torch.equal(same, full)
    with attnkit.patch(model, cache="lazyeviction", cache_params={"budget": 64, "window": 16}) as session:
        cache = session.new_cache()
        with KVUsage(cache) as usage, torch.no_grad():
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, cache=cache)
    for r in usage.per_forward():
        assert r["held_max"] == 64 + r["forward"] % 16 and r["held_mean"] == r["held_max"], r
    assert usage.summary()["peak_attended_slots"] == 80
