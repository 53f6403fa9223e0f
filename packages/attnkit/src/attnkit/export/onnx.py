"""Export through ``torch.onnx.export(..., dynamo=True)`` with dynamic batch and token axes,
and run the result in onnxruntime.

While exporting, :func:`attnkit.registry.choose` only picks backends marked ``traceable``, so
a spec whose fast path is a numba or Triton kernel exports its ONNX formulation instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["AttentionModule", "check_attention_export", "run_onnx", "to_onnx"]

DEFAULT_OPSET = 18


class AttentionModule(torch.nn.Module):
    """``forward(q, k, v) -> out`` running one attention spec with fixed parameters.

    :param spec: an :class:`~attnkit.AttentionSpec` or its name.
    :param backend: force a backend; ``None`` lets the registry choose (a traceable one while
        exporting).
    """

    def __init__(
        self,
        spec: Any,
        *,
        backend: str | None = None,
        is_causal: bool | tuple[bool, ...] = False,
        scale: float | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        if isinstance(spec, str):
            from attnkit import get_spec

            spec = get_spec(spec, "attention")
        self.spec = spec
        self.backend = backend
        self.is_causal = is_causal
        self.scale = scale
        self.params = spec.make_params(**params)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.spec(q, k, v, backend=self.backend, is_causal=self.is_causal, scale=self.scale, params=self.params)


def to_onnx(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str] | None = None,
    dynamic_axes: Sequence[dict[int, tuple[str, int, int]]] | None = None,
    opset: int = DEFAULT_OPSET,
) -> str:
    """Export ``module(*args)`` to ``path`` with dynamic axes; returns the path.

    :param dynamic_axes: per input, ``{axis: (name, min, max)}``; axes sharing a name share a
        symbolic size. Default: axis 0 is ``batch`` and every token axis (2 .. ndim-2) of a
        4-D-or-more input is dynamic.
    :raises RuntimeError: when export fails, with the exporter's message.
    """
    from torch.export import Dim

    args = tuple(args)
    if dynamic_axes is None:
        dynamic_axes = [_default_axes(a) for a in args]
    if len(dynamic_axes) != len(args):
        raise ValueError(f"dynamic_axes must have one entry per input; got {len(dynamic_axes)} for {len(args)} inputs")
    dims: dict[str, Any] = {}
    shapes = []
    for axes in dynamic_axes:
        spec = {}
        for axis, (name, lo, hi) in axes.items():
            if name not in dims:
                dims[name] = Dim(name, min=lo, max=hi)
            spec[axis] = dims[name]
        shapes.append(spec)
    names = list(input_names) if input_names is not None else [f"input_{i}" for i in range(len(args))]
    path = os.fspath(path)
    module = module.eval()
    with torch.no_grad():
        program = torch.onnx.export(
            module,
            args,
            path,
            dynamo=True,
            input_names=names,
            output_names=["out"],
            dynamic_shapes=tuple(shapes),
            opset_version=opset,
            optimize=True,
            verbose=False,
        )
    if program is not None and not os.path.exists(path):
        program.save(path)
    return path


def _default_axes(x: torch.Tensor) -> dict[int, tuple[str, int, int]]:
    axes: dict[int, tuple[str, int, int]] = {0: ("batch", 1, 1024)}
    for a in range(2, x.dim() - 1):
        axes[a] = (f"tokens_{a - 2}", 1, 1 << 20)
    return axes


def run_onnx(path: str | os.PathLike[str], inputs: Sequence[torch.Tensor], *, threads: int | None = None) -> list[Any]:
    """Run an exported graph in onnxruntime (CPU) on torch tensors; returns numpy arrays."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs)}
    return sess.run(None, feeds)


def check_attention_export(
    spec: Any,
    path: str | os.PathLike[str],
    *,
    trace_shape: tuple[int, ...],
    test_shapes: Sequence[tuple[int, ...]],
    kv_heads: int | None = None,
    is_causal: bool | tuple[bool, ...] = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **params: Any,
) -> dict[tuple[int, ...], float]:
    """Export ``spec`` traced at ``trace_shape`` and compare onnxruntime with the spec's
    float64 reference at each of ``test_shapes``.

    :param trace_shape: ``(B, Hq, *S, D)`` used for tracing.
    :param test_shapes: shapes (same rank, heads and D) to run the exported graph at.
    :returns: max absolute error per test shape.
    """
    module = AttentionModule(spec, is_causal=is_causal, **params)
    min_len = _min_axis_len(module.params)
    gen = torch.Generator().manual_seed(seed)

    def make(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv = (shape[0], kv_heads or shape[1], *shape[2:])
        q = torch.randn(shape, generator=gen, dtype=torch.float64)
        k = torch.randn(kv, generator=gen, dtype=torch.float64)
        v = torch.randn(kv, generator=gen, dtype=torch.float64)
        return q, k, v

    q, k, v = make(trace_shape)
    axes = []
    for x in (q, k, v):
        a = {0: ("batch", 1, 1024)}
        for ax in range(2, x.dim() - 1):
            a[ax] = (f"tokens_{ax - 2}", max(min_len[ax - 2] if ax - 2 < len(min_len) else 1, 1), 1 << 20)
        axes.append(a)
    to_onnx(module, [t.to(dtype) for t in (q, k, v)], path, input_names=["q", "k", "v"], dynamic_axes=axes)
    errors = {}
    for shape in test_shapes:
        q, k, v = make(shape)
        (got,) = run_onnx(path, [t.to(dtype) for t in (q, k, v)])
        ref_backend = "reference" if any(b.name == "reference" for b in module.spec.backends) else None
        want = module.spec(q, k, v, backend=ref_backend, is_causal=is_causal, params=module.params)
        errors[tuple(shape)] = float((torch.from_numpy(got).double() - want).abs().max())
    return errors


def _min_axis_len(params: Any) -> list[int]:
    """Smallest token-axis sizes a parameter set allows (kernel_size * dilation, where present)."""
    ks = getattr(params, "kernel_size", None)
    dl = getattr(params, "dilation", 1)
    if ks is None:
        return []
    ks_t = (ks,) * 3 if isinstance(ks, int) else tuple(ks)
    dl_t = (dl,) * len(ks_t) if isinstance(dl, int) else tuple(dl)
    return [math.prod(p) for p in zip(ks_t, dl_t)]
