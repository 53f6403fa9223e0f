"""Export a transformers language model, patched with an attnkit attention spec, to ONNX.

The graph maps ``input_ids (B, T) int64`` to ``logits (B, T, V)`` for a prompt (prefill, no
KV cache), with dynamic batch and sequence axes. While exporting, the spec runs a backend
marked ``traceable`` (its ONNX formulation).

>>> from attnkit.export.model import export_model
>>> info = export_model("smollm2", "smollm2-dense.onnx", attention="dense")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["ExportReport", "LogitsOnly", "check_model_attention_args", "compare_onnx_logits", "export_model", "latency"]


class LogitsOnly(nn.Module):
    """``forward(input_ids (B, T)) -> logits (B, T, V)`` of a causal LM, without a cache."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


@dataclass
class ExportReport:
    """What :func:`export_model` did and measured."""

    path: str
    attention: str
    params: dict[str, Any]
    trace_length: int
    size_bytes: int
    export_seconds: float
    max_abs_diff: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "attention": self.attention,
            "params": self.params,
            "trace_length": self.trace_length,
            "size_bytes": self.size_bytes,
            "export_seconds": round(self.export_seconds, 2),
            "max_abs_diff": {str(k): v for k, v in self.max_abs_diff.items()},
        }


def _model(model: Any) -> tuple[nn.Module, Any]:
    if isinstance(model, str):
        from attnkit.models import load

        return load(model)
    return model, None


def check_model_attention_args(
    model: nn.Module,
    attention: str,
    attention_params: Mapping[str, Any] | None,
    lengths: Sequence[int],
    *,
    batch: int = 2,
) -> None:
    """Check that ``attention`` with ``attention_params`` can run in ``model``'s attention
    layers at each prompt length, before anything is traced: the q/k/v shapes come from the
    model's config (query / KV heads, head dim), causality from its attention modules.

    :raises ValueError, TypeError: the spec's own error (a window longer than a length ...).
    """
    from attnkit import get_spec
    from attnkit.export.onnx import check_export_args
    from attnkit.hf.adapter import attention_layers

    spec = get_spec(attention, "attention")
    params = dict(attention_params or {})
    config: Any = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(heads, int) or heads < 1:
        spec.make_params(**params)  # no config to take shapes from: the parameters alone
        return
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    modules = attention_layers(model).attention
    causal = bool(modules) and bool(getattr(modules[0], "is_causal", False))
    shapes = [(batch, heads, n, head_dim) for n in lengths]
    check_export_args(spec, shapes, kv_heads=kv_heads, is_causal=causal, **params)


def export_model(
    model: Any,
    path: str | os.PathLike[str],
    *,
    attention: str = "dense",
    attention_params: Mapping[str, Any] | None = None,
    trace_length: int = 16,
    check_lengths: Sequence[int] = (7, 33),
    opset: int = 18,
    max_length: int = 8192,
) -> ExportReport:
    """Export ``model`` (a name from :data:`attnkit.models.PRETRAINED` or a transformers causal
    LM) running ``attention`` to ``path`` and compare onnxruntime with torch.

    :param trace_length: prompt length used for tracing.
    :param check_lengths: other lengths the exported graph is run at and compared with the
        patched torch model (max absolute logit difference reported); ``()`` skips the check.
    :param max_length: upper bound of the dynamic sequence axis.
    :raises ValueError: when a length is not positive or exceeds ``max_length``, or (before
        tracing) when the attention parameters do not fit a length
        (:func:`check_model_attention_args`).
    """
    import attnkit
    from attnkit.export.onnx import to_onnx

    for name, value in (("trace_length", trace_length), *(("check_lengths", n) for n in check_lengths)):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= max_length:
            raise ValueError(f"{name} must be ints in [2, max_length={max_length}], got {value!r}")
    if os.path.isdir(os.fspath(path)):
        raise ValueError(f"path {os.fspath(path)!r} is a directory; give the .onnx file to write")
    hf, _ = _model(model)
    hf = hf.eval()
    params = dict(attention_params or {})
    check_model_attention_args(hf, attention, params, [trace_length, *check_lengths])
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    os.makedirs(folder, exist_ok=True)
    wrapper = LogitsOnly(hf)
    vocab = int(hf.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, vocab, (2, trace_length), generator=gen)  # batch 1 would be specialised
    t0 = time.perf_counter()
    with attnkit.patch(hf, attention, attention_params=params):
        to_onnx(
            wrapper,
            [example],
            path,
            input_names=["input_ids"],
            dynamic_axes=[{0: ("batch", 1, 64), 1: ("tokens", 2, max_length)}],
            opset=opset,
        )
    seconds = time.perf_counter() - t0
    report = ExportReport(
        path=os.fspath(path),
        attention=attention,
        params=params,
        trace_length=trace_length,
        size_bytes=_size(path),
        export_seconds=seconds,
    )
    for n in check_lengths:
        ids = torch.randint(0, vocab, (2, n), generator=gen)
        report.max_abs_diff[n] = compare_onnx_logits(hf, path, ids, attention=attention, attention_params=params)
    return report


def _size(path: str | os.PathLike[str]) -> int:
    """Bytes of the graph plus its external-data files (large models store weights beside it)."""
    path = os.fspath(path)
    total = os.path.getsize(path)
    folder = os.path.dirname(os.path.abspath(path))
    data = path + ".data"
    if os.path.exists(data):
        total += os.path.getsize(data)
    elif os.path.isdir(folder):
        stem = os.path.basename(path)
        for f in os.listdir(folder):
            if f != stem and f.startswith(stem) and not f.endswith(".onnx"):
                total += os.path.getsize(os.path.join(folder, f))
    return total


def compare_onnx_logits(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_ids: torch.Tensor,
    *,
    attention: str = "dense",
    attention_params: Mapping[str, Any] | None = None,
) -> float:
    """Max absolute difference between onnxruntime's logits and the patched torch model's."""
    import attnkit
    from attnkit.export.onnx import run_onnx

    with torch.no_grad(), attnkit.patch(model, attention, attention_params=dict(attention_params or {})):
        want = model(input_ids=input_ids, use_cache=False).logits
    (got,) = run_onnx(path, [input_ids])
    return float((torch.from_numpy(got) - want).abs().max())


def latency(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    length: int = 512,
    attention: str = "dense",
    attention_params: Mapping[str, Any] | None = None,
    repeat: int = 5,
) -> dict[str, Any]:
    """Median prefill latency (batch 1, ``length`` tokens) of onnxruntime and of the patched
    torch model in eager mode, measured alternately in one process with the same threads."""
    import statistics

    import onnxruntime as ort

    import attnkit

    threads = torch.get_num_threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    ids = torch.randint(0, int(model.config.vocab_size), (1, length), generator=torch.Generator().manual_seed(1))
    feed = {sess.get_inputs()[0].name: ids.numpy()}
    ort_t, torch_t = [], []
    with torch.no_grad(), attnkit.patch(model, attention, attention_params=dict(attention_params or {})):
        sess.run(None, feed)  # warm-up both
        model(input_ids=ids, use_cache=False)
        for _ in range(repeat):
            t0 = time.perf_counter()
            sess.run(None, feed)
            ort_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=False)
            torch_t.append(time.perf_counter() - t0)
    return {
        "length": length,
        "threads": threads,
        "repeat": repeat,
        "onnxruntime_ms": 1e3 * statistics.median(ort_t),
        "torch_ms": 1e3 * statistics.median(torch_t),
    }
