"""The ONNX formulation: eager against the brute-force mask, and exported graphs run in
onnxruntime at token lengths and batch sizes other than the traced ones."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import attnkit
from attnkit.export import check_attention_export
from attnkit.reference import attention
from attnkit_neighborhood import NeighborhoodParams
from attnkit_neighborhood import onnx as na_onnx
from attnkit_neighborhood.masks import brute_force_mask

SPEC = attnkit.get_spec("neighborhood")


@pytest.mark.parametrize(
    ("shape", "hkv", "ks", "dl", "causal"),
    [
        ((2, 2, 17, 8), 1, 4, 3, True),
        ((1, 2, 7, 9, 8), 2, (3, 2), (2, 3), (False, True)),
        ((1, 2, 4, 5, 6, 8), 1, (3, 2, 3), (1, 2, 2), (True, False, False)),
    ],
)
def test_eager_matches_brute_force_float64(shape, hkv, ks, dl, causal):
    gen = torch.Generator().manual_seed(0)
    b, hq, *spatial, d = shape
    q = torch.randn(shape, generator=gen, dtype=torch.float64)
    k = torch.randn(b, hkv, *spatial, d, generator=gen, dtype=torch.float64)
    v = torch.randn(b, hkv, *spatial, d, generator=gen, dtype=torch.float64)
    params = NeighborhoodParams(kernel_size=ks, dilation=dl)
    out, lse = na_onnx.neighborhood_attention(q, k, v, params=params, is_causal=causal, scale=0.3, return_lse=True)
    mask = brute_force_mask(params, shape, tuple(k.shape), causal)
    n = mask.shape[0]
    want, want_lse = attention(
        q.reshape(b, hq, n, d), k.reshape(b, hkv, n, d), v.reshape(b, hkv, n, d), mask=mask, scale=0.3, return_lse=True
    )
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, want.reshape(out.shape), atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, want_lse.reshape(lse.shape), atol=1e-12, rtol=0)


EXPORT_CASES = {
    # name: (trace_shape, test_shapes, kv_heads, is_causal, params)
    "1d": ((2, 2, 16, 8), [(1, 2, 9, 8), (3, 2, 37, 8)], None, False, {"kernel_size": 5}),
    "1d-causal": ((1, 2, 16, 8), [(2, 2, 7, 8), (1, 2, 41, 8)], None, True, {"kernel_size": 5}),
    "1d-dilation-even": ((1, 2, 20, 8), [(2, 2, 13, 8), (1, 2, 31, 8)], None, False, {"kernel_size": 4, "dilation": 3}),
    "2d": (
        (1, 2, 8, 9, 8),
        [(2, 2, 6, 13, 8), (1, 2, 11, 7, 8)],
        None,
        (True, False),
        {"kernel_size": (3, 4), "dilation": (2, 1)},
    ),
    "gqa": ((1, 4, 16, 8), [(2, 4, 15, 8), (1, 4, 29, 8)], 2, False, {"kernel_size": 7, "dilation": 2}),
}


# Each export takes seconds: the default tier exports the 2D case (per-axis causal, dilation),
# the slow tier all of them.
@pytest.mark.parametrize("name", [n if n == "2d" else pytest.param(n, marks=pytest.mark.slow) for n in EXPORT_CASES])
def test_exported_graph_runs_at_other_sizes(name, tmp_path):
    trace_shape, test_shapes, kv_heads, causal, params = EXPORT_CASES[name]
    errors = check_attention_export(
        SPEC,
        tmp_path / f"{name}.onnx",
        trace_shape=trace_shape,
        test_shapes=test_shapes,
        kv_heads=kv_heads,
        is_causal=causal,
        **params,
    )
    assert set(errors) == {tuple(s) for s in test_shapes}
    for shape, err in errors.items():
        assert err < 1e-4, f"{name} at {shape}: max abs error {err:.3g}"
