"""The k-hop mask (the paper's checks) and the ``graph_khop`` backends against independent
oracles: hand-written masks on a path graph, the brute-force Python mask, attnkit's dense
float64 attention under it."""

from __future__ import annotations

import random

import pytest
import torch

import attnkit
from attnkit.reference import attention as dense
from attnkit_graph_attention import GRAPH_KHOP, GraphKhopParams
from attnkit_graph_attention.graph import khop_mask
from attnkit_graph_attention.masks import brute_force_mask

# Path a - b - c, one token per node at positions 0, 1, 2.
PATH = {"spans": ((0, 1, 0), (1, 2, 1), (2, 3, 2)), "edges": ((0, 1), (1, 2))}


def _both(params: dict, t: int, causal: bool, tq: int | None = None) -> torch.Tensor:
    p = GraphKhopParams(**params)
    tq = t if tq is None else tq
    bf = brute_force_mask(p, (1, 1, tq, 4), (1, 1, t, 4), causal)
    fast = khop_mask(p, tq, t, causal)
    assert torch.equal(bf, fast), (params, t, tq, causal)
    return bf


def test_path_k1_a_sees_b_not_c() -> None:
    m = _both({**PATH, "hops": 1}, 3, causal=False)
    want = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, want)


def test_path_k2_a_sees_c_and_still_b() -> None:
    # (I + A + A^T)^2: within two hops. The literal (A + A^T)^2 > 0 (walks of exactly two steps)
    # would drop b from a's window on this bipartite path.
    m = _both({**PATH, "hops": 2}, 3, causal=False)
    assert bool(m[0, 2]) and bool(m[0, 1]) and bool(m.all())


def test_causal_without_bidi_is_the_triangle() -> None:
    m = _both({**PATH, "hops": 2}, 3, causal=True)
    assert torch.equal(m, torch.ones(3, 3, dtype=torch.bool).tril())
    m1 = _both({**PATH, "hops": 1}, 3, causal=True)
    assert torch.equal(m1, torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.bool))


def test_bidirectional_opens_node_pairs_only() -> None:
    # Text token at 3 after the path: it stays causal, the node pairs within k look forward.
    m = _both({**PATH, "hops": 1, "bidirectional": True}, 4, causal=True)
    want = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, want)


def test_text_tokens_see_everything_and_are_seen() -> None:
    # positions: 0 text, 1 node a, 2 text, 3 node c (2 hops from a), k = 1
    p = {"spans": ((1, 2, 0), (3, 4, 2)), "edges": ((0, 1), (1, 2)), "hops": 1}
    m = _both(p, 4, causal=False)
    want = torch.ones(4, 4, dtype=torch.bool)
    want[1, 3] = want[3, 1] = False
    assert torch.equal(m, want)


def test_no_nodes_is_plain_attention() -> None:
    assert torch.equal(_both({}, 5, causal=True), torch.ones(5, 5, dtype=torch.bool).tril())
    assert bool(_both({}, 5, causal=False).all())


def _random_params(seed: int) -> dict:
    rng = random.Random(seed)
    n = rng.randint(2, 6)
    edges = tuple({(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, 2 * n))})
    spans, pos = [], rng.randint(0, 2)
    while pos < 20:
        w = rng.randint(1, 3)
        spans.append((pos, pos + w, rng.randrange(n)))
        pos += w + rng.randint(0, 2)
    return {"spans": tuple(spans), "edges": edges, "hops": rng.randint(0, 3), "bidirectional": rng.random() < 0.5}


@pytest.mark.parametrize("seed", range(12))
def test_fast_mask_equals_brute_force(seed: int) -> None:
    p = _random_params(seed)
    for causal in (False, True):
        for t, tq in ((17, 17), (23, 5), (9, 1)):  # spans past the length are clipped
            _both(p, t, causal, tq)


def _qkv(tq=14, tk=14, hq=4, hkv=2, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, hq, tq, d, generator=g, dtype=dtype),
        torch.randn(2, hkv, tk, d, generator=g, dtype=dtype),
        torch.randn(2, hkv, tk, d, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("backend", ["reference", "onnx"])
@pytest.mark.parametrize("seed", [0, 3, 7])
@pytest.mark.parametrize("causal", [False, True])
def test_backends_equal_dense_under_brute_force_mask(backend: str, seed: int, causal: bool) -> None:
    p = _random_params(seed)
    q, k, v = _qkv(tq=6 if seed == 3 else 14, seed=seed)
    allowed = brute_force_mask(GraphKhopParams(**p), tuple(q.shape), tuple(k.shape), causal)
    want, want_lse = dense(q, k, v, mask=allowed, return_lse=True)
    got, lse = GRAPH_KHOP(q, k, v, is_causal=causal, backend=backend, return_lse=True, **p)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=0, atol=1e-12)


def test_reference_ands_a_caller_mask() -> None:
    p = _random_params(1)
    q, k, v = _qkv()
    user = torch.rand(2, 1, 14, 14, generator=torch.Generator().manual_seed(2)) > 0.3
    allowed = brute_force_mask(GraphKhopParams(**p), tuple(q.shape), tuple(k.shape), True) & user
    got = GRAPH_KHOP(q, k, v, is_causal=True, backend="reference", mask=user, **p)
    torch.testing.assert_close(got, dense(q, k, v, mask=allowed), rtol=0, atol=1e-12)


def test_reference_gradients_match_dense() -> None:
    p = _random_params(4)
    leaves = [x.requires_grad_() for x in _qkv()]
    allowed = brute_force_mask(GraphKhopParams(**p), tuple(leaves[0].shape), tuple(leaves[1].shape), True)
    got = torch.autograd.grad(GRAPH_KHOP(*leaves, is_causal=True, backend="reference", **p).sum(), leaves)
    want = torch.autograd.grad(dense(*leaves, mask=allowed).sum(), leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _flex_vs_dense(params: dict, causal: bool, batch: slice) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (x[batch].to(device) for x in _qkv(tq=40, tk=40, dtype=torch.float32))
    allowed = brute_force_mask(GraphKhopParams(**params), tuple(q.shape), tuple(k.shape), causal)
    got = GRAPH_KHOP(q, k, v, is_causal=causal, backend="flex", **params).cpu()
    q, k, v = (x.cpu().double() for x in (q, k, v))
    return float((got.double() - dense(q, k, v, mask=allowed)).abs().max())


def test_flex_equals_dense_on_the_contract_layout() -> None:
    # T = 40 keys: a length where inductor's CPU flex template overflows its logits row on
    # AVX2 CPUs unless the core pads the keys (attnkit.kernels.flex.cpu_kv_padding).
    from attnkit_graph_attention.params import contract_params

    assert _flex_vs_dense(contract_params(40)[0], True, slice(0, 2)) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_flex_equals_dense_under_brute_force_mask(causal: bool) -> None:
    from attnkit_graph_attention.params import contract_params

    for params in [*contract_params(40)[:2], _random_params(5)]:
        assert _flex_vs_dense(params, causal, slice(0, 2)) < 1e-5


@pytest.mark.slow
def test_onnx_runs_at_two_other_lengths_bidirectional_gqa(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("onnxruntime")
    from attnkit.export import check_attention_export

    p = {**PATH, "spans": ((0, 2, 0), (3, 4, 1), (5, 7, 2), (9, 10, 0)), "hops": 1, "bidirectional": True}
    errors = check_attention_export(
        GRAPH_KHOP,
        tmp_path / "khop.onnx",
        trace_shape=(1, 4, 16, 8),
        test_shapes=[(2, 4, 9, 8), (1, 4, 23, 8)],
        kv_heads=2,
        is_causal=True,
        **p,
    )
    assert set(errors) == {(2, 4, 9, 8), (1, 4, 23, 8)}
    assert all(e < 1e-4 for e in errors.values()), errors


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("hops", -1, ValueError),
        ("hops", 1.5, TypeError),
        ("bidirectional", "False", TypeError),  # the paper's argparse type=bool trap
        ("bidirectional", 1, TypeError),
        ("spans", ((0, 3, 0), (2, 4, 1)), ValueError),
        ("spans", ((2, 2, 0),), ValueError),
        ("edges", ((0, -1),), ValueError),
    ],
)
def test_bad_params_name_the_argument(field: str, value: object, error: type) -> None:
    with pytest.raises(error, match=field):
        GraphKhopParams(**{field: value})


def test_tq_above_tk_is_refused_with_sizes() -> None:
    q, k, v = _qkv(tq=5, tk=4)
    with pytest.raises(ValueError, match="Tq=5"):
        GRAPH_KHOP(q, k, v, backend="reference", **PATH)


def test_registered_through_attnkit() -> None:
    attnkit.load_plugins()
    assert attnkit.get_spec("graph_khop", "attention") is not None
    assert attnkit.get_spec("graph_attention", "analysis").name == "graph_attention"
