"""The retrieval-head-aware cache policy on a tiny random Llama (4 query / 2 KV heads)."""

from __future__ import annotations

import json

import pytest
import torch
from _retrieval_helpers import VOCAB, tiny_llama

import attnkit
from attnkit.cache import AttnkitCache
from attnkit_retrieval_heads import RETRIEVAL_CACHE, RetrievalCacheParams
from attnkit_retrieval_heads.cache import RetrievalHeadsPolicy, build, retrieval_kv_heads, select_heads

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


def test_budget_caps_retrieval_heads(model) -> None:  # type: ignore[no-untyped-def]
    policy = build(RetrievalCacheParams(heads=((0, 0),), group_size=2, window=3, n_sink=2, budget=10))
    _run(model, policy)
    seen = policy.seen(0)
    rows = [[int(p) for p in row if p >= 0] for row in policy.kept_positions(0)[0]]
    assert rows[0] == [0, 1, *range(seen - 8, seen)]
    assert rows[1] == [0, 1, *range(seen - 3, seen)]


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
