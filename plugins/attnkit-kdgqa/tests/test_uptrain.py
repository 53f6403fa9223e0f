"""MHA -> GQA up-training init (mean-pooled K/V) and from_pretrained of the three specs."""

from __future__ import annotations

import pytest
import torch

from attnkit.modules import ModuleConfig, MultiHeadAttention, from_pretrained_attention
from attnkit_kdgqa.uptrain import mean_pool_heads, to_gqa

MHA_CFG = ModuleConfig(dim=24, heads=6, kv_heads=6)


def _mha(config: ModuleConfig = MHA_CFG, seed: int = 0, kernel: str = "dense", **kp) -> MultiHeadAttention:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return MultiHeadAttention(config, kernel=kernel, kernel_params=kp).double().eval()


def _x(config: ModuleConfig = MHA_CFG) -> torch.Tensor:
    return torch.randn(2, 9, config.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))


def test_mean_pool_hand_computation():
    heads, groups, d, e = 6, 2, 4, 24
    w = torch.randn(heads * d, e, dtype=torch.float64)
    b = torch.randn(heads * d, dtype=torch.float64)
    got_w, got_b = mean_pool_heads(w, heads, groups), mean_pool_heads(b, heads, groups)
    assert got_w.shape == (groups * d, e) and got_b.shape == (groups * d,)
    for grp in range(groups):
        for r in range(d):
            rows = [h * d + r for h in range(grp * 3, grp * 3 + 3)]  # heads 0-2 -> group 0, 3-5 -> group 1
            assert torch.allclose(got_w[grp * d + r], w[rows].sum(0) / 3, atol=1e-14)
            assert abs(float(got_b[grp * d + r] - b[rows].sum() / 3)) < 1e-14


def test_to_gqa_exact_when_heads_agree_within_groups():
    mha = _mha()
    d = MHA_CFG.d_head
    with torch.no_grad():
        for proj in (mha.k_proj, mha.v_proj):
            for h in range(6):
                src = (h // 3) * 3
                proj.weight[h * d : (h + 1) * d] = proj.weight[src * d : (src + 1) * d]
                proj.bias[h * d : (h + 1) * d] = proj.bias[src * d : (src + 1) * d]
    gqa = to_gqa(mha, 2)
    assert isinstance(gqa, MultiHeadAttention) and gqa.config.n_kv_heads == 2
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-12, rtol=1e-12)
    assert to_gqa(mha, 6).state_dict().keys() == mha.state_dict().keys()  # G = H is a copy
    with torch.no_grad():
        torch.testing.assert_close(to_gqa(mha, 6)(x), mha(x), atol=0, rtol=0)


def test_to_gqa_copies_and_keeps_kernel():
    mha = _mha()
    gqa = to_gqa(mha, 3)
    assert torch.equal(gqa.q_proj.weight, mha.q_proj.weight) and gqa.q_proj.weight is not mha.q_proj.weight
    assert torch.equal(gqa.k_proj.weight, mha.k_proj.weight.view(3, 2, 4, 24).mean(1).reshape(12, 24))
    assert gqa.kernel.name == "dense" and gqa.q_proj.weight.dtype == torch.float64


@pytest.mark.parametrize("spec", ["kdgqa", "dgqa", "pgqa"])
def test_from_pretrained_pools_and_equals_gqa_when_uniform(spec):  # type: ignore[no-untyped-def]
    mha = _mha()
    extra = {"min_queries": 3} if spec != "pgqa" else {}
    mod = from_pretrained_attention(spec, mha, kv_heads=2, **extra)
    assert mod.config.n_kv_heads == 2 and mod.config.heads == 6
    gqa = to_gqa(mha, 2)
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert torch.equal(getattr(mod, name).weight, getattr(gqa, name).weight), name
    assert not mod.training
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(mod(x), gqa(x), atol=1e-12, rtol=1e-12)


def test_from_pretrained_default_kv_heads_and_gqa_source():
    mha = _mha()
    assert from_pretrained_attention("kdgqa", mha).config.n_kv_heads == 3  # heads // 2, the official default
    src = _mha(ModuleConfig(dim=24, heads=6, kv_heads=3))
    mod = from_pretrained_attention("dgqa", src)
    assert mod.config.n_kv_heads == 3 and torch.equal(mod.k_proj.weight, src.k_proj.weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kv_heads": 4}, "kv_heads=4 must divide"), ({"kv_heads": 6}, "kv_heads must be in")],
)
def test_from_pretrained_bad_kv_heads(kwargs, match):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        from_pretrained_attention("kdgqa", _mha(), **kwargs)


def test_from_pretrained_refuses_other_kernels():
    pytest.importorskip("attnkit_neighborhood")  # a second kernel to refuse; absent in plugin-kdgqa alone
    with pytest.raises(ValueError, match="kernel 'neighborhood'"):
        from_pretrained_attention("pgqa", _mha(kernel="neighborhood", kernel_size=3), kv_heads=2)


def test_from_pretrained_refuses_other_types():
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        from_pretrained_attention("kdgqa", torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kv_heads=4 must divide"):
        to_gqa(_mha(), 4)
    with pytest.raises(TypeError, match="kv_heads must be an int"):
        to_gqa(_mha(), 2.0)  # type: ignore[arg-type]
