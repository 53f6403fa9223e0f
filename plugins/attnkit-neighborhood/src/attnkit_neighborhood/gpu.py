"""Triton backend of neighborhood attention: fused forward, backward from the saved LSE.

Runs on CUDA. On CPU it runs only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before the kernels are decorated), which the tests use with tiny float32 shapes. Loading,
interpreter detection, ``can_run`` reasons and launch sizes are :mod:`attnkit.kernels.gpu`'s.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``, ``S`` one
to three token axes, ``N = prod(S)``, ``G = Hq // Hkv``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.autograd import softmax_delta
from attnkit.kernels.gpu import TritonKernels, cdiv, empty_outputs, strides, triton_backend
from attnkit_neighborhood.params import normalize

__all__ = ["TRITON", "neighborhood_attention"]

TRITON = TritonKernels(
    "attnkit_neighborhood._triton_kernels", "na_fwd_kernel", install="pip install 'attnkit-neighborhood[gpu]'"
)


def _geometry(call: KernelCall) -> tuple[tuple[int, ...], dict[str, bool]]:
    """``(N, X, Y, Z, KX, KY, KZ, DX, DY, DZ)`` with the token axes padded to three at the
    front (kernel 1, dilation 1), and the per-axis causal flags ``CX, CY, CZ``."""
    ks, dl, causal = normalize(call.params, call.spatial, call.causal)
    pad = 3 - len(call.spatial)
    sizes = (1,) * pad + tuple(call.spatial)
    geo = (call.q_len, *sizes, *((1,) * pad + tuple(ks)), *((1,) * pad + tuple(dl)))
    return geo, dict(zip(("CX", "CY", "CZ"), (False,) * pad + tuple(causal)))


def _forward(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``q (B, Hq, N, D)`` contiguous -> ``out (B, Hq, N, Dv)``, ``lse (B, Hq, N)`` float32."""
    q, k, v = call.q, call.k, call.v
    geo, flags = _geometry(call)
    b, hq, n, d = q.shape
    out, lse = empty_outputs(call)
    meta = TRITON.meta(q, v)
    TRITON.launch(
        "na_fwd_kernel", (cdiv(n, meta["BLOCK_M"]), b * hq),
        q, k, v, out, lse,
        *strides(q, k, v, out, lse),
        hq, call.group, n, d, call.value_dim, *geo[1:], call.scale,
        **flags, **meta,
    )  # fmt: skip
    return out, lse


def _backward(
    call: KernelCall, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, dlse: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = call.q, call.k, call.v
    geo, flags = _geometry(call)
    b, hq, n, d = q.shape
    dout = dout.contiguous()
    delta = softmax_delta(out, dout, dlse, torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = TRITON.meta(q, v)
    sizes = (n, d, call.value_dim, *geo[1:], call.scale)
    all_strides = strides(q, k, v, dout, lse)
    args = (q, k, v, dout, lse, delta)
    TRITON.launch(
        "na_bwd_dq_kernel", (cdiv(n, meta["BLOCK_M"]), b * hq), *args, dq, *all_strides, hq, call.group, *sizes,
        **flags, **meta,
    )  # fmt: skip
    TRITON.launch(
        "na_bwd_dkdv_kernel", (cdiv(n, meta["BLOCK_N"]), b * call.kv_heads), *args, dk, dv, *all_strides,
        call.kv_heads, call.group, *sizes, **flags, **meta,
    )  # fmt: skip
    return dq, dk, dv


#: The Triton backend: ``q (B, Hq, *S, D)``, ``k/v (B, Hkv, *S, D|Dv)`` -> ``out (B, Hq, *S,
#: Dv)`` in ``q.dtype`` (and ``lse (B, Hq, *S)`` float32), gradients for q, k, v.
neighborhood_attention = triton_backend(_forward, backward=_backward)
