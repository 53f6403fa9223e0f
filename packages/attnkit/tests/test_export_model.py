"""ONNX export of a transformers model patched with an attnkit spec (tiny random Llama)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from attnkit.export.model import compare_onnx_logits, export_model
from attnkit.testing import registered_specs
from attnkit.testing import tiny_causal_lm as tiny_llama


@pytest.mark.parametrize(
    ("attention", "params"),
    [
        ("dense", {}),
        # A non-dense kernel through its traceable backend; another export: the slow tier.
        pytest.param("testing.band", {"window": 3}, marks=pytest.mark.slow),
    ],
)
def test_export_runs_in_onnxruntime_at_other_lengths(tmp_path, attention, params) -> None:  # type: ignore[no-untyped-def]
    model = tiny_llama()
    with registered_specs():
        report = export_model(
            model,
            tmp_path / "m.onnx",
            attention=attention,
            attention_params=params,
            trace_length=16,
            check_lengths=(7, 33),
        )
        assert set(report.max_abs_diff) == {7, 33}
        assert max(report.max_abs_diff.values()) < 1e-4, report.max_abs_diff
        assert report.size_bytes > 0
        # batch 3 (traced with 2) runs too
        ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(3))
        assert compare_onnx_logits(model, tmp_path / "m.onnx", ids, attention=attention, attention_params=params) < 1e-4


def test_export_rejects_bad_lengths(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="trace_length"):
        export_model(tiny_llama(), tmp_path / "m.onnx", trace_length=1)
