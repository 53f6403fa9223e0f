"""ONNX export: traced once, run in onnxruntime at two other lengths, compared with the
float64 dense oracle under the brute-force mask (the group size follows the length when it is
derived from ``group_size_ratio``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from _sinklora_oracle import dense_oracle, inputs

from attnkit.export import AttentionModule, run_onnx, to_onnx
from attnkit_sinklora.params import SFAttnParams


@pytest.mark.parametrize(
    ("kw", "causal"),
    [
        ({"group_size_ratio": 0.25, "n_sink": 2}, True),
        # Each export takes seconds: the second runs in the slow tier.
        pytest.param({"group_size": 4, "n_sink": 3, "shifted": True}, False, marks=pytest.mark.slow),
    ],
)
def test_export_runs_at_other_lengths(tmp_path: Path, kw: dict, causal: bool) -> None:
    module = AttentionModule("sf_attn", is_causal=causal, **kw)
    q, k, v = inputs((1, 4, 16, 8), 2, dtype=torch.float32)
    axes = [{0: ("batch", 1, 64), 2: ("tokens", 4, 4096)} for _ in range(3)]
    path = to_onnx(module, [q, k, v], tmp_path / "sf.onnx", input_names=["q", "k", "v"], dynamic_axes=axes)
    for t in (11, 37):
        q, k, v = inputs((2, 4, t, 8), 2, dtype=torch.float32, seed=t)
        (got,) = run_onnx(path, [q, k, v])
        want, _ = dense_oracle(q, k, v, SFAttnParams(**kw), causal, 8**-0.5)
        torch.testing.assert_close(torch.from_numpy(got).double(), want, atol=2e-5, rtol=2e-5)
