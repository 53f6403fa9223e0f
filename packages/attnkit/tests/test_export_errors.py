"""ONNX export fails early and with attnkit's own message: parameters are checked at every
shape before tracing, and an attnkit ValueError / TypeError raised while tracing is raised as
itself instead of inside the exporter's error (which carries terminal colour codes)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from attnkit import AttentionSpec, Backend, tensors
from attnkit.export import check_attention_export, to_onnx
from attnkit.export import onnx as export_onnx


def _needs_20_tokens(params, q, k, v, is_causal):  # type: ignore[no-untyped-def]
    if q.shape[-2] < 20:
        raise ValueError(f"needs-long needs at least 20 tokens, got {q.shape[-2]}")


def _dense(q, k, v, *, params, is_causal, scale, return_lse, mask=None):  # type: ignore[no-untyped-def]
    from attnkit.reference import attention

    return attention(q, k, v, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask)


NEEDS_LONG = AttentionSpec(
    name="needs-long", validate=_needs_20_tokens, backends=(Backend("reference", _dense, traceable=True),)
)


@pytest.fixture
def no_tracing(monkeypatch):  # type: ignore[no-untyped-def]
    def traced(*args, **kwargs):  # type: ignore[no-untyped-def]
        pytest.fail("the export was traced before its parameters were checked")

    monkeypatch.setattr(export_onnx, "to_onnx", traced)


@pytest.mark.parametrize(
    ("trace", "checks"), [((1, 2, 16, 8), [(1, 2, 32, 8)]), ((1, 2, 32, 8), [(1, 2, 40, 8), (1, 2, 16, 8)])]
)
def test_check_attention_export_checks_every_shape_before_tracing(trace, checks, tmp_path, no_tracing):
    with pytest.raises(ValueError, match="needs at least 20 tokens, got 16"):
        check_attention_export(NEEDS_LONG, tmp_path / "x.onnx", trace_shape=trace, test_shapes=checks)
    with pytest.raises(ValueError, match="is_causal=True is not supported"):
        check_attention_export(
            AttentionSpec(name="acausal", causal=False, backends=NEEDS_LONG.backends),
            tmp_path / "x.onnx",
            trace_shape=(1, 2, 32, 8),
            test_shapes=[],
            is_causal=True,
        )


class _ChecksScale(torch.nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        tensors.check_scale(float("nan"), q.shape[-1])  # attnkit's own ValueError, while tracing
        return q


class _OwnError(torch.nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        raise ValueError("a user module's own error")


def test_attnkit_error_while_tracing_is_raised_as_itself(tmp_path):
    with pytest.raises(ValueError, match=r"^scale must be finite and non-zero, got nan$") as info:
        to_onnx(_ChecksScale(), [torch.randn(2, 1, 8, 4)], tmp_path / "x.onnx")
    assert "\x1b[" not in str(info.value)
    assert info.value.__cause__ is not None  # the exporter's error stays the cause, for tracebacks
    # Anything else keeps the exporter's error and its guidance.
    with pytest.raises(Exception) as other:
        to_onnx(_OwnError(), [torch.randn(2, 1, 8, 4)], tmp_path / "y.onnx")
    assert not isinstance(other.value, ValueError) and "torch.export" in str(other.value)


def test_export_model_checks_the_attention_parameters_before_tracing(tmp_path, no_tracing):
    pytest.importorskip("transformers")
    from attnkit.export.model import export_model
    from attnkit.testing import registered_specs, tiny_causal_lm

    with pytest.raises(ValueError, match="is a directory"):
        export_model("no-model-is-loaded-first", tmp_path)
    model = tiny_causal_lm()
    with registered_specs(NEEDS_LONG), pytest.raises(ValueError, match="needs at least 20 tokens, got 16"):
        export_model(model, tmp_path / "m.onnx", attention="needs-long", trace_length=24, check_lengths=(16, 33))
    assert not (tmp_path / "m.onnx").exists()
