"""The contract checks for KV-cache policy specs (:class:`~attnkit.KVCacheSpec`).

Each check is ``check_cache_<name>(spec) -> None``: it builds the spec's policy with
``spec.factory(spec.make_params(budget=...))`` (specs without a ``budget`` parameter get their
defaults), drives a tiny randomly initialised transformers ``LlamaForCausalLM`` (2 layers,
hidden 64, 4 query heads, 2 KV heads, vocab 128, float64, seeded; nothing downloaded) through
:class:`attnkit.cache.AttnkitCache` with :func:`attnkit.cache.attention.reference_cache_attention`,
and raises ``AssertionError`` naming the spec when the policy breaks the contract.
``pytest.skip`` only when a check does not apply (a policy without a budget cannot shrink).

:func:`parametrize_with_cache_contract` makes one pytest test per ``(spec, check)`` with ids
``<spec>-<check>``; a spec's ``expected_failed_checks`` (keys ``"check_cache_x"`` or
``"cache:check_cache_x"``) become strict xfails.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest
import torch

from attnkit.registry import KVCacheSpec, resolve
from attnkit.testing import torch_threads

__all__ = [
    "CACHE_APPLIES",
    "CACHE_BACKEND",
    "CACHE_CHECKS",
    "cache_contract_params",
    "parametrize_with_cache_contract",
    "reference_step",
    "tiny_llama",
]

F = TypeVar("F", bound=Callable[..., Any])

#: The ``backend`` cache checks are filed under in ``expected_failed_checks`` keys.
CACHE_BACKEND = "cache"
PROMPT, NEW_TOKENS, VOCAB = 16, 8, 128
#: Both runs do the same float64 arithmetic on different batch layouts.
F64_TOL = 1e-9


@functools.lru_cache(maxsize=2)
def tiny_llama(seed: int = 0) -> Any:
    """A seeded, randomly initialised float64 ``LlamaForCausalLM`` (2 layers, hidden 64, 4 query
    heads, 2 KV heads, head dim 16, vocab 128) using the cache-aware reference attention.

    The instance is shared between calls (building it dominates a check's time): do not modify it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from attnkit.cache.attention import register_reference_attention

    name = register_reference_attention()
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = name
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).double().eval()


#: One intra-op thread around each check (see :func:`attnkit.testing.torch_threads`).
_one_thread = torch_threads(1)


def _check_spec(spec: Any) -> KVCacheSpec:
    if not isinstance(spec, KVCacheSpec):
        raise TypeError(f"spec must be an attnkit.KVCacheSpec, got {type(spec).__name__}")
    return spec


def _has_budget(spec: KVCacheSpec) -> bool:
    return "budget" in {f.name for f in dataclasses.fields(spec.params)}


def make_policy(spec: KVCacheSpec, budget: int | float | None = None) -> Any:
    """A fresh policy of ``spec`` with ``budget`` (ignored by specs without a budget)."""
    params = spec.make_params(budget=budget) if budget is not None and _has_budget(spec) else spec.make_params()
    return resolve(spec.factory)(params)


def _prompts(batch: int, seed: int = 1, length: int = PROMPT) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def _generate(
    model: Any, ids: torch.Tensor, cache: Any, new: int = NEW_TOKENS, attention_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens ``(B, new)`` and their logits ``(B, new, V)``."""
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids) if attention_mask is None else attention_mask,
            cache=cache,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, dim=1)


def _new_cache(model: Any, policy: Any) -> Any:
    from attnkit.cache.hf import AttnkitCache

    return AttnkitCache(policy, config=model.config)


def _steps(model: Any, cache: Any, ids: torch.Tensor, new: int, chunk_at: int | None = None) -> Iterable[int]:
    """Prefill then greedy decode with plain forward calls; yields the tokens seen after each
    forward. With ``chunk_at``, that step feeds 3 tokens at once (the greedy one and two more)."""
    with torch.no_grad():
        logits = model(ids, cache=cache, use_cache=True).logits
        seen = ids.shape[1]
        yield seen
        for step in range(1, new + 1):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            if step == chunk_at:
                nxt = torch.cat([nxt, (nxt + 1) % VOCAB, (nxt + 2) % VOCAB], dim=1)
            logits = model(nxt, cache=cache, use_cache=True).logits
            seen += nxt.shape[1]
            yield seen


@_one_thread
def check_cache_full_budget_equals_full(spec: Any) -> None:
    """A budget >= the whole sequence reproduces a DynamicCache run exactly (tokens and logits)."""
    from transformers import DynamicCache

    spec = _check_spec(spec)
    model = tiny_llama()
    ids = _prompts(2)
    want_tok, want_logits = _generate(model, ids, DynamicCache(config=model.config))
    for budget in (PROMPT + NEW_TOKENS, 1.0) if _has_budget(spec) else (None,):
        if isinstance(budget, float):
            # a ratio of 1 covers the prompt; decoding past it must then evict, so only the
            # prefill (first new token) is compared
            new = 1
        else:
            new = NEW_TOKENS
        got_tok, got_logits = _generate(model, ids, _new_cache(model, make_policy(spec, budget)), new=new)
        where = f"{spec.name} (budget={budget!r}, prompt {PROMPT}, {new} new tokens)"
        if not torch.equal(got_tok, want_tok[:, :new]):
            raise AssertionError(
                f"{where}: generated {got_tok.tolist()} but full attention gives {want_tok[:, :new].tolist()}"
            )
        err = (got_logits - want_logits[:, :new]).abs().max().item()
        if err > F64_TOL:
            raise AssertionError(f"{where}: logits differ from full attention by {err:.3e}")


def _kept_rows(policy: Any, layer: int) -> list[list[int]]:
    pos = policy.kept_positions(layer)
    return [[int(p) for p in row if p >= 0] for row in pos.reshape(-1, pos.shape[-1])]


@_one_thread
def check_cache_budget_respected(spec: Any) -> None:
    """After every forward (prefill, each decode step, and one 3-token forward among them) no
    layer, sequence or KV head holds more than the resolved budget, and kept positions are
    sorted and unique. A lagged policy (``budget_slack() > 0``, e.g. eviction every W steps) is
    held to the budget plus its declared slack."""
    spec = _check_spec(spec)
    if not _has_budget(spec):
        pytest.skip(f"{spec.name} has no budget parameter")
    model = tiny_llama()
    for budget in (6, 0.5):
        policy = make_policy(spec, budget)
        slack_of = getattr(policy, "budget_slack", None)
        slack = slack_of() if callable(slack_of) else 0
        if not isinstance(slack, int) or isinstance(slack, bool) or slack < 0:
            raise AssertionError(f"{spec.name}: budget_slack() must be an int >= 0, got {slack!r}")
        cache = _new_cache(model, policy)
        for step, seen in enumerate(_steps(model, cache, _prompts(2), NEW_TOKENS, chunk_at=3)):
            for layer in range(model.config.num_hidden_layers):
                limit = policy.resolved_budget(layer)
                want = budget if isinstance(budget, int) else max(1, int(budget * PROMPT))
                if limit != want:
                    raise AssertionError(
                        f"{spec.name}: budget {budget!r} resolved to {limit}, expected {want} for a {PROMPT}-token prompt"
                    )
                for row in _kept_rows(policy, layer):
                    if len(row) > limit + slack:
                        allowed = f"{limit}" if not slack else f"{limit} + slack {slack}"
                        raise AssertionError(
                            f"{spec.name} (budget={budget!r}) holds {len(row)} > {allowed} tokens in layer {layer} after step {step}"
                        )
                    if row != sorted(set(row)):
                        raise AssertionError(
                            f"{spec.name}: kept positions {row} in layer {layer} are not sorted and unique"
                        )
            if cache.get_seq_length() != seen:
                raise AssertionError(f"{spec.name}: get_seq_length() is {cache.get_seq_length()} after {seen} tokens")


@_one_thread
def check_cache_always_kept(spec: Any) -> None:
    """The positions the policy declares always kept (``always_kept(length, budget)``) are in
    every row of every layer after every step."""
    spec = _check_spec(spec)
    model = tiny_llama()
    policy = make_policy(spec, 7)
    cache = _new_cache(model, policy)
    for step, _ in enumerate(_steps(model, cache, _prompts(2), NEW_TOKENS)):
        for layer in range(model.config.num_hidden_layers):
            must = set(policy.always_kept(policy.seen(layer), policy.resolved_budget(layer)))
            for row in _kept_rows(policy, layer):
                missing = sorted(must - set(row))
                if missing:
                    raise AssertionError(
                        f"{spec.name}: always-kept positions {missing} missing from layer {layer} after step {step} (kept {row})"
                    )


@_one_thread
def check_cache_batch_independence(spec: Any) -> None:
    """A batch of two different equal-length prompts equals each prompt run alone."""
    spec = _check_spec(spec)
    model = tiny_llama()
    ids = _prompts(2, seed=3)
    budget = 6 if _has_budget(spec) else None
    tok, logits = _generate(model, ids, _new_cache(model, make_policy(spec, budget)))
    for i in range(2):
        one_tok, one_logits = _generate(model, ids[i : i + 1], _new_cache(model, make_policy(spec, budget)))
        if not torch.equal(tok[i], one_tok[0]):
            raise AssertionError(
                f"{spec.name}: sequence {i} generates {tok[i].tolist()} in a batch but {one_tok[0].tolist()} alone"
            )
        err = (logits[i] - one_logits[0]).abs().max().item()
        if err > F64_TOL:
            raise AssertionError(f"{spec.name}: sequence {i} logits differ by {err:.3e} between batch and alone")


@_one_thread
def check_cache_left_padding(spec: Any) -> None:
    """A left-padded batch of two prompts of different lengths equals each prompt run alone
    (tokens and logits), at an absolute and a ratio budget: padding is never kept, attended
    to or counted, and ratios, sinks and windows count from each row's first real token."""
    spec = _check_spec(spec)
    model = tiny_llama()
    short = PROMPT - 5
    long_ids, short_ids = _prompts(1, seed=11), _prompts(1, seed=12, length=short)
    ids = torch.cat([long_ids, torch.cat([torch.zeros(1, PROMPT - short, dtype=torch.long), short_ids], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, : PROMPT - short] = 0
    for budget in (6, 0.5) if _has_budget(spec) else (None,):
        tok, logits = _generate(model, ids, _new_cache(model, make_policy(spec, budget)), attention_mask=mask)
        for i, alone in enumerate((long_ids, short_ids)):
            one_tok, one_logits = _generate(model, alone, _new_cache(model, make_policy(spec, budget)))
            where = f"{spec.name} (budget={budget!r}): left-padded row {i} ({alone.shape[1]} real tokens)"
            if not torch.equal(tok[i], one_tok[0]):
                raise AssertionError(
                    f"{where} generates {tok[i].tolist()} in the batch but {one_tok[0].tolist()} alone"
                )
            err = (logits[i] - one_logits[0]).abs().max().item()
            if err > F64_TOL:
                raise AssertionError(f"{where}: logits differ by {err:.3e} between the padded batch and alone")


def reference_step(
    model: Any, ids: torch.Tensor, start: int, kv: list[list[torch.Tensor]], kept: list[torch.Tensor]
) -> torch.Tensor:
    """Logits ``(B, n, V)`` of the ``n`` tokens ``ids`` at positions ``start..start+n-1``, each
    layer attending densely to the ``kept`` positions of its rows (``(B, Hkv, T)``, -1 unused)
    plus the new tokens causally, with the model's own weights and nothing of the cache code.
    ``kv[layer] = [K, V]``, ``(B, Hkv, P, D)`` by position, gets the new tokens' keys and values."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    base = model.model
    b, n = ids.shape
    hidden = base.embed_tokens(ids)
    position_ids = torch.arange(start, start + n).unsqueeze(0).expand(b, n)
    cos, sin = base.rotary_emb(hidden, position_ids)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for layer_idx, layer in enumerate(base.layers):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        hd = attn.head_dim
        q = attn.q_proj(x).view(b, n, -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(b, n, -1, hd).transpose(1, 2)
        v = attn.v_proj(x).view(b, n, -1, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        hq, hkv = q.shape[1], k.shape[1]
        keys, values = kv[layer_idx]
        out = torch.zeros_like(q)
        for bi in range(b):
            for h in range(hkv):
                row = kept[layer_idx][bi, h]
                old = row[row >= 0]
                ks = torch.cat([keys[bi, h, old], k[bi, h]])
                vs = torch.cat([values[bi, h, old], v[bi, h]])
                allowed = torch.cat([torch.ones(n, len(old), dtype=torch.bool), causal], dim=1)
                for qh in range(h * (hq // hkv), (h + 1) * (hq // hkv)):
                    logits = (q[bi, qh] @ ks.T) * attn.scaling
                    out[bi, qh] = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1) @ vs
        kv[layer_idx] = [torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)]
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(b, n, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return model.lm_head(base.norm(hidden))


@_one_thread
def check_cache_multi_token_after_eviction(spec: Any) -> None:
    """Several tokens in one forward after eviction (a question appended to a compressed
    prompt; chunked prefill, speculative blocks) attend to exactly what the policy kept plus
    themselves, causally: prompt, one decode step, a 5-token question, one more decode step,
    each compared with a layer-by-layer recomputation from the model's weights
    (:func:`reference_step`) over the kept positions the policy reports."""
    from transformers import DynamicCache

    spec = _check_spec(spec)
    model = tiny_llama()
    ids = _prompts(2, seed=7, length=PROMPT + 1 + 5 + 1)
    budget = 6 if _has_budget(spec) else None
    policy = make_policy(spec, budget)
    cache = _new_cache(model, policy)
    layers = model.config.num_hidden_layers
    with torch.no_grad():
        full = DynamicCache(config=model.config)
        model(ids[:, :PROMPT], cache=full, use_cache=True)  # the prompt's K/V under full attention
        kv = [[layer.keys, layer.values] for layer in full.layers]
        model(ids[:, :PROMPT], cache=cache, use_cache=True)
        start = PROMPT
        for n, what in ((1, "a decode step"), (5, "a 5-token question"), (1, "the decode step after it")):
            kept = [policy.kept_positions(layer).clone() for layer in range(layers)]
            piece = ids[:, start : start + n]
            try:
                got = model(piece, cache=cache, use_cache=True).logits
            except RuntimeError as exc:
                raise AssertionError(f"{spec.name} (budget={budget!r}): {what} after eviction raises {exc}") from exc
            want = reference_step(model, piece, start, kv, kept)
            err = (got - want).abs().max().item()
            if err > F64_TOL:
                raise AssertionError(
                    f"{spec.name} (budget={budget!r}): {what} at position {start} differs by {err:.3e} from dense "
                    "attention over the kept keys plus the new tokens"
                )
            start += n


@_one_thread
def check_cache_reset(spec: Any) -> None:
    """``reset()`` empties the cache and a second run on it equals the first."""
    spec = _check_spec(spec)
    model = tiny_llama()
    ids = _prompts(2, seed=5)
    cache = _new_cache(model, make_policy(spec, 6))
    tok1, logits1 = _generate(model, ids, cache)
    cache.reset()
    if cache.get_seq_length() != 0 or cache.nbytes() != 0:
        raise AssertionError(
            f"{spec.name}: after reset() the cache still holds {cache.get_seq_length()} tokens, {cache.nbytes()} bytes"
        )
    tok2, logits2 = _generate(model, ids, cache)
    if not torch.equal(tok1, tok2) or not torch.equal(logits1, logits2):
        raise AssertionError(
            f"{spec.name}: a run after reset() differs from the first run (tokens {tok1.tolist()} vs {tok2.tolist()})"
        )


@_one_thread
def check_cache_memory_shrinks(spec: Any) -> None:
    """At a 25% budget the cache holds at most 30% of the bytes of a full cache after prefill."""
    from transformers import DynamicCache

    spec = _check_spec(spec)
    if not _has_budget(spec):
        pytest.skip(f"{spec.name} has no budget parameter")
    model = tiny_llama()
    ids = _prompts(1, length=32)
    full = DynamicCache(config=model.config)
    cache = _new_cache(model, make_policy(spec, 0.25))
    with torch.no_grad():
        model(ids, cache=full, use_cache=True)
        model(ids, cache=cache, use_cache=True)
    layers: list[Any] = list(full.layers)
    full_bytes = sum(int(layer.keys.nbytes + layer.values.nbytes) for layer in layers)
    if cache.nbytes() > 0.30 * full_bytes:
        raise AssertionError(
            f"{spec.name}: holds {cache.nbytes()} bytes at budget 0.25, more than 30% of the full cache's {full_bytes}"
        )


@_one_thread
def check_cache_params_validate(spec: Any) -> None:
    """A budget <= 0, a ratio > 1 or a non-number raises ValueError/TypeError naming ``budget``."""
    spec = _check_spec(spec)
    if not _has_budget(spec):
        pytest.skip(f"{spec.name} has no budget parameter")
    for bad, exc in ((0, ValueError), (-3, ValueError), (0.0, ValueError), (1.5, ValueError), ("8", TypeError)):
        try:
            spec.make_params(budget=bad)
        except exc as e:
            if "budget" not in str(e):
                raise AssertionError(
                    f"{spec.name}: budget={bad!r} raised {type(e).__name__} not naming 'budget': {e}"
                ) from e
        else:
            raise AssertionError(f"{spec.name}: budget={bad!r} did not raise {exc.__name__}")


#: name -> check function.
CACHE_CHECKS: dict[str, Callable[[Any], None]] = {
    fn.__name__: fn
    for fn in (
        check_cache_full_budget_equals_full,
        check_cache_budget_respected,
        check_cache_always_kept,
        check_cache_batch_independence,
        check_cache_left_padding,
        check_cache_multi_token_after_eviction,
        check_cache_reset,
        check_cache_memory_shrinks,
        check_cache_params_validate,
    )
}


#: check name -> ``(spec) -> bool``: the budget checks apply only to a policy with a budget.
CACHE_APPLIES: dict[str, Callable[[Any], bool]] = dict.fromkeys(
    ("check_cache_budget_respected", "check_cache_memory_shrinks", "check_cache_params_validate"), _has_budget
)


def cache_contract_params(specs: Iterable[Any]) -> list[Any]:
    """The ``pytest.param`` list behind :func:`parametrize_with_cache_contract`: values
    ``(spec, check_function)``, ids ``<spec>-<check>``, strict xfails from the spec's
    ``expected_failed_checks``."""
    from attnkit_contract.runner import spec_check_params

    return spec_check_params(
        specs, "cache", CACHE_CHECKS, CACHE_BACKEND, "parametrize_with_cache_contract", applies=CACHE_APPLIES
    )


def parametrize_with_cache_contract(specs: Iterable[Any]) -> Callable[[F], F]:
    """Parametrise a test over every ``(cache spec, check)``::

        @parametrize_with_cache_contract(registry.cache_specs())
        def test_cache_contract(spec, check):
            check(spec)

    .. versionadded:: 0.1
    """
    specs = list(specs)

    def decorate(fn: F) -> F:
        return pytest.mark.parametrize("spec, check", cache_contract_params(specs))(fn)

    return decorate
