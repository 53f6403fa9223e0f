"""ONNX-exportable ``landmark.retrieval``: the reference's grouped softmax with the blocks
ranked by ``torch.topk`` (ONNX ``TopK``) over landmark logits padded with ``top_k`` columns of
``-inf``, since ONNX has no stable sort. ``landmark`` itself exports through its reference.

Shape legend: ``q (B, Hq, Tq, D)``, ``k/v (B, Hkv, Tk, D)``.
"""

from __future__ import annotations

import torch

from attnkit.kernels import KernelCall, kernel
from attnkit_landmark.reference import grouped_call

__all__ = ["retrieval_attention", "retrieval_topk"]


def retrieval_topk(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in the working dtype."""
    return grouped_call(call, call.params.top_k, select="topk")


#: The ONNX backend (also a correct torch backend when named).
retrieval_attention = kernel(retrieval_topk)
