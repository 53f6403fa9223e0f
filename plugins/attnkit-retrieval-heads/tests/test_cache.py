"""The retrieval-head-aware cache policy on a tiny random Llama (4 query / 2 KV heads)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from _retrieval_helpers import VOCAB, tiny_llama

import attnkit
from attnkit import KVCacheSpec
from attnkit.cache import AttnkitCache
from attnkit_contract.cache_checks import (
    check_cache_batch_independence,
    check_cache_full_budget_equals_full,
    check_cache_left_padding,
    check_cache_multi_token_after_eviction,
    check_cache_reset,
    reference_step,
)
from attnkit_retrieval_heads import RETRIEVAL_CACHE, RetrievalCacheParams
from attnkit_retrieval_heads.cache import RetrievalHeadsPolicy, build, retrieval_kv_heads, select_heads, split_budget

PROMPT, NEW = 30, 5


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    return tiny_llama(heads=4, kv_heads=2, layers=2)


def _prompt(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(seed))


def _run(model, policy, new: int = NEW):  # type: ignore[no-untyped-def]
    cache = AttnkitCache(policy, config=model.config)
    with attnkit.patch(model):
        out = model.generate(
            _prompt(),
            cache=cache,
            max_new_tokens=new,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences, torch.stack(out.logits, 1)


def test_retrieval_kv_heads_keep_all_others_window(model) -> None:  # type: ignore[no-untyped-def]
    policy = RetrievalHeadsPolicy([(0, 3)], group_size=2, window=6, n_sink=2)
    _run(model, policy)
    seen = policy.seen(0)
    assert seen == PROMPT + NEW - 1  # the last generated token is never fed back
    window = [0, 1, *range(seen - 6, seen)]
    for layer in range(2):
        kept = policy.kept_positions(layer)[0]
        rows = [[int(p) for p in row if p >= 0] for row in kept]
        if layer == 0:
            assert rows[1] == list(range(seen))  # query head 3 reads KV head 1: everything kept
            assert rows[0] == window
        else:
            assert rows == [window, window]


def test_window_at_least_length_equals_full_cache(model) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        ref = model.generate(
            _prompt(), max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    seq, logits = _run(model, RetrievalHeadsPolicy([(1, 0)], group_size=2, window=PROMPT + NEW, n_sink=4))
    assert torch.equal(seq, ref.sequences)
    torch.testing.assert_close(logits, torch.stack(ref.logits, 1), atol=1e-10, rtol=1e-10)


def test_small_window_changes_only_non_retrieval_attention(model) -> None:  # type: ignore[no-untyped-def]
    """With every KV head a retrieval head the small window is irrelevant (full cache); with
    none, it is a sinks + window cache and the logits move."""
    with torch.no_grad():
        ref = model.generate(
            _prompt(), max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    ref_logits = torch.stack(ref.logits, 1)
    all_heads = [(layer, h) for layer in range(2) for h in range(4)]
    _, full = _run(model, RetrievalHeadsPolicy(all_heads, group_size=2, window=2, n_sink=1))
    torch.testing.assert_close(full, ref_logits, atol=1e-10, rtol=1e-10)
    _, none = _run(model, RetrievalHeadsPolicy([], group_size=2, window=2, n_sink=1))
    assert (none[:, 1:] - ref_logits[:, 1:]).abs().max() > 1e-4


def test_spec_through_patch_with_scores_json(model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"scores": {"0-0": 0.9, "0-1": 0.05, "1-2": 0.3, "1-3": 0.0}}))
    spec = attnkit.get_spec("retrieval_heads_cache", "cache")
    assert spec is RETRIEVAL_CACHE or spec.name == RETRIEVAL_CACHE.name
    with attnkit.patch(
        model, cache="retrieval_heads_cache", cache_params={"scores": str(path), "group_size": 2, "window": 4}
    ) as s:
        policy = s._make_policy()
    assert policy.kv_heads == {0: {0}, 1: {1}}
    assert select_heads(RetrievalCacheParams(scores=str(path), top_k=1)) == [(0, 0)]
    assert retrieval_kv_heads([(0, 5), (0, 4), (2, 0)], 3) == {0: {1}, 2: {0}}


def test_budget_is_the_whole_cache_split_by_layers(model) -> None:  # type: ignore[no-untyped-def]
    """With a budget the cache holds ``budget`` slots per layer and KV head in all, the
    retrieval layer as wide as its retrieval head (issue 9: it used to hold ~35% more)."""
    policy = build(RetrievalCacheParams(heads=((0, 0),), group_size=2, window=3, n_sink=2, budget=10))
    _run(model, policy)
    seen = policy.seen(0)
    # 2 layers x 10 = 20 slots: others keep sinks + window (5), the retrieval head the rest (15)
    assert split_budget(10, PROMPT, 2, 1, n_sink=2, window=3) == (15, 5)
    rows0 = [[int(p) for p in row if p >= 0] for row in policy.kept_positions(0)[0]]
    rows1 = [[int(p) for p in row if p >= 0] for row in policy.kept_positions(1)[0]]
    assert rows0[0] == [0, 1, *range(seen - 13, seen)]
    assert rows0[1] == [0, 1, *range(seen - 3, seen)] == rows1[0] == rows1[1]
    # bytes: each layer's slots (the widest row) + the next token's slot, K and V, float64
    slot = 2 * 2 * 16 * 8  # (k, v) x Hkv x head dim x 8 bytes
    assert policy.nbytes() == (15 + 1 + 5 + 1) * slot
    assert policy.nbytes() == 2 * (10 + 1) * slot  # what a 10-token window cache holds


def test_split_budget_closed_forms() -> None:
    # retrieval layers keep the whole prompt when the others can keep sinks + window ...
    assert split_budget(512, 2048, 30, 5, n_sink=4, window=64) == (2048, (30 * 512 - 5 * 2048) // 25)
    # ... otherwise the others keep sinks + window and the retrieval heads get the rest
    assert split_budget(512, 2048, 30, 10, n_sink=4, window=64) == ((30 * 512 - 20 * 68) // 10, 68)
    assert split_budget(512, 2048, 30, 0, n_sink=4, window=64) == (512, 512)  # no retrieval head
    assert split_budget(512, 2048, 30, 30, n_sink=4, window=64) == (512, 68)  # all layers
    for r in range(31):
        retrieval, other = split_budget(512, 2048, 30, r, n_sink=4, window=64)
        assert r * retrieval + (30 - r) * other <= 30 * 512
        assert other <= 512 <= retrieval <= 2048


def test_group_size_checked_against_the_model(model) -> None:  # type: ignore[no-untyped-def]
    # in range but wrong: query head 1 would be read from KV head 1 instead of 0
    policy = RetrievalHeadsPolicy([(0, 1)], group_size=1, window=4)
    with pytest.raises(ValueError, match=r"group_size=1 but the model has 4 query heads over 2 KV heads"):
        _run(model, policy)
    with pytest.raises(ValueError, match=r"layers \[5\] but the model has 2 layers"):
        _run(model, RetrievalHeadsPolicy([(5, 0)], group_size=2, window=4))


def test_group_size_mismatch_raises(model) -> None:  # type: ignore[no-untyped-def]
    policy = RetrievalHeadsPolicy([(0, 3)], group_size=1, window=4)  # KV head 3 of 2
    with pytest.raises(ValueError, match=r"KV heads \[3\] but the layer has 2 KV heads"):
        _run(model, policy)


@pytest.mark.parametrize(
    ("kwargs", "exc", "word"),
    [
        ({"window": 0}, ValueError, "window"),
        ({"n_sink": -1}, ValueError, "n_sink"),
        ({"group_size": 0}, ValueError, "group_size"),
        ({"heads": ((0, -1),)}, ValueError, "heads"),
        ({"heads": "0-1"}, TypeError, "heads"),
        ({"scores": 3}, TypeError, "scores"),
        ({"top_k": 0, "scores": {}}, ValueError, "top_k"),
        ({"budget": 4, "n_sink": 4}, ValueError, "budget"),
        ({"threshold": 1.5}, ValueError, "threshold"),
    ],
)
def test_bad_params(kwargs: dict, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        RetrievalCacheParams(**kwargs)


def test_needle_accuracy_runs_the_policy(model) -> None:  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    from attnkit.data.needles import NeedleCase
    from attnkit_retrieval_heads.detect import greedy_generate, needle_accuracy

    ids = _prompt(3)[0].tolist()
    case = NeedleCase(ids, (4, 8), "a", "q", "n", PROMPT, PROMPT, 50.0, 4, 4)
    tok = SimpleNamespace(decode=lambda ids, **_: " ".join(map(str, ids)), eos_token_id=None)
    params = {"heads": ((0, 0),), "group_size": 2, "window": 4, "n_sink": 1}
    res = needle_accuracy(model, tok, [case], max_new_tokens=6, cache="retrieval_heads_cache", cache_params=params)
    seen = PROMPT - 1 + 6  # prefill of all but the last token, then one decode step per token
    # layer 0: KV head 0 keeps all, KV head 1 sinks + window; layer 1: both sinks + window
    assert res.kv_kept == [pytest.approx((seen + 3 * 5) / (4 * seen))]
    # a window covering everything answers exactly like the plain cache
    wide = needle_accuracy(
        model, tok, [case], max_new_tokens=6, cache="retrieval_heads_cache", cache_params={**params, "window": 64}
    )
    plain = greedy_generate(model, tok, case.tensor(), 6)
    assert wide.answers == [tok.decode(plain)]


@dataclass(frozen=True)
class _WithHeads(RetrievalCacheParams):
    """Retrieval heads in layer 1 only: layer 1 holds more slots than layer 0, which
    transformers sizes its one mask by (the crash of issue 9)."""

    heads: tuple[tuple[int, int], ...] = ((1, 0),)
    group_size: int = 2
    window: int = 2
    n_sink: int = 1


@pytest.mark.parametrize(
    "check",
    [
        check_cache_full_budget_equals_full,
        check_cache_batch_independence,
        check_cache_left_padding,
        check_cache_multi_token_after_eviction,
        check_cache_reset,
    ],
    ids=lambda c: c.__name__,
)
def test_cache_contract_with_retrieval_heads(check) -> None:  # type: ignore[no-untyped-def]
    check(KVCacheSpec(name="retrieval_heads_cache.layer1", params=_WithHeads, factory=build))


def test_question_after_compressed_context_through_patch(model) -> None:  # type: ignore[no-untyped-def]
    """A 5-token question appended to a compressed prompt, through attnkit.patch (the HF
    adapter, where `mask & km` used to fail with 'size of tensor a (265) must match ... b
    (2042)'), equals dense attention over what the policy kept plus the question."""
    from transformers import DynamicCache

    policy = RetrievalHeadsPolicy([(1, 0)], group_size=2, window=3, n_sink=1, budget=12)
    cache = AttnkitCache(policy, config=model.config)
    ids = torch.randint(0, VOCAB, (2, PROMPT + 5), generator=torch.Generator().manual_seed(4))
    with attnkit.patch(model), torch.no_grad():
        full = DynamicCache(config=model.config)
        model(ids[:, :PROMPT], cache=full, use_cache=True)
        model(ids[:, :PROMPT], cache=cache, use_cache=True)
        assert policy.stored_length(1) > policy.stored_length(0)  # ragged across layers
        kept = [policy.kept_positions(layer).clone() for layer in range(2)]
        got = model(ids[:, PROMPT:], cache=cache, use_cache=True).logits
    kv = [[layer.keys, layer.values] for layer in full.layers]
    want = reference_step(model, ids[:, PROMPT:], PROMPT, kv, kept)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
