"""Input validation shared by every kernel: layout, shapes, GQA ratios, dtypes, devices, masks.

Messages name the argument and the sizes seen, so a caller can fix the call without reading
the kernel. Shape legend: ``B`` batch, ``Hq``/``Hkv`` query / key-value heads, ``T`` tokens
(or spatial axes ``*S``), ``D`` head dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTYPES",
    "QKVShapes",
    "check_bool",
    "check_is_causal",
    "check_mask",
    "check_qkv",
    "check_scale",
    "from_canonical",
    "logit_bound",
    "lse_from_canonical",
    "non_finite_rows",
    "surely_in_range",
    "to_canonical",
]

LAYOUTS = ("bhtd", "bthd")
#: The dtype names attention inputs may have (float8, complex and integer tensors are refused).
DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class QKVShapes:
    """Sizes read off validated ``q, k, v`` in the canonical layout."""

    batch: int
    q_heads: int
    kv_heads: int
    q_spatial: tuple[int, ...]
    kv_spatial: tuple[int, ...]
    head_dim: int
    value_dim: int

    @property
    def n_spatial(self) -> int:
        return len(self.q_spatial)

    @property
    def q_len(self) -> int:
        return math.prod(self.q_spatial)

    @property
    def kv_len(self) -> int:
        return math.prod(self.kv_spatial)

    @property
    def group(self) -> int:
        return self.q_heads // self.kv_heads


def _describe(name: str, x: torch.Tensor) -> str:
    return f"{name} {tuple(x.shape)}"


def to_canonical(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, layout: str = "bhtd"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``q, k, v`` as ``(B, H, *S, D)`` views; ``layout="bthd"`` means ``(B, *S, H, D)``."""
    import torch

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if layout == "bhtd":
        return q, k, v
    out = []
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() < 4:
            raise ValueError(f"{name} with layout='bthd' must be (B, *S, H, D), got {tuple(x.shape)}")
        out.append(x.movedim(-2, 1))
    return out[0], out[1], out[2]


def from_canonical(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of :func:`to_canonical` for an output ``(B, H, *S, D)``."""
    return x if layout == "bhtd" else x.movedim(1, -2)


def lse_from_canonical(lse: torch.Tensor, layout: str) -> torch.Tensor:
    """Move the head axis of an LSE ``(B, H, *S)`` to the end for ``layout="bthd"``."""
    return lse if layout == "bhtd" else lse.movedim(1, -1)


def check_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    spatial_dims: tuple[int, ...] = (1,),
    allow_gqa: bool = True,
    same_spatial: bool = False,
) -> QKVShapes:
    """Validate ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S_kv, D)``, ``v (B, Hkv, *S_kv, Dv)``.

    :param spatial_dims: allowed numbers of token axes (``(1,)`` means ``(B, H, T, D)``).
    :param allow_gqa: whether ``Hq`` may be a multiple of ``Hkv`` rather than equal.
    :param same_spatial: require the query and key token axes to be equal (self-attention).
    :raises TypeError: a non-tensor input, a dtype other than float16 / bfloat16 / float32 /
        float64 (integer, complex, float8), a tensor on the meta device, or mixed dtypes.
    :raises ValueError: sizes that do not fit together; the message names them.
    """
    import torch

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if str(x.dtype).removeprefix("torch.") not in DTYPES:
            raise TypeError(
                f"{name} has dtype {x.dtype}; attention inputs must be float16, bfloat16, float32 or float64 "
                "(cast float8 tensors up first)"
            )
        if x.device.type == "meta":
            raise TypeError(f"{name} is on the meta device (a tensor without data); attention needs real tensors")
    allowed_ndim = sorted(3 + s for s in spatial_dims)
    if q.dim() not in allowed_ndim:
        forms = " or ".join(
            "(B, H, T, D)" if s == 1 else "(B, H, " + ", ".join("XYZ"[:s]) + ", D)" for s in sorted(spatial_dims)
        )
        raise ValueError(f"q must have shape {forms}; got {q.dim()} dims {tuple(q.shape)}")
    for name, x in (("k", k), ("v", v)):
        if x.dim() != q.dim():
            raise ValueError(f"{name} must have as many dims as q; got {_describe(name, x)} and {_describe('q', q)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got q {q.device}, k {k.device}, v {v.device}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if any(s == 0 for s in x.shape):
            raise ValueError(f"{name} has an empty axis: {tuple(x.shape)}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of heads; got k {k.shape[1]}, v {v.shape[1]}")
    hq, hkv = q.shape[1], k.shape[1]
    if allow_gqa:
        if hq % hkv != 0:
            raise ValueError(
                f"q has {hq} heads and k/v have {hkv}; the query heads must be a multiple of the key/value heads"
            )
    elif hq != hkv:
        raise ValueError(f"this kernel needs as many k/v heads as q heads; got q {hq}, k/v {hkv}")
    if k.shape[2:-1] != v.shape[2:-1]:
        raise ValueError(
            f"k and v must have the same token axes; got k {tuple(k.shape[2:-1])}, v {tuple(v.shape[2:-1])}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim; got q {q.shape[-1]}, k {k.shape[-1]}")
    if same_spatial and q.shape[2:-1] != k.shape[2:-1]:
        raise ValueError(
            f"q and k must have the same token axes here; got q {tuple(q.shape[2:-1])}, k {tuple(k.shape[2:-1])}"
        )
    return QKVShapes(
        batch=q.shape[0],
        q_heads=hq,
        kv_heads=hkv,
        q_spatial=tuple(q.shape[2:-1]),
        kv_spatial=tuple(k.shape[2:-1]),
        head_dim=q.shape[-1],
        value_dim=v.shape[-1],
    )


def check_is_causal(is_causal: object, *, n_axes: int = 1, supported: bool = True) -> bool | tuple[bool, ...]:
    """Validate ``is_causal``: a bool, or (for multi-axis kernels) one bool per token axis."""
    if isinstance(is_causal, (tuple, list)):
        if len(is_causal) != n_axes or not all(isinstance(c, bool) for c in is_causal):
            raise ValueError(
                f"is_causal must be a bool or a tuple of {n_axes} bools (one per token axis), got {is_causal!r}"
            )
        flags = tuple(is_causal)
        if any(flags) and not supported:
            raise ValueError("is_causal=True is not supported by this kernel")
        return flags if n_axes > 1 else flags[0]
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    if is_causal and not supported:
        raise ValueError("is_causal=True is not supported by this kernel")
    return is_causal


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a bool; raise ``TypeError`` naming ``name`` otherwise (so
    ``return_lse="no"`` is not taken as true)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")
    return value


def check_scale(scale: object, head_dim: int) -> float:
    """Return the softmax scale: ``scale`` if given (finite, non-zero), else ``head_dim ** -0.5``."""
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if not math.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be finite and non-zero, got {scale}")
    return float(scale)


def check_mask(mask: object, shapes: QKVShapes) -> torch.Tensor:
    """Validate a boolean "may attend" mask and return it as a 4-D view.

    The mask must broadcast to ``(B, Hq, Tq, Tk)`` (token axes flattened); it may be 2-D
    ``(Tq, Tk)``, 3-D ``(B, Tq, Tk)`` or 4-D with size-1 batch / head axes.
    """
    import torch

    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of dtype bool, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = may attend), got {mask.dtype}")
    tq, tk = shapes.q_len, shapes.kv_len
    given = tuple(mask.shape)
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    elif mask.dim() != 4:
        raise ValueError(f"mask must have 2, 3 or 4 dims broadcastable to (B, Hq, Tq, Tk); got {tuple(mask.shape)}")
    want = (shapes.batch, shapes.q_heads, tq, tk)
    for got, need, axis in zip(mask.shape, want, ("B", "Hq", "Tq", "Tk")):
        if got not in (1, need):
            raise ValueError(f"mask of shape {given} does not broadcast to (B, Hq, Tq, Tk) = {want} (axis {axis})")
    if mask.shape[1] not in (1, shapes.q_heads):
        raise ValueError(f"mask head axis must be 1 or Hq={shapes.q_heads}, got {mask.shape[1]}")
    return mask


# ---------------------------------------------------------------------------------------------
# Non-finite input (see "Non-finite input" in docs/user-guide.md)
# ---------------------------------------------------------------------------------------------


def non_finite_rows(x: torch.Tensor) -> torch.Tensor:
    """``(..., T)`` bool: True for each row of ``x (..., T, D)`` holding a NaN or an infinity.

    Traceable (no data-dependent branch), so ONNX formulations use it too.
    """
    import torch

    return ~torch.isfinite(x).all(dim=-1)


def logit_bound(q: torch.Tensor, k: torch.Tensor, scale: float) -> tuple[torch.Tensor, float]:
    """``(bound, limit)``: ``bound (B, Hq, Tq)`` bounds every ``|logit|`` (and partial sum)
    of each query row, ``D * max|q_i| * max|k| * |scale|`` over the row's key/value head, and
    ``limit`` is half the largest value of the working dtype (float32 below float64). Where
    ``bound < limit`` no logit can overflow; NaN or infinite input gives a NaN or infinite bound.

    :param q: ``(B, Hq, Tq, D)``; ``k`` ``(B, Hkv, Tk, D)``.
    """
    import torch

    wd = torch.float64 if q.dtype == torch.float64 else torch.float32
    qmax = q.detach().abs().amax(dim=-1).to(wd)  # (B, Hq, Tq)
    kmax = k.detach().abs().amax(dim=(-1, -2)).to(wd)  # (B, Hkv)
    g = q.shape[1] // k.shape[1]
    kmax = kmax.repeat_interleave(g, dim=1) if g > 1 else kmax
    return qmax * kmax[..., None] * (abs(scale) * q.shape[-1]), torch.finfo(wd).max / 2


def surely_in_range(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> bool:
    """True when ``q``, ``k``, ``v`` are known to be finite and no logit can overflow, from a
    check that costs no host sync: the fast-path test of backends that handle non-finite or
    out-of-range input separately.

    On CPU, outside ``torch.compile`` / export: ``max|q|``, ``max|k|`` (they keep NaN and
    infinities) and the sum of ``v`` (NaN and infinities survive summation) decide, with the
    bound of :func:`logit_bound`. False means "not known": some entry is not finite, the
    logits might overflow, a sum of finite values overflowed, the tensors are on another
    device, or the call is being traced (where a data-dependent branch would add a host sync
    or break the graph); callers then take their exact, branch-free path.
    """
    import torch

    if any(x.device.type != "cpu" for x in (q, k, v)) or _tracing():
        return False
    wd = torch.float64 if q.dtype == torch.float64 else torch.float32
    # One pass per tensor and no copies (a few microseconds count when decoding one token):
    # aminmax for q and k (NaN and infinities come through), a sum for v; Python floats after.
    q_lo, q_hi = torch.aminmax(q.detach())
    k_lo, k_hi = torch.aminmax(k.detach())
    v_sum = v.detach().sum(dtype=wd).item()
    qmax = max(-float(q_lo), float(q_hi))  # NaN stays NaN: max() keeps its first argument
    kmax = max(-float(k_lo), float(k_hi))
    bound = qmax * kmax * (abs(scale) * q.shape[-1])
    return math.isfinite(v_sum) and bound < torch.finfo(wd).max / 2  # NaN < x is False


def _tracing() -> bool:
    import torch

    try:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return True
    except AttributeError:  # torch < 2.6 has no is_exporting
        if torch.compiler.is_compiling():
            return True
    onnx_check = getattr(torch.onnx, "is_in_onnx_export", None)
    return bool(onnx_check and onnx_check())
