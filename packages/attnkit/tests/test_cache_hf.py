"""AttnkitCache inside a tiny random LlamaForCausalLM (transformers 5.x): every cached run is
compared with a cache-less forward of the whole sequence under an explicit 4-D mask that
encodes what the policy lets each token see, so RoPE positions, the causal mask after eviction
and the key-padding mask are all checked against an independent computation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch

pytest.importorskip("transformers")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from attnkit.cache import AttnkitCache, CachePolicy, FullPolicy, LayerState, SinkWindowPolicy, WindowPolicy
from attnkit.cache.attention import REFERENCE_NAME, register_reference_attention
from attnkit.testing import torch_threads

HQ, HKV, P = 4, 2, 10


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    register_reference_attention()
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    config._attn_implementation = REFERENCE_NAME
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).double().eval()
    # no end-of-sequence stop: generated tokens are compared with teacher-forced argmaxes
    model.generation_config.eos_token_id = None
    return model


def _ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def _cached_logits(model: LlamaForCausalLM, cache: AttnkitCache, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Logits of every token, feeding ``ids`` in pieces of the given sizes (prefill first)."""
    out, start = [], 0
    with torch.no_grad():
        for size in chunks:
            out.append(model(ids[:, start : start + size], cache=cache, use_cache=True).logits)
            start += size
    assert start == ids.shape[1]
    return torch.cat(out, dim=1)


def _masked_logits(model: LlamaForCausalLM, ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """One cache-less forward with ``allowed`` (1|B, 1|Hq, T, T) as the attention mask."""
    with torch.no_grad():
        return model(ids, attention_mask=allowed).logits


def _window_mask(total: int, chunks: list[int], window: int) -> torch.Tensor:
    """Row t sees: causal keys of its own piece, plus what the window kept before that piece."""
    allowed = torch.zeros(total, total, dtype=torch.bool)
    start = 0
    for i, size in enumerate(chunks):
        first = 0 if i == 0 else max(0, start - window)
        for t in range(start, start + size):
            allowed[t, first : t + 1] = True
        start += size
    return allowed.view(1, 1, total, total)


def test_full_policy_equals_dynamic_cache_with_sdpa(model: LlamaForCausalLM) -> None:
    """The reference attention + AttnkitCache(full) reproduce transformers' own sdpa + DynamicCache."""
    ids = _ids(2, P + 4)
    got = _cached_logits(model, AttnkitCache(FullPolicy(), config=model.config), ids, [P, 1, 1, 2])
    model.config._attn_implementation = "sdpa"
    try:
        want = []
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            for a, b in ((0, P), (P, P + 1), (P + 1, P + 2), (P + 2, P + 4)):
                want.append(model(ids[:, a:b], cache=cache, use_cache=True).logits)
    finally:
        model.config._attn_implementation = REFERENCE_NAME
    torch.testing.assert_close(got, torch.cat(want, dim=1), atol=1e-10, rtol=0)


@pytest.mark.parametrize("chunks", [[P, 1, 1, 1, 1, 1], [P, 3, 1, 2]])
def test_window_matches_masked_full_forward(model: LlamaForCausalLM, chunks: list[int]) -> None:
    """Positions stay true after eviction, and a multi-token step after eviction is causal."""
    ids = _ids(2, sum(chunks))
    cache = AttnkitCache(WindowPolicy(4), config=model.config)
    got = _cached_logits(model, cache, ids, chunks)
    want = _masked_logits(model, ids, _window_mask(ids.shape[1], chunks, 4))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert cache.get_seq_length() == ids.shape[1]
    assert int(cache.policy.kept_counts(0).max()) == 4
    assert cache.policy.layers[0].capacity == 5  # the budget + the next token's slot


@pytest.mark.parametrize("chunks", [[P, 1, 1, 1], [P, 3, 1, 2]])
def test_compress_prompt_matches_masked_full_forward(model: LlamaForCausalLM, chunks: list[int]) -> None:
    """compress="prompt": the context (first forward) keeps its last 4 tokens, and every token
    after it (an appended question, the answer) stays: brute-force mask over the full forward."""
    ids = _ids(2, sum(chunks))
    policy = WindowPolicy(4)
    policy.compress = "prompt"
    cache = AttnkitCache(policy, config=model.config)
    got = _cached_logits(model, cache, ids, chunks)
    total = ids.shape[1]
    allowed = torch.zeros(total, total, dtype=torch.bool)
    for t in range(total):
        allowed[t, : t + 1] = True
        if t >= P:
            allowed[t, : P - 4] = False  # evicted from the context once, nothing later
    want = _masked_logits(model, ids, allowed.view(1, 1, total, total))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert int(cache.policy.kept_counts(0).max()) == 4 + total - P


def test_sink_window_matches_masked_full_forward(model: LlamaForCausalLM) -> None:
    ids = _ids(1, P + 5)
    got = _cached_logits(
        model, AttnkitCache(SinkWindowPolicy(6, n_sink=2), config=model.config), ids, [P, 1, 1, 1, 1, 1]
    )
    allowed = torch.tril(torch.ones(P + 5, P + 5, dtype=torch.bool))
    for t in range(P, P + 5):
        allowed[t, :t] = False
        allowed[t, :2] = True  # sinks
        allowed[t, t - 4 : t] = True  # budget 6 - 2 sinks
    torch.testing.assert_close(got, _masked_logits(model, ids, allowed.view(1, 1, P + 5, P + 5)), atol=1e-10, rtol=0)


class _RetrievalHeadPolicy(CachePolicy):
    """KV head 0 keeps its whole history, KV head 1 a 3-token window (ragged storage)."""

    def __init__(self) -> None:
        super().__init__(3)

    def head_budgets(self, state: LayerState) -> torch.Tensor:
        return torch.tensor([state.seen, 3])


def test_ragged_heads_match_per_head_mask(model: LlamaForCausalLM) -> None:
    """Different kept counts per KV head: the padding slots are masked by key_padding_mask."""
    ids = _ids(2, P + 4, seed=4)
    cache = AttnkitCache(_RetrievalHeadPolicy(), config=model.config)
    got = _cached_logits(model, cache, ids, [P, 1, 1, 1, 1])
    t = P + 4
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    window = _window_mask(t, [P, 1, 1, 1, 1], 3)[0, 0]
    # query heads 0, 1 share KV head 0 (full); 2, 3 share KV head 1 (window)
    allowed = torch.stack([causal, causal, window, window]).unsqueeze(0)
    torch.testing.assert_close(got, _masked_logits(model, ids, allowed), atol=1e-10, rtol=0)
    assert cache.policy.kept_counts(0)[0].tolist() == [t, 3]


def test_generate_with_eviction_and_sizes(model: LlamaForCausalLM) -> None:
    ids = _ids(2, P)
    cache = AttnkitCache(WindowPolicy(5), config=model.config)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        # the pre-5.x keyword still works (transformers maps it to `cache=`)
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=cache,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
        )
    assert out.shape == (2, P + 6)
    # the last generated token is never fed back, so P + 5 tokens were seen
    assert cache.get_seq_length() == P + 5
    slots = cache.policy.stored_length(0)
    assert slots == 6  # the budget + the slot the next token goes into
    assert cache.get_mask_sizes(1, 0) == (slots + 1, P + 5 - slots)
    assert cache.policy.kept_positions(1)[1, 1].tolist() == [*range(P, P + 5), -1]
    assert cache.nbytes() == 2 * 2 * HKV * 6 * 16 * 8 * 2  # layers * (k, v) * Hkv * slots * D * float64 * B
    # greedy decoding under the window equals teacher-forced decoding of the same tokens
    teacher = _cached_logits(model, AttnkitCache(WindowPolicy(5), config=model.config), out, [P, 1, 1, 1, 1, 1, 1])
    assert torch.equal(teacher[:, P - 1 : -1].argmax(-1), out[:, P:])


def test_stale_cache_not_used_by_other_runs(model: LlamaForCausalLM) -> None:
    ids = _ids(1, 6)
    with torch.no_grad():
        before = model(ids).logits
        model(_ids(2, 6, seed=9), cache=AttnkitCache(WindowPolicy(2), config=model.config), use_cache=True)
        after = model(ids).logits
    assert torch.equal(before, after)


def test_cache_api_surface(model: LlamaForCausalLM) -> None:
    cache = AttnkitCache(WindowPolicy(3), config=model.config)
    assert len(cache.layers) == 2 and not cache.is_compileable and not cache.is_initialized
    assert cache.get_seq_length() == 0 and cache.get_mask_sizes(4, 0) == (4, 0)
    _cached_logits(model, cache, _ids(1, 5), [5])
    assert cache.is_initialized and cache.layers[0].keys.shape == (1, HKV, 3, 16)
    cache.crop(0)
    with pytest.raises(NotImplementedError, match="tokens_to_remove"):
        cache.crop(-1)
    with pytest.raises(TypeError, match="policy"):
        AttnkitCache("window")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_layers"):
        AttnkitCache(WindowPolicy(3), num_layers=0)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.nbytes() == 0
    lazy = AttnkitCache(WindowPolicy(3))
    _cached_logits(model, lazy, _ids(1, 5), [5])
    assert len(lazy.layers) == 2


def _generate(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, cache: AttnkitCache) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            cache=cache,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return torch.stack(out.logits, dim=1)


@pytest.mark.parametrize(
    ("policy", "budget"),
    [(WindowPolicy, 0.5), (WindowPolicy, 5), (SinkWindowPolicy, 6), (SinkWindowPolicy, 0.6)],
    ids=["window-ratio", "window-int", "sink_window-int", "sink_window-ratio"],
)
def test_left_padded_batch_equals_each_alone_through_patch(
    model: LlamaForCausalLM, policy: type[CachePolicy], budget: float
) -> None:
    """Through attnkit.patch (the HF adapter): a left-padded row keeps, and attends to, what it
    would alone; its sinks are its own first tokens and a ratio counts its real tokens (the
    padding mask used to be read at shifted indices after the first eviction, issue 9)."""
    import attnkit

    long_ids, short_ids = _ids(1, P + 4, seed=5), _ids(1, P - 1, seed=6)
    pad = long_ids.shape[1] - short_ids.shape[1]
    ids = torch.cat([long_ids, torch.cat([torch.zeros(1, pad, dtype=torch.long), short_ids], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    make = (lambda: policy(budget, n_sink=2)) if policy is SinkWindowPolicy else (lambda: policy(budget))
    with attnkit.patch(model, "dense"):
        batch = _generate(model, ids, mask, AttnkitCache(make(), config=model.config))
        for i, alone in enumerate((long_ids, short_ids)):
            one = _generate(model, alone, torch.ones_like(alone), AttnkitCache(make(), config=model.config))
            torch.testing.assert_close(batch[i], one[0], atol=1e-10, rtol=0)


def test_padding_is_never_kept(model: LlamaForCausalLM) -> None:
    """Padding tokens become empty slots: never counted against the budget nor attended to."""
    ids = torch.cat([_ids(1, P), torch.cat([torch.zeros(1, 4, dtype=torch.long), _ids(1, P - 4, seed=2)], 1)])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    cache = AttnkitCache(SinkWindowPolicy(0.5, n_sink=2), config=model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache, use_cache=True)
    rows = cache.policy.kept_positions(0)
    assert [int(p) for p in rows[0, 0] if p >= 0] == [0, 1, 7, 8, 9]  # 0.5 * 10 tokens
    assert [int(p) for p in rows[1, 0] if p >= 0] == [4, 5, 9]  # 0.5 * 6 real tokens, sinks 4, 5


def test_layers_left_unpatched_use_the_cache_mask(model: LlamaForCausalLM) -> None:
    """patch(layers=[0]): layer 1 runs transformers' SDPA on the cache's keys, whose slots are
    reused in place and not in token order; it gets the cache's mask (and observes) too."""
    import attnkit

    chunks = [P, 1, 1, 3, 1]
    ids = _ids(2, sum(chunks), seed=7)
    want = _masked_logits(model, ids, _window_mask(ids.shape[1], chunks, 4))
    with attnkit.patch(model, "dense", layers=[0]):
        cache = AttnkitCache(WindowPolicy(4), config=model.config)
        got = _cached_logits(model, cache, ids, chunks)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert int(cache.policy.kept_counts(1).max()) == 4


# ---------------------------------------------------------------------------- key re-rotation
def test_rotate_keys_matches_transformers_rope() -> None:
    """A key RoPE'd at position a and rotated by b - a is transformers' RoPE at b."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from attnkit.cache.policy import rotate_keys

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=500.0, max_position_embeddings=64)
    rope = LlamaRotaryEmbedding(config)
    k = torch.randn(1, 1, 6, 16, dtype=torch.float64)
    a = torch.tensor([[0, 3, 7, 20, 41, 63]])
    b = torch.tensor([[5, 3, 0, 100, 2, 500]])
    cos_a, sin_a = rope(k, a)
    cos_b, sin_b = rope(k, b)
    at_a, _ = apply_rotary_pos_emb(k, k, cos_a.double(), sin_a.double())
    at_b, _ = apply_rotary_pos_emb(k, k, cos_b.double(), sin_b.double())
    got = rotate_keys(at_a[0, 0], (b - a)[0], 500.0, 16)
    # transformers computes the angles in float32: ~1e-7 per position unit of 500
    torch.testing.assert_close(got, at_b[0, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(rotate_keys(got, (a - b)[0], 500.0, 16), at_a[0, 0], atol=1e-12, rtol=0)


def test_rerotated_sink_window_equals_a_fresh_forward_over_the_kept_tokens() -> None:
    """One layer: keys and values depend on their token alone, so StreamingLLM's cache with
    position shift is exactly a fresh forward over [sinks, window, new token] at positions
    0..S, step after step, even past max_position_embeddings."""
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=HQ,
        num_key_value_heads=HKV,
        max_position_embeddings=32,
        rope_theta=100.0,
    )
    config._attn_implementation = REFERENCE_NAME
    register_reference_attention()
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).double().eval()
    ids = _ids(1, 48)
    policy = SinkWindowPolicy(8, n_sink=2)
    policy.rerotate = True
    cache = AttnkitCache(policy, config=config)
    with torch.no_grad():
        model(ids[:, :12], cache=cache, use_cache=True)
        for t in range(12, 48):  # past max_position_embeddings = 32
            # what this step attends to: the kept keys before it, and itself
            kept = [int(p) for p in policy.kept_positions(0)[0, 0] if p >= 0] + [t]
            assert kept[:2] == [0, 1] and len(kept) == 9
            got = model(ids[:, t : t + 1], cache=cache, use_cache=True).logits[0, -1]
            fresh = ids[:, kept]
            want = model(fresh, position_ids=torch.arange(len(kept)).view(1, -1)).logits[0, -1]
            # transformers computes RoPE angles in float32 even for a float64 model
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    # without re-rotation the same cache differs once eviction has shifted the window
    plain = AttnkitCache(SinkWindowPolicy(8, n_sink=2), config=config)
    with torch.no_grad():
        model(ids[:, :40], cache=plain, use_cache=True)
        kept = [int(p) for p in plain.policy.kept_positions(0)[0, 0] if p >= 0] + [40]
        got = model(ids[:, 40:41], cache=plain, use_cache=True).logits[0, -1]
    want = model(ids[:, kept], position_ids=torch.arange(len(kept)).view(1, -1)).logits[0, -1]
    assert (got - want).abs().max() > 1e-4


def test_rerotate_needs_the_models_rope() -> None:
    policy = SinkWindowPolicy(8, n_sink=2)
    policy.rerotate = True
    with pytest.raises(ValueError, match="rerotate=True needs the model's RoPE"):
        policy.append(0, torch.zeros(1, 1, 4, 8), torch.zeros(1, 1, 4, 8))
    with pytest.raises(TypeError, match="rerotate must be a bool"):
        policy.rerotate = 1  # type: ignore[assignment]
