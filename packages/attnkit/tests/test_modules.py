"""attnkit.modules and the built-in ``mha`` module spec, against hand-written float64 math."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from attnkit import AttentionSpec
from attnkit.modules import ModuleConfig, MultiHeadAttention, aux_loss, build_module, from_pretrained_attention
from attnkit.testing import BAND, band_brute_force_mask, registered_specs

F64 = torch.float64


def hand_mha(m: MultiHeadAttention, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit einsum-softmax MHA from ``m``'s weights; GQA by index ``h // group``.

    :param allowed: bool ``(T, T)`` "query may see key" (default: causal or all).
    """
    c = m.config
    b, t, _ = x.shape
    q = (x @ m.q_proj.weight.T + m.q_proj.bias).view(b, t, c.heads, c.d_head)
    k = (x @ m.k_proj.weight.T + m.k_proj.bias).view(b, t, c.n_kv_heads, c.d_head)
    v = (x @ m.v_proj.weight.T + m.v_proj.bias).view(b, t, c.n_kv_heads, c.d_head)
    kv_of = torch.arange(c.heads) // (c.heads // c.n_kv_heads)
    logits = torch.einsum("bthd,bshd->bhts", q, k[:, :, kv_of]) * c.d_head**-0.5
    if allowed is None:
        allowed = torch.ones(t, t, dtype=torch.bool)
        if c.causal:
            allowed = allowed.tril()
    logits = logits.masked_fill(~allowed, float("-inf"))
    z = torch.einsum("bhts,bshd->bthd", logits.softmax(-1), v[:, :, kv_of])
    return z.reshape(b, t, -1) @ m.o_proj.weight.T + m.o_proj.bias


def make(config: ModuleConfig, **kw: object) -> MultiHeadAttention:
    torch.manual_seed(0)
    return MultiHeadAttention(config, **kw).double()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dim": 0, "heads": 2}, ValueError, "dim"),
        ({"dim": 8, "heads": True}, ValueError, "heads"),
        ({"dim": 10, "heads": 4}, ValueError, "dim=10 is not divisible by heads=4"),
        ({"dim": 8, "heads": 4, "kv_heads": 3}, ValueError, "kv_heads must divide heads=4"),
        ({"dim": 8, "heads": 2, "head_dim": 0}, ValueError, "head_dim"),
        ({"dim": 8, "heads": 2, "bias": "no"}, TypeError, "ModuleConfig.bias must be a bool"),
        ({"dim": 8, "heads": 2, "causal": 1}, TypeError, "ModuleConfig.causal must be a bool"),
    ],
)
def test_config_validation(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ModuleConfig(**kwargs)


def test_config_defaults() -> None:
    c = ModuleConfig(dim=12, heads=3)
    assert (c.n_kv_heads, c.d_head) == (3, 4)
    assert ModuleConfig(dim=10, heads=4, head_dim=5).d_head == 5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2), (4, 1)])
def test_dense_matches_hand_written(causal: bool, heads: int, kv_heads: int) -> None:
    m = make(ModuleConfig(dim=16, heads=heads, kv_heads=kv_heads, causal=causal))
    x = torch.randn(2, 6, 16, dtype=F64)
    torch.testing.assert_close(m(x), hand_mha(m, x), atol=1e-12, rtol=1e-12)


def test_gqa_never_expands_kv() -> None:
    m = make(ModuleConfig(dim=16, heads=4, kv_heads=1))
    q, k, v = m.heads(torch.randn(2, 5, 16, dtype=F64))
    assert q.shape == (2, 4, 5, 4) and k.shape == v.shape == (2, 1, 5, 4)
    assert m.k_proj.weight.shape == (4, 16)  # one kv head's worth of projection


def test_causal_never_reads_future() -> None:
    m = make(ModuleConfig(dim=8, heads=2, causal=True))
    x = torch.randn(1, 7, 8, dtype=F64)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 3, 8, dtype=F64) * 5
    torch.testing.assert_close(m(x)[:, :4], m(y)[:, :4], atol=0, rtol=0)
    assert not torch.allclose(m(x)[:, 4:], m(y)[:, 4:])


@pytest.fixture
def band() -> Iterator[AttentionSpec]:
    """``testing.band`` (local-window attention from :mod:`attnkit.testing`), registered for
    one test: a non-dense kernel that needs no plugin installed."""
    with registered_specs(BAND) as (spec,):
        yield spec


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 2)])
def test_non_dense_kernel_matches_brute_force_mask(
    band: AttentionSpec, causal: bool, heads: int, kv_heads: int
) -> None:
    config = ModuleConfig(dim=16, heads=heads, kv_heads=kv_heads, causal=causal)
    m = make(config, kernel=band.name, kernel_params={"window": 2})
    assert m.kernel.name == band.name and m.kernel_params.window == 2
    x = torch.randn(2, 9, 16, dtype=F64)
    q_shape, kv_shape = (2, heads, 9, config.d_head), (2, kv_heads, 9, config.d_head)
    allowed = band_brute_force_mask(band.make_params(window=2), q_shape, kv_shape, causal)
    dense = torch.ones_like(allowed).tril() if causal else torch.ones_like(allowed)
    assert not torch.equal(allowed, dense)  # the band masks keys dense attention would see
    torch.testing.assert_close(m(x), hand_mha(m, x, allowed), atol=1e-12, rtol=1e-12)


def test_build_module_from_kernel_and_module_specs() -> None:
    config = ModuleConfig(dim=8, heads=2)
    by_kernel = build_module("dense", config)
    assert isinstance(by_kernel, MultiHeadAttention) and by_kernel.kernel.name == "dense"
    by_module = build_module("mha", config, kernel="dense")
    assert isinstance(by_module, MultiHeadAttention)
    by_module.load_state_dict(by_kernel.state_dict())
    x = torch.randn(1, 4, 8)
    torch.testing.assert_close(by_module(x), by_kernel(x))
    with pytest.raises(TypeError, match="kernel_params"):
        build_module("mha", config, kernel_params=[("kernel_size", 3)])
    with pytest.raises(ValueError, match="unknown attention spec 'nope'"):
        build_module("mha", config, kernel="nope")
    with pytest.raises(TypeError, match="unknown parameter"):
        build_module("mha", config, kernel_params={"kernel_size": 3})
    with pytest.raises(TypeError, match="build_module needs"):
        build_module(object(), config)


def test_from_pretrained_round_trip() -> None:
    source = make(ModuleConfig(dim=8, heads=4, kv_heads=2, causal=True))
    copy = from_pretrained_attention("mha", source)
    assert isinstance(copy, MultiHeadAttention) and copy is not source
    for (name, a), (_, b) in zip(source.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    x = torch.randn(2, 5, 8, dtype=F64)
    assert torch.equal(copy(x), source(x))
    with pytest.raises(ValueError, match="cannot be built from a pretrained"):
        from_pretrained_attention("dense", source)
    with pytest.raises(TypeError, match="MultiHeadAttention"):
        from_pretrained_attention("mha", torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_from_pretrained_swaps_kernel(band: AttentionSpec) -> None:
    source = make(ModuleConfig(dim=8, heads=2))
    wide = from_pretrained_attention("mha", source, kernel=band.name, kernel_params={"window": 4})
    assert wide.kernel.name == band.name
    x = torch.randn(1, 5, 8, dtype=F64)
    # A window as wide as the sequence sees every key: the same function as the dense source.
    torch.testing.assert_close(wide(x), source(x), atol=1e-12, rtol=1e-12)
    # A narrower one keeps the weights but not the function.
    narrow = from_pretrained_attention("mha", source, kernel=band.name, kernel_params={"window": 1})
    allowed = band_brute_force_mask(band.make_params(window=1), (1, 2, 5, 4), (1, 2, 5, 4), False)
    torch.testing.assert_close(narrow(x), hand_mha(source, x, allowed), atol=1e-12, rtol=1e-12)
    assert not torch.allclose(narrow(x), source(x))


def test_aux_loss_sums_submodules() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    assert float(aux_loss(model)) == 0.0
    model[0].aux_loss = torch.tensor(1.5)
    model[2].aux_loss = torch.tensor(0.25)
    model[1].aux_loss = None
    assert float(aux_loss(model)) == 1.75
    m = make(ModuleConfig(dim=8, heads=2))
    m(torch.randn(1, 3, 8, dtype=F64))
    assert float(aux_loss(m)) == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.int64, torch.float16])
def test_input_dtype_must_match_the_weights(dtype: torch.dtype) -> None:
    m = MultiHeadAttention(ModuleConfig(dim=8, heads=2))
    x = torch.ones(1, 4, 8, dtype=dtype)
    with pytest.raises(TypeError, match=rf"x has dtype {dtype} but the module's weights are torch.float32"):
        m(x)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        m([[0.0] * 8])
    assert m.double()(torch.ones(1, 4, 8, dtype=torch.float64)).dtype == torch.float64


def test_autocast_may_feed_a_lower_precision_input() -> None:
    m = MultiHeadAttention(ModuleConfig(dim=8, heads=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.ones(1, 4, 8, dtype=torch.bfloat16))
    assert out.shape == (1, 4, 8)


def test_build_module_takes_mappings_or_says_what_it_expects() -> None:
    by_dict = build_module("mha", {"dim": 8, "heads": 2}, {"kernel": "dense"})
    assert isinstance(by_dict, MultiHeadAttention) and by_dict.config == ModuleConfig(dim=8, heads=2)
    assert build_module("dense", {"dim": 8, "heads": 2, "causal": True}).config.causal
    with pytest.raises(TypeError, match=r"config must be a ModuleConfig or a mapping of its fields.*got list"):
        build_module("mha", [8, 2])
    with pytest.raises(TypeError, match=r"params must be a mapping of parameter names to values, got str"):
        build_module("mha", ModuleConfig(dim=8, heads=2), "dense")
