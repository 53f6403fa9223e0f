"""Export through ``torch.onnx.export(..., dynamo=True)`` with dynamic batch and token axes,
and run the result in onnxruntime.

While exporting, :func:`attnkit.registry.choose` only picks backends marked ``traceable``, so
a spec whose fast path is a numba or Triton kernel exports its ONNX formulation instead.

Parameters are checked against every shape an export will run at before anything is traced
(:func:`check_export_args`), and a ``ValueError`` / ``TypeError`` that attnkit (or a plugin)
raises while tracing is re-raised as itself rather than inside the exporter's error.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["AttentionModule", "check_attention_export", "check_export_args", "run_onnx", "to_onnx"]

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


def check_export_args(
    spec: Any,
    shapes: Sequence[tuple[int, ...]],
    *,
    kv_heads: int | None = None,
    is_causal: bool | tuple[bool, ...] = False,
    **params: Any,
) -> Any:
    """Check that ``spec`` with ``params`` can run at each of ``shapes`` before anything is
    traced: the checks a call makes (q/k/v shapes, GQA, ``is_causal``, the parameter
    dataclass) and the spec's own ``validate`` (a window larger than the sequence ...).

    :param spec: an :class:`~attnkit.AttentionSpec` or its name.
    :param shapes: q shapes ``(B, Hq, *S, D)``; k/v have ``kv_heads`` heads (default: Hq).
    :returns: the parameter dataclass.
    :raises ValueError, TypeError: the spec's own error, naming the parameter and sizes.
    """
    from attnkit import tensors
    from attnkit.registry import resolve

    if isinstance(spec, str):
        from attnkit import get_spec

        spec = get_spec(spec, "attention")
    p = spec.make_params(**params)
    validate = resolve(spec.validate) if spec.validate is not None else None
    for shape in shapes:
        q = torch.zeros(shape)
        k = v = torch.zeros((shape[0], kv_heads or shape[1], *shape[2:]))
        found = tensors.check_qkv(q, k, v, spatial_dims=spec.spatial_dims, allow_gqa=spec.gqa)
        causal = tensors.check_is_causal(is_causal, n_axes=found.n_spatial, supported=spec.causal)
        if validate is not None:
            validate(p, q, k, v, causal)
    return p


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _raised_by_attnkit(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    return module == "attnkit" or module.startswith(("attnkit.", "attnkit_"))


def _attnkit_cause(exc: BaseException) -> ValueError | TypeError | None:
    """The ``ValueError`` / ``TypeError`` raised by attnkit or a plugin that ``exc`` (an
    exporter error) wraps, if any."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (ValueError, TypeError)) and _raised_by_attnkit(e):
            return e
        e = e.__cause__ or e.__context__
    return None


def _plain_message(exc: BaseException) -> str:
    """``str(exc)`` without terminal colour codes."""
    return _ANSI.sub("", str(exc))


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
    :raises ValueError, TypeError: when tracing failed on attnkit's (or a plugin's) own
        input check: that message, the exporter's error chained as the cause.
    :raises RuntimeError: when export fails otherwise, with the exporter's message.
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
        try:
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
        except Exception as exc:
            cause = _attnkit_cause(exc)
            if cause is None:
                raise
            kind = ValueError if isinstance(cause, ValueError) else TypeError
            raise kind(_plain_message(cause)) from exc
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
    :raises ValueError, TypeError: before tracing, when the parameters do not fit a shape
        (:func:`check_export_args`).
    """
    check_export_args(spec, [trace_shape, *test_shapes], kv_heads=kv_heads, is_causal=is_causal, **params)
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
