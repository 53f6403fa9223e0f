"""Triton backend of neighborhood attention: fused forward, backward from the saved LSE.

Runs on CUDA. On CPU it runs only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before the kernels are decorated), which the tests use with tiny float32 shapes.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``, ``S`` one
to three token axes, ``N = prod(S)``, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from attnkit_neighborhood.params import NeighborhoodParams, normalize

__all__ = ["can_run", "neighborhood_attention"]

_KERNELS = "attnkit_neighborhood._triton_kernels"
MAX_HEAD_DIM = 256


def _interpreting() -> bool:
    """Whether the kernels are (or, once imported, will be) run by the Triton interpreter."""
    mod = sys.modules.get(_KERNELS)
    if mod is not None:
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance(mod.na_fwd_kernel, InterpretedFunction)
    try:  # triton >= 3.4 parses the variable in one place; use its reading when there is one
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def can_run(call: Any) -> str | None:
    """``None`` when the Triton kernels can serve ``call`` (an :class:`attnkit.CallInfo`)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'attnkit-neighborhood[gpu]')"
    if call.device.type == "cpu":
        if not _interpreting():
            return (
                "CPU tensors run only under the Triton interpreter, and TRITON_INTERPRET=1 was not set "
                "when the kernels were imported"
            )
        if call.dtype == torch.bfloat16:
            return "the Triton interpreter has no bfloat16"
    elif call.device.type != "cuda":
        return f"runs on cuda (or cpu under TRITON_INTERPRET=1), not {call.device.type}"
    if call.q_shape is not None and call.q_shape[-1] > MAX_HEAD_DIM:
        return f"head dim {call.q_shape[-1]} exceeds {MAX_HEAD_DIM}"
    return None


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


class _Geometry:
    """Token axes canonicalised to three, ``(X, Y, Z)``, with their kernel/dilation/causal."""

    def __init__(self, spatial: tuple[int, ...], params: NeighborhoodParams, is_causal: Any) -> None:
        ks, dl, causal = normalize(params, spatial, is_causal)
        pad = 3 - len(spatial)
        self.spatial = spatial
        self.sizes = (1,) * pad + tuple(spatial)
        self.kernel = (1,) * pad + tuple(ks)
        self.dilation = (1,) * pad + tuple(dl)
        self.causal = (False,) * pad + tuple(causal)
        self.n = self.sizes[0] * self.sizes[1] * self.sizes[2]

    def args(self) -> tuple[int, ...]:
        return (self.n, *self.sizes, *self.kernel, *self.dilation)

    def flags(self) -> dict[str, bool]:
        return dict(zip(("CX", "CY", "CZ"), self.causal))


#: ``(BLOCK_M, BLOCK_N)`` under the Triton interpreter. It pays per op and per program, not
#: per element, so wide tiles are its fast case; tests shrink them to cross tile borders.
INTERPRETER_BLOCKS = (64, 64)


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)`` for a launch on ``device``."""
    if device.type == "cpu":
        return (*INTERPRETER_BLOCKS, 1)
    return 64, 64, 4


def _precision(dtype: torch.dtype) -> str:
    # float32 callers expect float32 accuracy, not TF32's 10-bit mantissa.
    return "ieee" if dtype == torch.float32 else "tf32"


def _forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geo: _Geometry, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Hq, N, D)`` contiguous -> ``out (B, Hq, N, Dv)``, ``lse (B, Hq, N)`` float32."""
    from attnkit_neighborhood import _triton_kernels as kern

    b, hq, n, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    out = torch.empty((b, hq, n, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, n), dtype=torch.float32, device=q.device)
    bm, bn, warps = _blocks(q.device)
    grid = (-(-n // bm), b * hq)
    kern.na_fwd_kernel[grid](
        q, k, v, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        hq, hq // hkv, *geo.args()[:1], d, dv, *geo.args()[1:], float(scale),
        **geo.flags(),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_pow2_at_least_16(d), BLOCK_DV=_pow2_at_least_16(dv),
        PRECISION=_precision(q.dtype), num_warps=warps,
    )  # fmt: skip
    return out, lse


def _backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    dlse: torch.Tensor | None,
    geo: _Geometry,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from attnkit_neighborhood import _triton_kernels as kern

    b, hq, n, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    dout = dout.contiguous()
    # d lse / d logit = p, so an LSE gradient only shifts the per-row term of dS.
    delta = (dout.float() * out.float()).sum(-1)
    if dlse is not None:
        delta = delta - dlse.float()
    delta = delta.contiguous()
    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dvv = torch.empty_like(v)
    bm, bn, warps = _blocks(q.device)
    common = dict(
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_pow2_at_least_16(d), BLOCK_DV=_pow2_at_least_16(dv),
        PRECISION=_precision(q.dtype), num_warps=warps, **geo.flags(),
    )  # fmt: skip
    sizes = (n, d, dv, *geo.args()[1:], float(scale))
    strides = (*q.stride(), *k.stride(), *v.stride(), *dout.stride(), *lse.stride())
    kern.na_bwd_dq_kernel[(-(-n // bm), b * hq)](
        q, k, v, dout, lse, delta, dq, *strides, hq, hq // hkv, *sizes, **common
    )
    kern.na_bwd_dkdv_kernel[(-(-n // bn), b * hkv)](
        q, k, v, dout, lse, delta, dk, dvv, *strides, hkv, hq // hkv, *sizes, **common
    )
    return dq, dk, dvv


class _NeighborhoodFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, geo: _Geometry, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out, lse = _forward(q, k, v, geo, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.geo = geo
        ctx.scale = scale
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dout: torch.Tensor | None, dlse: torch.Tensor | None) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv = _backward(q, k, v, out, lse, dout, dlse, ctx.geo, ctx.scale)
        return dq, dk, dv, None, None


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: NeighborhoodParams,
    is_causal: bool | tuple[bool, ...],
    scale: float,
    return_lse: bool,
    **_: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention with the Triton kernels.

    :param q: ``(B, Hq, *S, D)``; ``k`` ``(B, Hkv, *S, D)``; ``v`` ``(B, Hkv, *S, Dv)``.
    :returns: ``out (B, Hq, *S, Dv)`` in ``q.dtype``, and ``lse (B, Hq, *S)`` float32 when
        ``return_lse``.
    """
    spatial = tuple(q.shape[2:-1])
    geo = _Geometry(spatial, params, is_causal)
    b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
    # Flattening the token axes is a view for contiguous inputs; k/v keep Hkv heads.
    qf = q.reshape(b, hq, geo.n, q.shape[-1]).contiguous()
    kf = k.reshape(b, hkv, geo.n, k.shape[-1]).contiguous()
    vf = v.reshape(b, hkv, geo.n, v.shape[-1]).contiguous()
    out, lse = _NeighborhoodFn.apply(qf, kf, vf, geo, float(scale))
    out = out.reshape(b, hq, *spatial, v.shape[-1])
    if return_lse:
        return out, lse.reshape(b, hq, *spatial)
    return out
