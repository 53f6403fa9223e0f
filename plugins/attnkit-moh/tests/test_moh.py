"""MoH module against the float64 dense-masked reference, routing properties, the load-balance
loss in closed form, the query-norm router, conversion from MHA and bad parameters."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.modules import ModuleConfig, MultiHeadAttention, build_module, from_pretrained_attention
from attnkit_moh.module import MoHAttention
from attnkit_moh.params import MoHParams, resolve_layout
from attnkit_moh.reference import moh_reference
from attnkit_moh.routing import load_balance_loss

TOL = 1e-12


def _module(heads=8, kv_heads=None, causal=False, dim=32, seed=0, bias=True, **params) -> MoHAttention:
    torch.manual_seed(seed)
    config = ModuleConfig(dim=dim, heads=heads, kv_heads=kv_heads, causal=causal, bias=bias)
    return MoHAttention(config, MoHParams(**params)).double()


def _x(b=3, t=11, dim=32, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


ROUTINGS = [
    pytest.param({"shared_heads": 2, "top_k": 3}, id="learned-h2k3"),
    pytest.param({"shared_heads": 1, "top_k": 2}, id="learned-h1k2"),
    pytest.param({"shared_heads": 0, "top_k": 4}, id="learned-h0k4"),
    pytest.param({"shared_heads": 3, "top_k": 5}, id="learned-all-routed"),
    pytest.param({"shared_heads": 4, "top_k": 2, "router": "query_norm"}, id="query_norm-h4k2"),
]


@pytest.mark.parametrize("path", ["gather", "masked"])
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kv_heads", [8, 2, 1], ids=lambda h: f"kv{h}")
@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
@pytest.mark.parametrize("params", ROUTINGS)
def test_matches_dense_masked_reference(params, causal, kv_heads, mode, path):
    module = _module(kv_heads=kv_heads, causal=causal, bias=kv_heads != 1, path=path, **params)
    module.train(mode == "train")
    x = _x()
    ref = moh_reference(module, x)
    out = module(x).detach()
    assert out.dtype == torch.float64 and out.shape == x.shape
    err = float((out - ref.out).abs().max())
    assert err <= TOL, f"{path} path differs from the dense-masked reference by {err:.3g}"
    assert module.last_routing is not None
    torch.testing.assert_close(module.last_routing.gates.view(3, 11, 8), ref.gates, atol=TOL, rtol=0)
    assert torch.equal(module.last_routing.selected.view(ref.selected.shape), ref.selected)
    if mode == "train" and ref.lb_loss is not None:
        assert module.aux_loss is not None
        torch.testing.assert_close(module.aux_loss, 0.01 * ref.lb_loss, atol=TOL, rtol=0)
    else:
        assert module.aux_loss is None


@pytest.mark.parametrize("causal", [False, True], ids=["encoder", "causal"])
@pytest.mark.parametrize("params", ROUTINGS)
def test_gather_and_masked_gradients_agree(params, causal):
    """The gather path's backward (index_select, bmm, index_add) against the masked one."""
    grads = {}
    x = _x()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for path in ("gather", "masked"):
        module = _module(kv_heads=2, causal=causal, path=path, **params).train()
        xx = x.clone().requires_grad_(True)
        out = module(xx)
        loss = (out * w).sum() + (module.aux_loss if module.aux_loss is not None else 0.0)
        loss.backward()
        grads[path] = {"x": xx.grad, **{n: p.grad for n, p in module.named_parameters()}}
    assert grads["gather"].keys() == grads["masked"].keys()
    for name, g in grads["gather"].items():
        torch.testing.assert_close(g, grads["masked"][name], atol=1e-11, rtol=0, msg=f"gradient of {name}")


def test_exactly_k_routed_heads_and_shared_always_on():
    module = _module(shared_heads=2, top_k=3).eval()
    module(_x(b=4, t=30))
    r = module.last_routing
    assert r is not None
    assert torch.equal(r.selected.sum(-1), torch.full((120,), 3))
    routed_on = r.gates[:, 2:] != 0
    assert torch.equal(routed_on, r.selected), "non-zero routed gates are exactly the picked heads"
    assert (r.gates[:, :2] > 0).all(), "shared heads are on for every token"
    usage = module.last_head_usage
    assert usage is not None and math.isclose(float(usage.sum()), 3.0, rel_tol=1e-12)


def test_gate_sums_with_stage_weights_fixed():
    """With α fixed to (1, 1) (W_h = 0) the routed gates sum to K and the shared ones to h_s."""
    module = _module(shared_heads=3, top_k=2).eval()
    with torch.no_grad():
        module.wg_0.weight.zero_()
    module(_x(b=2, t=17))
    gates = module.last_routing.gates
    torch.testing.assert_close(gates[:, 3:].sum(-1), torch.full((34,), 2.0, dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(gates[:, :3].sum(-1), torch.full((34,), 3.0, dtype=torch.float64), atol=TOL, rtol=0)


def test_single_shared_head_has_constant_gate_and_no_shared_router():
    module = _module(shared_heads=1, top_k=2).eval()
    assert module.wg_1 is None and module.wg is not None and module.wg_0 is not None
    with torch.no_grad():
        module.wg_0.weight.zero_()
    module(_x())
    assert torch.equal(module.last_routing.gates[:, 0], torch.ones(33, dtype=torch.float64))


def test_load_balance_loss_closed_form():
    e, k = 6, 2
    # Balanced: router probabilities uniform, token i picks heads i, i+1 (mod E): each head is
    # picked by K of the E tokens, so l_aux = E * sum_i (1/E)(K/E) = K.
    probs = torch.full((e, e), 1.0 / e, dtype=torch.float64)
    selected = torch.zeros(e, e, dtype=torch.bool)
    for i in range(e):
        selected[i, [i, (i + 1) % e]] = True
    assert float(load_balance_loss(probs, selected)) == pytest.approx(k, abs=1e-15)
    # Collapsed: every token puts probability 1/2 on heads 0 and 1 and picks them:
    # me = (1/2, 1/2, 0, ...), ce = (1, 1, 0, ...), l_aux = E * (1/2 + 1/2) = E > K.
    probs = torch.zeros(e, e, dtype=torch.float64)
    probs[:, :2] = 0.5
    selected = torch.zeros(e, e, dtype=torch.bool)
    selected[:, :2] = True
    assert float(load_balance_loss(probs, selected)) == pytest.approx(e, abs=1e-15)


def test_module_aux_loss_is_weighted_lb_loss_in_training_only():
    module = _module(shared_heads=2, top_k=3, aux_loss_weight=0.5).train()
    x = _x()
    module(x)
    ref = moh_reference(module, x)
    assert module.aux_loss is not None and ref.lb_loss is not None
    torch.testing.assert_close(module.aux_loss, 0.5 * ref.lb_loss, atol=TOL, rtol=0)
    module.eval()
    module(x)
    assert module.aux_loss is None


def test_query_norm_router_picks_largest_query_norms():
    module = _module(shared_heads=4, top_k=2, router="query_norm").eval()
    assert not any(n.startswith("wg") for n, _ in module.named_parameters()), "query_norm is parameter-free"
    x = _x(b=2, t=9)
    module(x)
    q = module.q_proj(x).view(18, 8, 4)
    norms = q[:, 4:].norm(dim=-1)
    expect = torch.zeros(18, 4, dtype=torch.bool)
    for i in range(18):
        expect[i, norms[i].argsort(descending=True)[:2]] = True
    r = module.last_routing
    assert torch.equal(r.selected, expect)
    assert set(r.gates.unique().tolist()) <= {0.0, 1.0}, "query_norm gates are binary"
    assert torch.equal(r.gates[:, :4], torch.ones(18, 4, dtype=torch.float64))
    module.train()
    module(x)
    assert module.aux_loss is None


def test_mha_reduction_is_exact():
    """shared = H, K = 0, W_s = 0: every gate is softmax(0) * H = 1, so MoH is MHA."""
    for causal in (False, True):
        torch.manual_seed(3)
        config = ModuleConfig(dim=32, heads=8, kv_heads=4, causal=causal)
        module = MoHAttention(config, MoHParams(shared_heads=8, top_k=0)).double().eval()
        with torch.no_grad():
            module.wg_1.weight.zero_()
        mha = MultiHeadAttention(config).double().eval()
        mha.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("wg")})
        x = _x()
        torch.testing.assert_close(module(x), mha(x), atol=TOL, rtol=0)


def test_from_pretrained_copies_weights_and_starts_at_unit_gates():
    torch.manual_seed(0)
    config = ModuleConfig(dim=32, heads=8, kv_heads=2, causal=True)
    mha = MultiHeadAttention(config).double().eval()
    moh = from_pretrained_attention("moh", mha, shared_heads=2, top_k=3)
    assert isinstance(moh, MoHAttention) and not moh.training
    for name, p in mha.state_dict().items():
        assert torch.equal(moh.state_dict()[name], p), name
    assert moh.q_proj.weight.data_ptr() != mha.q_proj.weight.data_ptr(), "weights are copied, not shared"
    x = _x()
    moh(x)
    gates = moh.last_routing.gates
    # W_s = 0, W_h = 0: shared gates are 1 and the picked routed gates sum to K (MHA's ones would).
    torch.testing.assert_close(gates[:, :2], torch.ones(33, 2, dtype=torch.float64), atol=TOL, rtol=0)
    torch.testing.assert_close(gates[:, 2:].sum(-1), torch.full((33,), 3.0, dtype=torch.float64), atol=TOL, rtol=0)
    # All heads shared: the converted module is the MHA layer.
    full = from_pretrained_attention("moh", mha, shared_heads=8, top_k=0)
    torch.testing.assert_close(full(x), mha(x), atol=TOL, rtol=0)


def test_from_pretrained_refuses_another_kernel():
    pytest.importorskip("attnkit_neighborhood")  # a second kernel to refuse; absent in plugin-moh alone
    config = ModuleConfig(dim=32, heads=8)
    with pytest.raises(ValueError, match="kernel"):
        from_pretrained_attention("moh", MultiHeadAttention(config, kernel="neighborhood"), shared_heads=2, top_k=3)


def test_auto_path_gathers_in_eager_and_masks_under_export():
    module = _module(shared_heads=2, top_k=3, gather_min_tokens=8).float().eval()
    assert module.choose_path(11) == "gather" and module.choose_path(7) == "masked"
    x = _x().float()
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), module(x), atol=1e-5, rtol=1e-5)
    graph = str(exported.graph)
    assert "index_add" not in graph and "index_select" not in graph, "export traced the masked formulation"


def test_other_kernel_runs_masked_path():
    pytest.importorskip("attnkit_neighborhood")  # a second kernel; absent in plugin-moh alone
    module = _module(shared_heads=2, top_k=3, kernel="neighborhood", kernel_params={"kernel_size": 5}).eval()
    assert module.choose_path() == "masked"
    x = _x(t=12)
    out = module(x)
    # Heads through the neighborhood kernel then gates; its window of 5 on T=12 differs from dense.
    dense = _module(shared_heads=2, top_k=3).eval()
    assert out.shape == x.shape and not torch.allclose(out, dense(x))


@pytest.mark.parametrize(
    ("params", "heads", "match"),
    [
        ({"shared_heads": 9}, 8, r"shared_heads=9 exceeds the module's heads=8"),
        ({"shared_heads": 2, "top_k": 7}, 8, r"top_k=7 exceeds the routed pool .* = 6"),
        ({"shared_heads": 2, "top_k": 0}, 8, r"top_k=0 with 6 routed heads"),
        ({"shared_heads": 6, "active_fraction": 0.5}, 8, r"active_fraction=0.5 gives 4 active heads .* shared_heads=6"),
        ({"shared_heads": 7, "top_k": 1, "router": "query_norm"}, 8, r"pool of >= 2"),
    ],
)
def test_layout_errors_name_parameter_and_sizes(params, heads, match):
    with pytest.raises(ValueError, match=match):
        resolve_layout(MoHParams(**params), heads)
    with pytest.raises(ValueError, match=match):
        build_module("moh", ModuleConfig(dim=32, heads=heads), **params)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"shared_heads": -1}, "shared_heads"),
        ({"shared_heads": 1.5}, "shared_heads"),
        ({"top_k": -2}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"active_fraction": 0.0}, "active_fraction"),
        ({"active_fraction": 1.5}, "active_fraction"),
        ({"active_fraction": float("nan")}, "active_fraction"),
        ({"top_k": 2, "active_fraction": 0.5}, "top_k or active_fraction"),
        ({"router": "noisy"}, "router"),
        ({"aux_loss_weight": -0.1}, "aux_loss_weight"),
        ({"path": "sparse"}, "path"),
        ({"gather_min_tokens": 0}, "gather_min_tokens"),
        ({"path": "gather", "kernel": "neighborhood"}, "kernel='dense'"),
    ],
)
def test_bad_params_raise_value_error(params, match):
    with pytest.raises(ValueError, match=match):
        MoHParams(**params)


def test_bad_kernel_and_input_shape():
    with pytest.raises(ValueError, match="unknown attention spec 'nope'"):
        build_module("moh", ModuleConfig(dim=32, heads=8), kernel="nope")
    with pytest.raises(TypeError, match="unknown parameter"):
        attnkit.get_spec("moh").make_params(topk=2)
    module = _module()
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, E=32\), got \(3, 11, 16\)"):
        module(torch.zeros(3, 11, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="attn_mask"):
        module(_x(), attn_mask=torch.ones(11, 11, dtype=torch.bool))


def test_defaults_resolve_to_three_quarters_active():
    lay = resolve_layout(MoHParams(), 8)
    assert (lay.shared, lay.routed, lay.top_k, lay.active) == (2, 6, 4, 6)
    lay = resolve_layout(MoHParams(shared_heads=2, active_fraction=0.9), 8)
    assert (lay.top_k, lay.active) == (5, 7), "round(0.9 * 8) = 7 active heads"


def test_spec_registered_with_paper():
    spec = attnkit.get_spec("moh", "module")
    assert spec.paper is not None and spec.paper.arxiv == "2410.11842"
    assert spec.bench == "attnkit_moh.bench:run"
