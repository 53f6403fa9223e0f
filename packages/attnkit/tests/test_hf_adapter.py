"""attnkit.patch on small randomly initialised transformers models (no download)."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import attnkit  # noqa: E402
from attnkit.runtime import ActivationPatch, Capture, HeadEdit, PatternRedistribute, ScoreEdit  # noqa: E402
from attnkit.testing import TINY_VOCAB as VOCAB  # noqa: E402
from attnkit.testing import band_brute_force_mask, registered_specs, tiny_causal_lm  # noqa: E402


def tiny_llama(impl: str = "sdpa", seed: int = 0, model_type: str = "llama") -> torch.nn.Module:
    return tiny_causal_lm(impl=impl, seed=seed, model_type=model_type)


@pytest.fixture(scope="module")
def llama() -> torch.nn.Module:
    return tiny_llama()


def ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_dense_patch_equals_unpatched(model_type: str) -> None:
    model = tiny_llama(model_type=model_type)
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
        with attnkit.patch(model, "dense"):
            out = model(x).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dense_patch_with_left_padding(llama: torch.nn.Module) -> None:
    x = ids()
    am = torch.ones_like(x)
    am[0, :4] = 0  # first sequence left-padded
    with torch.no_grad():
        ref = llama(x, attention_mask=am).logits
        with attnkit.patch(llama, "dense", backend="reference"):
            out = llama(x, attention_mask=am).logits
    keep = am.bool()
    torch.testing.assert_close(out[keep], ref[keep], atol=1e-5, rtol=1e-5)


def test_generate_with_patch_equals_unpatched(llama: torch.nn.Module) -> None:
    x = ids(batch=1, length=6)
    ref = llama.generate(x, max_new_tokens=6, do_sample=False)
    with attnkit.patch(llama, "dense"):
        out = llama.generate(x, max_new_tokens=6, do_sample=False)
    assert torch.equal(out, ref)


def test_patch_restores_model_even_on_error(llama: torch.nn.Module) -> None:
    before = llama.config._attn_implementation
    with pytest.raises(RuntimeError, match="boom"), attnkit.patch(llama, "dense"):
        assert llama.config._attn_implementation == "attnkit"
        raise RuntimeError("boom")
    assert llama.config._attn_implementation == before
    assert not any(hasattr(m, "_attnkit") for m in llama.modules())
    assert not hasattr(llama, "_attnkit_session")


def test_nested_patch_refused(llama: torch.nn.Module) -> None:
    with attnkit.patch(llama, "dense"), pytest.raises(RuntimeError, match="already patched"), attnkit.patch(llama):
        pass


def test_unsupported_architecture_names_families() -> None:
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(NotImplementedError, match="llama"), attnkit.patch(model, "dense"):
        pass


def test_unknown_spec_lists_available(llama: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="dense"), attnkit.patch(llama, "no-such-kernel"):
        pass


def test_bad_site_pattern_is_an_error(llama: torch.nn.Module) -> None:
    with (
        pytest.raises(ValueError, match="matches no site"),
        attnkit.patch(llama, analyses=[Capture(["blocks.9.attn.hook_z"])]),
    ):
        pass


def test_capture_leaves_logits_unchanged_and_pattern_matches_eager() -> None:
    model = tiny_llama("eager")
    x = ids()
    with torch.no_grad():
        ref = model(x, output_attentions=True)
    model.set_attn_implementation("sdpa")
    cap = Capture(["blocks.{l}.attn.hook_pattern", "blocks.{l}.attn.hook_k", "logits", "blocks.1.hook_resid_post"])
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[cap]):
        out = model(x).logits
    torch.testing.assert_close(out, ref.logits, atol=1e-5, rtol=1e-5)
    for layer in range(2):
        torch.testing.assert_close(
            cap.first(f"blocks.{layer}.attn.hook_pattern"), ref.attentions[layer], atol=1e-6, rtol=1e-5
        )
        assert cap.first(f"blocks.{layer}.attn.hook_k").shape == (2, 2, 12, 16)  # GQA kept: 2 KV heads
    torch.testing.assert_close(cap.first("logits"), out)
    assert cap.result()["blocks.1.hook_resid_post"] == 1


def test_capture_during_generate_one_value_per_step(llama: torch.nn.Module) -> None:
    cap = Capture(["blocks.0.attn.hook_pattern@decode"])
    x = ids(batch=1, length=5)
    with attnkit.patch(llama, analyses=[cap]):
        llama.generate(x, max_new_tokens=4, do_sample=False)
    shapes = [tuple(p.shape) for p in cap["blocks.0.attn.hook_pattern"]]
    assert shapes == [(1, 4, 1, 5 + i) for i in range(1, 4)]  # 3 decode steps after the prefill
    for p in cap["blocks.0.attn.hook_pattern"]:
        torch.testing.assert_close(p.sum(-1), torch.ones(1, 4, 1))


def test_zero_head_equals_zeroed_o_proj_columns() -> None:
    model = tiny_llama()
    x = ids()
    with torch.no_grad():
        with attnkit.patch(model, analyses=[HeadEdit({1: [2]}, mode="zero")]):
            out = model(x).logits
        w = model.model.layers[1].self_attn.o_proj.weight
        saved = w.clone()
        w[:, 2 * 16 : 3 * 16] = 0
        ref = model(x).logits
        w.copy_(saved)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_scale_one_and_mean_modes() -> None:
    model = tiny_llama()
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
        with attnkit.patch(model, analyses=[HeadEdit({0: [0, 1]}, mode="scale", factor=1.0)]):
            same = model(x).logits
        with attnkit.patch(model, analyses=[HeadEdit({0: [0, 1]}, mode="mean")]):
            changed = model(x).logits
    torch.testing.assert_close(same, ref, atol=1e-6, rtol=1e-6)
    assert (changed - ref).abs().max() > 1e-3


def test_score_mask_equals_padding_mask_on_those_keys() -> None:
    model = tiny_llama()
    x = ids()
    span = (3, 6)
    am = torch.ones_like(x)
    am[:, span[0] : span[1]] = 0
    with torch.no_grad():
        ref = model(x, attention_mask=am).logits
        with attnkit.patch(model, analyses=[ScoreEdit([0, 1], span=span, mode="mask")]):
            out = model(x).logits
        with attnkit.patch(model, analyses=[PatternRedistribute([0, 1], span=span, factor=0.0)]):
            redistributed = model(x).logits
    later = slice(span[1], None)  # rows after the span see exactly the same keys
    torch.testing.assert_close(out[:, later], ref[:, later], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(redistributed[:, later], ref[:, later], atol=1e-5, rtol=1e-5)


def test_boost_moves_attention_to_span() -> None:
    model = tiny_llama()
    x = ids(batch=1)
    cap0, cap1 = Capture(["blocks.0.attn.hook_pattern"]), Capture(["blocks.0.attn.hook_pattern"])
    with torch.no_grad():
        with attnkit.patch(model, analyses=[cap0]):
            model(x)
        with attnkit.patch(model, analyses=[ScoreEdit({0: [1]}, span=(0, 2), mode="boost", amount=5.0), cap1]):
            model(x)
    p0, p1 = cap0.first("blocks.0.attn.hook_pattern"), cap1.first("blocks.0.attn.hook_pattern")
    assert (p1[0, 1, 4:, :2].sum(-1) > p0[0, 1, 4:, :2].sum(-1)).all()
    torch.testing.assert_close(p1[0, 0], p0[0, 0])  # other heads untouched


def test_activation_patching_restores_clean_logits() -> None:
    model = tiny_llama()
    clean, corrupt = ids(seed=1), ids(seed=2)
    cap = Capture(["blocks.1.hook_resid_post", "blocks.{l}.attn.hook_z"])
    with torch.no_grad():
        with attnkit.patch(model, analyses=[cap]):
            ref = model(clean).logits
        with attnkit.patch(model, analyses=[ActivationPatch(cap, ["blocks.1.hook_resid_post"])]):
            patched = model(corrupt).logits
        with attnkit.patch(model, analyses=[ActivationPatch(cap, ["blocks.1.attn.hook_z"], heads=[0], positions=[11])]):
            partial = model(corrupt).logits
        base = model(corrupt).logits
    torch.testing.assert_close(patched, ref, atol=1e-5, rtol=1e-5)
    # one head at the last position changes only the last position's logits
    torch.testing.assert_close(partial[:, :11], base[:, :11], atol=1e-5, rtol=1e-5)
    assert (partial[:, 11] - base[:, 11]).abs().max() > 1e-4


def test_activation_patch_of_a_decode_step_over_a_cache_filled_earlier() -> None:
    # The clean run captures one decode step (its capture index 0); the patched session sees
    # that step as run.step == 1 because the cache already holds the prompt.
    from transformers import DynamicCache

    model = tiny_llama()
    prompt, clean_tok, corrupt_tok = (
        ids(batch=1, length=8),
        ids(batch=1, length=1, seed=2),
        ids(batch=1, length=1, seed=3),
    )
    with torch.no_grad():
        cache = DynamicCache()
        model(prompt, past_key_values=cache)
        cap = Capture(["blocks.1.hook_resid_post"])
        with attnkit.patch(model, analyses=[cap]):
            ref = model(clean_tok, past_key_values=copy.deepcopy(cache)).logits
        with attnkit.patch(
            model, analyses=[ActivationPatch(cap, ["blocks.1.hook_resid_post"], step=1, source_index=0)]
        ):
            patched = model(corrupt_tok, past_key_values=copy.deepcopy(cache)).logits
        base = model(corrupt_tok, past_key_values=copy.deepcopy(cache)).logits
    torch.testing.assert_close(patched, ref, atol=1e-5, rtol=1e-5)
    assert (base - ref).abs().max() > 1e-4
    with pytest.raises(ValueError, match="source_index 3 out of range"):
        ActivationPatch(cap, ["blocks.1.hook_resid_post"], source_index=3)


def test_run_sees_the_callers_padding_mask() -> None:
    class Seen:
        def __init__(self) -> None:
            self.masks: list = []

        @attnkit.hookimpl
        def attnkit_sites(self) -> list[str]:
            return ["blocks.0.attn.hook_z"]

        @attnkit.hookimpl
        def attnkit_capture(self, site, layer, tensor, run) -> None:
            self.masks.append(run.attention_mask)

    model = tiny_llama()
    x = ids(batch=2, length=6)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0
    seen = Seen()
    with torch.no_grad(), attnkit.patch(model, analyses=[seen]):
        model(x, attention_mask=mask)
        model(x)
    assert torch.equal(seen.masks[0], mask) and seen.masks[1] is None


def test_layers_option_leaves_other_layers_on_transformers_attention(llama: torch.nn.Module) -> None:
    cap = Capture(["blocks.{l}.attn.hook_z"])
    x = ids()
    with torch.no_grad():
        ref = llama(x).logits
        with attnkit.patch(llama, layers=[1], analyses=[cap]):
            out = llama(x).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert set(cap) == {"blocks.1.attn.hook_z"}


def test_plugin_kernel_in_a_real_model_matches_dense_under_its_mask() -> None:
    model = tiny_llama()
    x = ids(length=16)
    with registered_specs() as (spec,):
        params = spec.make_params(window=3)
        allowed = band_brute_force_mask(params, (2, 4, 16, 16), (2, 2, 16, 16), True)
        with torch.no_grad():
            with attnkit.patch(model, spec.name, attention_params={"window": 3}):
                out = model(x).logits
            ref = model(x, attention_mask=allowed[None, None].expand(2, 1, 16, 16)).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bad_attention_params_raise(llama: torch.nn.Module) -> None:
    with (
        registered_specs() as (spec,),
        pytest.raises((ValueError, TypeError), match="window"),
        attnkit.patch(llama, spec.name, attention_params={"window": -3}),
    ):
        pass


def test_uniform_head_outputs_mean_of_visible_values() -> None:
    model = tiny_llama()
    x = ids(batch=1, length=8)
    cap = Capture(["blocks.0.attn.hook_v", "blocks.0.attn.hook_z"])
    with torch.no_grad(), attnkit.patch(model, analyses=[ScoreEdit({0: [3]}, mode="uniform"), cap]):
        model(x)
    v, z = cap.first("blocks.0.attn.hook_v"), cap.first("blocks.0.attn.hook_z")
    # head 3 belongs to KV head 1 (4 query heads, 2 KV heads); causal: row t averages v[:t+1]
    expect = v[0, 1].cumsum(0) / torch.arange(1, 9)[:, None]
    torch.testing.assert_close(z[0, 3], expect, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("policy", ["window", "sink_window", "h2o"])
def test_cache_policy_through_patch_equals_reference_cache_attention(policy: str) -> None:
    """attnkit.patch's attention with a policy == the cache module's own reference attention."""
    from attnkit.cache import AttnkitCache, build_policy
    from attnkit.cache.attention import REFERENCE_NAME, register_reference_attention

    if policy not in {s.name for s in attnkit.list_specs("cache")}:
        pytest.skip(f"cache policy {policy!r} not installed")
    model = tiny_llama().double()
    model.generation_config.eos_token_id = None
    x = ids(batch=2, length=20)
    register_reference_attention()
    model.set_attn_implementation(REFERENCE_NAME)
    ref_cache = AttnkitCache(build_policy(policy, budget=8), config=model.config)
    want = model.generate(x, cache=ref_cache, max_new_tokens=6, do_sample=False)
    model.set_attn_implementation("sdpa")
    with attnkit.patch(model, "dense", cache=policy, cache_params={"budget": 8}) as session:
        cache = session.new_cache()
        got = model.generate(x, cache=cache, max_new_tokens=6, do_sample=False)
        auto = model.generate(x, max_new_tokens=6, do_sample=False)  # the patch supplies a fresh cache
    assert torch.equal(got, want) and torch.equal(auto, want)
    assert cache.nbytes() == ref_cache.nbytes() < 26 * 2 * 2 * 16 * 8 * 2 * 2  # < full K/V bytes


# -- arguments patch() refuses ----------------------------------------------------------------


@pytest.mark.parametrize("layers", [[True], [0, False], "01", [2], [-1], [0.0]])
def test_layers_must_be_block_indices(llama: torch.nn.Module, layers: object) -> None:
    with pytest.raises((ValueError, TypeError), match="layers"), attnkit.patch(llama, layers=layers):  # type: ignore[arg-type]
        pass


def test_cache_params_without_a_cache_are_refused(llama: torch.nn.Module) -> None:
    with (
        pytest.raises(ValueError, match=r"cache_params \['budget'\] were given without cache="),
        attnkit.patch(llama, cache_params={"budget": 8}),
    ):
        pass


def test_cache_compress_through_patch(llama: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="cache_compress must be one of"), attnkit.patch(llama, cache_compress="once"):
        pass
    ids = torch.randint(0, 97, (1, 40))
    with attnkit.patch(llama, cache="window", cache_params={"budget": 8}, cache_compress="prompt") as session:
        cache = session.new_cache()
        with torch.no_grad():
            llama(input_ids=ids, cache=cache, use_cache=True)
            llama(input_ids=ids[:, :5], cache=cache, use_cache=True)  # an appended question
    assert cache.policy.compress == "prompt" and cache.policy.stored_length(0) == 8 + 5


def test_a_cache_on_an_encoder_is_refused() -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    bert = transformers.BertModel(config).eval()
    with (
        pytest.raises(ValueError, match=r"cache= applies to decoder models.*bert encoder"),
        attnkit.patch(bert, cache="window", cache_params={"budget": 4}),
    ):
        pass


def test_a_kernel_that_cannot_decode_refuses_generate_before_the_prefill(llama: torch.nn.Module) -> None:
    from attnkit.testing import SELF_ONLY

    x = ids(batch=1, length=8)
    with registered_specs(SELF_ONLY, name="adapter-self-only") as (spec,):
        with (
            pytest.raises(ValueError, match=r"needs decode steps, but testing\.selfonly cannot decode"),
            attnkit.patch(llama, spec.name, cache="window", cache_params={"budget": 4}),
        ):
            pass
        calls = []
        with attnkit.patch(llama, spec.name) as session:
            # A prompt-only forward still runs (export, analyses over prompts) ...
            with torch.no_grad():
                llama(x)
            original = session.attend
            session.attend = lambda *a, **k: calls.append(1) or original(*a, **k)  # type: ignore[method-assign]
            # ... but generate is refused at once, before any attention is computed.
            with pytest.raises(
                ValueError, match=r"model\.generate under attnkit\.patch: testing\.selfonly cannot decode"
            ):
                llama.generate(x, max_new_tokens=2, do_sample=False)
        assert calls == []


def test_attn_out_and_mlp_out_add_up_to_the_residual_stream() -> None:
    """Llama block: resid_post = resid_pre + attn_out + mlp_out (the block's own two adds)."""
    model = tiny_llama()
    x = ids()
    sites = ["blocks.{l}.hook_resid_pre", "blocks.{l}.hook_attn_out", "blocks.{l}.hook_mlp_out"]
    cap = Capture([*sites, "blocks.{l}.hook_resid_post"])
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=[cap]):
        model(x)
    for layer in range(2):
        pre, attn, mlp, post = (
            cap.first(f"blocks.{layer}.{s}")
            for s in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")
        )
        assert attn.shape == mlp.shape == pre.shape == (2, 12, model.config.hidden_size)
        torch.testing.assert_close(post, pre + attn + mlp, atol=1e-6, rtol=1e-6)
        assert float(attn.abs().max()) > 0 and float(mlp.abs().max()) > 0


def test_zeroing_attn_out_equals_a_zeroed_o_proj() -> None:
    model = tiny_llama()
    x = ids()

    class ZeroAttnOut:
        @attnkit.hookimpl
        def attnkit_sites(self) -> list[str]:
            return ["blocks.1.hook_attn_out"]

        @attnkit.hookimpl
        def attnkit_edit(self, site, layer, tensor, run):  # type: ignore[no-untyped-def]
            return torch.zeros_like(tensor)

    with torch.no_grad():
        with attnkit.patch(model, analyses=[ZeroAttnOut()]):
            out = model(x).logits
        proj = model.model.layers[1].self_attn.o_proj
        saved = proj.weight.clone()
        proj.weight.zero_()
        ref = model(x).logits
        proj.weight.copy_(saved)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_bert_attn_out_and_mlp_out_are_the_dense_projections() -> None:
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    bert = transformers.BertModel(config).eval()
    x = ids(length=9)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        bert.encoder.layer[1].attention.output.dense.register_forward_hook(
            lambda m, a, o: seen.__setitem__("attn", o.detach().clone())
        ),
        bert.encoder.layer[1].output.dense.register_forward_hook(
            lambda m, a, o: seen.__setitem__("mlp", o.detach().clone())
        ),
    ]
    with torch.no_grad():
        bert(x)
    for h in handles:
        h.remove()
    cap = Capture(["blocks.1.hook_attn_out", "blocks.1.hook_mlp_out"])
    with torch.no_grad(), attnkit.patch(bert, "dense", analyses=[cap]):
        bert(x)
    torch.testing.assert_close(cap.first("blocks.1.hook_attn_out"), seen["attn"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cap.first("blocks.1.hook_mlp_out"), seen["mlp"], atol=1e-5, rtol=1e-5)


def _zeroed_o_proj_logits(model: torch.nn.Module, x: torch.Tensor, layer: int, head: int) -> torch.Tensor:
    w = model.model.layers[layer].self_attn.o_proj.weight
    saved = w.clone()
    w[:, head * 16 : (head + 1) * 16] = 0
    out = model(x).logits
    w.copy_(saved)
    return out


def test_head_edits_per_batch_row_equal_each_ablation_alone() -> None:
    model = tiny_llama()
    x = ids(batch=3)
    edits = [HeadEdit({1: [2]}, rows=[0]), HeadEdit({0: [1]}, rows=[2])]
    with torch.no_grad():
        with attnkit.patch(model, analyses=edits):
            out = model(x).logits
        plain = model(x).logits
        ref0 = _zeroed_o_proj_logits(model, x[:1], 1, 2)
        ref2 = _zeroed_o_proj_logits(model, x[2:], 0, 1)
    torch.testing.assert_close(out[0], ref0[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], plain[1], atol=1e-5, rtol=1e-5)  # row 1: no edit names it
    torch.testing.assert_close(out[2], ref2[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[0], plain[0], atol=1e-4)


@pytest.mark.parametrize(
    ("rows", "error", "match"),
    [([], ValueError, "at least one"), ([-1], ValueError, "non-negative"), ([0, 0], ValueError, "repeat"),
     ("0", TypeError, "sequence"), ([True], ValueError, "non-negative")],
)  # fmt: skip
def test_head_edit_rows_are_checked(rows: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        HeadEdit({0: [0]}, rows=rows)  # type: ignore[arg-type]


def test_head_edit_row_outside_the_batch_is_named(llama: torch.nn.Module) -> None:
    with (
        torch.no_grad(),
        pytest.raises(ValueError, match=r"rows \[2\] do not exist in a batch of 2"),
        attnkit.patch(llama, analyses=[HeadEdit({0: [0]}, rows=[2])]),
    ):
        llama(ids())


def test_explicit_path_is_a_no_op_sharing_the_edited_runs_numerics() -> None:
    from attnkit.runtime import ExplicitPath

    model = tiny_llama()
    x = ids(batch=1, length=16)
    with torch.no_grad():
        plain = model(x).logits
        with attnkit.patch(model, "dense", analyses=[ExplicitPath()]):
            base = model(x).logits
        with attnkit.patch(model, "dense", analyses=[ScoreEdit([0, 1], (8, 12), mode="mask")]):
            masked = model(x).logits
    torch.testing.assert_close(base, plain, atol=1e-5, rtol=1e-5)
    # queries before the masked span see none of it: bit-identical to the no-op baseline
    assert torch.equal(masked[:, :8], base[:, :8])
    assert not torch.allclose(masked[:, 12:], base[:, 12:], atol=1e-4)
    with pytest.raises(ValueError, match="layers must be non-negative"):
        ExplicitPath([0, -1])
