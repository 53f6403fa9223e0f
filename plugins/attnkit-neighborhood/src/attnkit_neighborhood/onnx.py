"""ONNX-exportable neighborhood attention: window indices from the symbolic token sizes.

``torch.onnx.export(..., dynamo=True)`` traces this with symbolic batch and token sizes, so
nothing here branches on a size or reads a tensor value: the key indices of every window are
integer arithmetic on ``torch.arange`` of the token lengths (the border clamp included,
:func:`attnkit_neighborhood.windows.flat_windows`), then
:func:`attnkit.kernels.onnx.gathered_attention`: one ``Gather`` per k/v tensor and small
batched ``MatMul`` s. The graph therefore runs at any token length at or above
``kernel_size * dilation`` on every axis.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``,
``N = prod(S)``, ``KK = prod(kernel_size)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit.kernels.onnx import gathered_attention
from attnkit_neighborhood.params import normalize
from attnkit_neighborhood.windows import flat_windows

__all__ = ["neighborhood_attention"]


@kernel
def neighborhood_attention(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention as gathers and batched matmuls, traceable with symbolic sizes.

    :returns: ``out (B, Hq, *S, Dv)`` in ``q.dtype``, and ``lse (B, Hq, *S)`` (float32, or
        float64 for float64 inputs) when ``return_lse``.
    """
    ks, dl, causal = normalize(call.params, call.spatial, call.causal)
    idx, valid = flat_windows(call.spatial, ks, dl, causal, device=call.device)  # (N, KK)
    # Non-causal windows are always full: no mask to apply.
    return gathered_attention(call, idx, valid if any(causal) else None)
