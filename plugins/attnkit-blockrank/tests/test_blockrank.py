"""``blockrank`` against independent oracles: the brute-force mask with attnkit's dense float64
reference, a mask written out by hand, document independence, and the numba kernel's work
plan counted analytically (its cost is linear in the number of documents)."""

from __future__ import annotations

import pytest
import torch
from _blockrank_oracle import dense_oracle, inputs

from attnkit_blockrank import BLOCKRANK, BlockrankParams, cpu
from attnkit_blockrank.masks import brute_force_mask
from attnkit_blockrank.params import segment_bounds
from attnkit_blockrank.tiles import query_tiles, visited_pairs

# (params, Tq, Tk)
LAYOUTS = {
    "open-query": ({"instruction": 2, "documents": (3, 1, 2)}, 13, 13),
    "equal-docs-fixed-query": ({"instruction": 3, "num_documents": 3, "document_len": 4, "query": 2}, 17, 17),
    "no-instruction": ({"documents": (4, 5)}, 11, 11),
    "no-documents": ({"instruction": 3}, 8, 8),
    "queries-are-last-keys": ({"instruction": 3, "documents": (5, 4)}, 7, 15),
    "only-query-rows": ({"instruction": 2, "documents": (4, 4, 4)}, 3, 17),
}


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3-query tiles: several tiles per segment, so tile borders inside segments are exercised.
    monkeypatch.setattr(cpu, "TILE", 3)


def test_brute_force_mask_is_the_papers_rule_written_out() -> None:
    # [I I | d1 d1 | d2 | Q Q]: rows are queries, columns keys; causal.
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0],
            [1, 1, 0, 0, 1, 0, 0],  # document 2 does not see document 1
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    got = brute_force_mask(BlockrankParams(instruction=2, documents=(2, 1)), (1, 1, 7, 4), (1, 1, 7, 4), True)
    assert torch.equal(got, want)
    # Without is_causal: the same blocks, each fully visible.
    got = brute_force_mask(BlockrankParams(instruction=2, documents=(2, 1)), (1, 1, 7, 4), (1, 1, 7, 4), False)
    want_nc = torch.tensor(
        [[1, 1, 0, 0, 0, 0, 0]] * 2 + [[1, 1, 1, 1, 0, 0, 0]] * 2 + [[1, 1, 0, 0, 1, 0, 0]] + [[1] * 7] * 2,
        dtype=torch.bool,
    )
    assert torch.equal(got, want_nc)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend", ["reference", "numba", "onnx"])
def test_matches_dense_under_brute_force_mask(small_tiles, backend, layout, causal, dtype) -> None:  # type: ignore[no-untyped-def]
    params, tq, tk = LAYOUTS[layout]
    q, k, v = inputs(tq, tk, dv=6, dtype=dtype)
    got, lse = BLOCKRANK(q, k, v, is_causal=causal, backend=backend, return_lse=True, **params)
    want, want_lse = dense_oracle(q, k, v, params, causal)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    assert got.dtype == dtype and got.shape == (2, 4, tq, 6)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), want_lse, rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True])
def test_numba_gradients_match_dense_oracle(small_tiles, causal) -> None:  # type: ignore[no-untyped-def]
    params, tq, tk = LAYOUTS["open-query"]
    q, k, v = (x.requires_grad_() for x in inputs(tq, tk))
    out, lse = BLOCKRANK(q, k, v, is_causal=causal, backend="numba", return_lse=True, **params)
    gen = torch.Generator().manual_seed(1)
    w, wl = (
        torch.randn(out.shape, generator=gen, dtype=torch.float64),
        torch.randn(lse.shape, generator=gen, dtype=torch.float64),
    )
    got = torch.autograd.grad((out * w).sum() + (lse * wl).sum(), (q, k, v))
    ref = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    want_out, want_lse = dense_oracle(*ref, params, causal)
    want = torch.autograd.grad((want_out * w).sum() + (want_lse * wl).sum(), ref)
    for name, g, r in zip("qkv", got, want):
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-10, msg=f"d/d{name}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("layout", ["open-query", "queries-are-last-keys"])
def test_triton_matches_dense_under_brute_force_mask(layout, causal) -> None:  # type: ignore[no-untyped-def]
    import attnkit

    params, tq, tk = LAYOUTS[layout]
    q, k, v = inputs(tq, tk, dtype=torch.float32)
    call = attnkit.CallInfo(device=q.device, dtype=q.dtype, q_shape=tuple(q.shape))
    reason = BLOCKRANK.backend("triton").reason_not_to_run(call)
    if reason is not None:
        pytest.skip(reason)
    got, lse = BLOCKRANK(q, k, v, is_causal=causal, backend="triton", return_lse=True, **params)
    want, want_lse = dense_oracle(q, k, v, params, causal)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(lse.double(), want_lse, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("causal", [False, True])
def test_flex_matches_dense_under_brute_force_mask(causal) -> None:  # type: ignore[no-untyped-def]
    params = {"instruction": 5, "documents": (40, 17, 60, 9)}
    q, k, v = inputs(150, 150, dtype=torch.float32)
    got = BLOCKRANK(q, k, v, is_causal=causal, backend="flex", **params)
    want, _ = dense_oracle(q, k, v, params, causal)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_a_document_is_independent_of_the_other_documents(small_tiles, backend) -> None:  # type: ignore[no-untyped-def]
    params = {"instruction": 3, "documents": (4, 5, 3)}
    q, k, v = inputs(18, 18)
    base = BLOCKRANK(q, k, v, is_causal=True, backend=backend, **params)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 7:12] += 5.0  # document 2 (tokens 7..11)
    v2[:, :, 7:12] -= 3.0
    out = BLOCKRANK(q, k2, v2, is_causal=True, backend=backend, **params)
    assert torch.equal(out[:, :, :7], base[:, :, :7])  # instruction and document 1
    assert torch.equal(out[:, :, 12:15], base[:, :, 12:15])  # document 3 (after it)
    assert not torch.equal(out[:, :, 7:12], base[:, :, 7:12])
    assert not torch.equal(out[:, :, 15:], base[:, :, 15:])  # the query sees document 2


def _analytic_pairs(inst: int, n: int, length: int, query: int, causal: bool) -> int:
    """(query, key) pairs the BlockRank mask allows: the cost a kernel visiting only those pays."""
    t = inst + n * length + query
    if causal:
        tri = lambda m: m * (m + 1) // 2  # noqa: E731
        # instruction: causal square; each doc: instruction + own causal square; query rows: all before + causal
        return tri(inst) + n * (length * inst + tri(length)) + query * (t - query) + tri(query)
    return inst * inst + n * length * (inst + length) + query * t


@pytest.mark.parametrize("causal", [False, True])
def test_numba_cost_is_linear_in_the_number_of_documents(causal) -> None:  # type: ignore[no-untyped-def]
    inst, length, query, tile = 16, 32, 8, 16
    counts = {}
    for n in (1, 2, 4, 8, 16, 32, 64):
        params = BlockrankParams(instruction=inst, num_documents=n, document_len=length, query=query)
        t = inst + n * length + query
        plan = query_tiles(segment_bounds(params), t, t, tile, causal)
        counts[n] = visited_pairs(plan)
        allowed = int(brute_force_mask(params, (1, 1, t, 1), (1, 1, t, 1), causal).sum()) if n <= 8 else None
        exact = _analytic_pairs(inst, n, length, query, causal)
        if allowed is not None:
            assert allowed == exact
        # The plan visits the allowed pairs plus, with is_causal, at most one tile's
        # upper triangle per tile: never another document's keys.
        slack = (len(plan) * tile * (tile - 1)) // 2 if causal else 0
        assert exact <= counts[n] <= exact + slack
    # Affine in n: equal increments per added document (second differences 0), far below dense.
    per_doc = [(counts[2 * n] - counts[n]) / n for n in (1, 2, 4, 8, 16, 32)]
    assert max(per_doc) == pytest.approx(min(per_doc), rel=0, abs=1e-9), per_doc
    t64 = inst + 64 * length + query
    assert counts[64] < 0.1 * t64 * t64


def test_plan_covers_exactly_the_rows_keys() -> None:
    params = BlockrankParams(instruction=3, documents=(4, 7, 2, 5))
    t = 26
    for causal in (False, True):
        mask = brute_force_mask(params, (1, 1, t, 1), (1, 1, t, 1), causal)
        for tile, per_segment in ((3, True), (4, False)):
            for p0, p1, a0, a1, b0, b1 in query_tiles(
                segment_bounds(params), t, t, tile, causal, per_segment=per_segment
            ).tolist():
                visited = torch.zeros(t, dtype=torch.bool)
                visited[a0:a1] = True
                visited[b0:b1] = True
                rows = mask[p0:p1]
                assert not (rows & ~visited).any(), "an allowed key outside the tile's ranges"
                if per_segment:  # segment tiles visit nothing that none of their rows may see
                    assert not (visited & ~rows.any(0)).any()


def test_fixed_query_layout_refuses_onnx_export_and_says_why() -> None:
    import attnkit

    info = attnkit.CallInfo(
        device=torch.device("cpu"),
        dtype=torch.float32,
        exporting=True,
        params=BlockrankParams(instruction=2, documents=(3,), query=4),
    )
    reason = BLOCKRANK.backend("onnx").reason_not_to_run(info)
    assert reason is not None and "query=4" in reason and "9 tokens" in reason
    ok = attnkit.CallInfo(
        device=torch.device("cpu"),
        dtype=torch.float32,
        exporting=True,
        params=BlockrankParams(instruction=2, documents=(3,)),
    )
    assert BLOCKRANK.backend("onnx").reason_not_to_run(ok) is None


@pytest.mark.slow
def test_onnx_export_runs_at_two_other_lengths() -> None:
    pytest.importorskip("onnxruntime")
    from attnkit.export import check_attention_export

    for causal in (False, True):
        errors = check_attention_export(
            BLOCKRANK,
            f"/tmp/attnkit-blockrank-test-{causal}.onnx",
            trace_shape=(1, 2, 20, 8),
            test_shapes=[(2, 2, 12, 8), (1, 2, 37, 8)],
            kv_heads=1,
            is_causal=causal,
            instruction=3,
            documents=(4, 2, 3),
        )
        assert errors and all(err <= 1e-5 for err in errors.values()), errors


def test_registered_through_attnkit() -> None:
    import attnkit

    attnkit.load_plugins()
    assert attnkit.get_spec("blockrank").name == "blockrank"


@pytest.mark.parametrize(
    ("kw", "error", "names"),
    [
        ({"instruction": -1}, ValueError, "instruction"),
        ({"instruction": 1.5}, TypeError, "instruction"),
        ({"documents": (3, 0)}, ValueError, r"documents\[1\]"),
        ({"documents": (3, "a")}, TypeError, r"documents\[1\]"),
        ({"documents": 3}, TypeError, "documents"),
        ({"documents": (3,), "num_documents": 2, "document_len": 4}, ValueError, "num_documents"),
        ({"num_documents": 2}, ValueError, "document_len"),
        ({"num_documents": 2, "document_len": 0}, ValueError, "document_len"),
        ({"query": -2}, ValueError, "query"),
        ({"query": True}, TypeError, "query"),
    ],
)
def test_bad_layout_names_the_parameter(kw, error, names) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=names):
        BlockrankParams(**kw)


def test_layout_that_does_not_fit_the_keys_names_the_sizes() -> None:
    q, k, v = inputs(10, 10)
    with pytest.raises(ValueError, match=r"needs at least 12 key tokens, but k has Tk=10"):
        BLOCKRANK(q, k, v, instruction=2, documents=(5, 5))
    with pytest.raises(ValueError, match=r"query=3 is 11 tokens, but k has Tk=10"):
        BLOCKRANK(q, k, v, instruction=2, documents=(3, 3), query=3)
    q2, k2, v2 = inputs(12, 10)
    with pytest.raises(ValueError, match=r"Tq=12 .* Tk=10"):
        BLOCKRANK(q2, k2, v2, instruction=2)
