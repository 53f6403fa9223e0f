"""Triton backend of SF-Attn: fused blockwise forward (no backward).

Runs on CUDA. On CPU it runs only under the Triton interpreter (``TRITON_INTERPRET=1`` set
before the kernels are decorated), which the tests use with tiny float32 shapes. Declared
``differentiable=False``: gradients go through the numba or reference backends.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import torch

from attnkit_sinklora.cpu import _tiles
from attnkit_sinklora.params import SFAttnParams, group_size, shift_of_head

__all__ = ["can_run", "sf_attention"]

_KERNELS = "attnkit_sinklora._triton_kernels"
MAX_HEAD_DIM = 256


def _interpreting() -> bool:
    """Whether the kernels are (or, once imported, will be) run by the Triton interpreter."""
    mod = sys.modules.get(_KERNELS)
    if mod is not None:
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance(mod.sf_fwd_kernel, InterpretedFunction)
    try:  # triton >= 3.4 parses the variable in one place; use its reading when there is one
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def can_run(call: Any) -> str | None:
    """``None`` when the Triton kernel can serve ``call`` (an :class:`attnkit.CallInfo`)."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'attnkit-sinklora[gpu]')"
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


#: ``(BLOCK_M, BLOCK_N)`` under the Triton interpreter (it pays per op, not per element, so
#: wide tiles are its fast case); tests shrink them to cross tile borders.
INTERPRETER_BLOCKS = (32, 32)


def _blocks(device: torch.device) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, num_warps)`` for a launch on ``device``."""
    if device.type == "cpu":
        return (*INTERPRETER_BLOCKS, 1)
    return 64, 64, 4


def sf_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: SFAttnParams,
    is_causal: bool | tuple[bool, ...],
    scale: float,
    return_lse: bool,
    **_: Any,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """SF-Attn forward with the Triton kernel.

    :param q: ``(B, Hq, T, D)``; ``k`` ``(B, Hkv, T, D)``; ``v`` ``(B, Hkv, T, Dv)``.
    :returns: ``out (B, Hq, T, Dv)`` in ``q.dtype``, and ``lse (B, Hq, T)`` float32 when
        ``return_lse``.
    """
    from attnkit_sinklora import _triton_kernels as kern

    causal = bool(is_causal[0]) if isinstance(is_causal, tuple) else bool(is_causal)
    b, hq, t, d = q.shape
    hkv, dv = k.shape[1], v.shape[-1]
    g = group_size(params, t)
    bm, bn, warps = _blocks(q.device)
    shifts = tuple(shift_of_head(params, h, hq, g) for h in range(hq))
    tiles = [torch.from_numpy(a).to(q.device) for a in _tiles(t, g, shifts, bm)]
    class_off = tiles[1]
    max_tiles = int((class_off[1:] - class_off[:-1]).max())
    out = torch.empty((b, hq, t, dv), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, hq, t), dtype=torch.float32, device=q.device)
    grid = (max_tiles, b * hq)
    kern.sf_fwd_kernel[grid](
        q, k, v, out, lse, *tiles,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        hq, hq // hkv, t, d, dv, int(params.n_sink), float(scale),
        CAUSAL=causal, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_pow2_at_least_16(d), BLOCK_DV=_pow2_at_least_16(dv),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", num_warps=warps,
    )  # fmt: skip
    if return_lse:
        return out, lse
    return out
