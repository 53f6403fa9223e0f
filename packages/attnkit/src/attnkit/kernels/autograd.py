"""Gradients for kernels written outside autograd (numba, Triton).

A fast forward kernel computes ``(out, lse)`` without autograd seeing it. This module wraps
such a forward in a ``torch.autograd.Function`` whose backward is either the plugin's own
kernel (FlashAttention-style, from the saved LSE) or a recomputation through a differentiable
torch formulation of the same math (the plugin's reference, say), so every kernel plugin gets
the same, tested glue.

Shape legend: as in :mod:`attnkit.kernels.call`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from attnkit.kernels.call import KernelCall

__all__ = ["Backward", "Forward", "differentiable", "softmax_delta"]

#: ``(call) -> (out (B, Hq, N, Dv), lse (B, Hq, N))``, outside autograd.
Forward = Callable[["KernelCall"], "tuple[torch.Tensor, torch.Tensor]"]
#: ``(call, out, lse, d_out, d_lse | None) -> (dq, dk, dv)`` on the flattened tensors.
Backward = Callable[..., "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]


def softmax_delta(
    out: torch.Tensor, d_out: torch.Tensor, d_lse: torch.Tensor | None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """The per-row term of softmax attention's backward, ``rowsum(dO * O) - dLSE``.

    ``dS = P * (dP - delta)`` with ``dP = dO @ V^T``; the LSE's own gradient only shifts
    ``delta`` (``d lse / d s = p``), so kernels that return the LSE need no other change.

    :param out: ``(B, H, N, Dv)``; ``d_out`` the same shape; ``d_lse`` ``(B, H, N)`` or ``None``.
    :param dtype: the dtype to compute in (default ``out``'s).
    :returns: ``(B, H, N)`` contiguous.
    """
    dtype = dtype or out.dtype
    delta = (d_out.to(dtype) * out.to(dtype)).sum(-1)
    if d_lse is not None:
        delta = delta - d_lse.to(dtype)
    return delta.contiguous()


def differentiable(
    forward: Forward,
    *,
    backward: Backward | None = None,
    recompute: Callable[[KernelCall], Any] | None = None,
    once_differentiable: bool = False,
) -> Callable[[KernelCall], tuple[torch.Tensor, torch.Tensor]]:
    """Give a forward kernel a backward pass; returns ``(call) -> (out, lse)``.

    :param forward: the fast kernel, called without autograd.
    :param backward: the plugin's backward kernel; it receives ``call`` with the saved
        ``q, k, v``, the saved ``out`` and ``lse``, ``d_out`` (zeros when only the LSE was
        used) and ``d_lse`` (``None`` when the LSE was not used).
    :param recompute: used when there is no ``backward``: a differentiable torch function of
        the call returning ``(out, lse)``, run again under autograd to get the gradients.
        With neither, the result does not require grad (declare the backend
        ``differentiable=False``).
    :param once_differentiable: the backward is not itself differentiable (a Triton kernel):
        double backward raises instead of silently giving wrong second derivatives.
    """
    import torch

    if backward is not None and recompute is not None:
        raise ValueError("give backward= or recompute=, not both")
    if backward is None and recompute is None:
        return forward

    def _backward(ctx: Any, d_out: torch.Tensor | None, d_lse: torch.Tensor | None) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        call = ctx.call.replace(q=q, k=k, v=v)
        if backward is not None:
            if d_out is None:
                d_out = torch.zeros_like(out)
            grads = backward(call, out, lse, d_out, d_lse)
        else:
            assert recompute is not None
            leaves = [x.detach().requires_grad_() for x in (q, k, v)]
            with torch.enable_grad():
                r_out, r_lse = recompute(call.replace(q=leaves[0], k=leaves[1], v=leaves[2]))
                pairs = [(o, g) for o, g in ((r_out, d_out), (r_lse, d_lse)) if g is not None]
                grads = torch.autograd.grad(
                    [o for o, _ in pairs], leaves, [g.to(o.dtype) for o, g in pairs], allow_unused=True
                )
            grads = tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves))
        return (*grads, None)

    if once_differentiable:
        from torch.autograd.function import once_differentiable as _once

        _backward = _once(_backward)

    class _Kernel(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, call: KernelCall) -> Any:
            out, lse = forward(call)
            ctx.save_for_backward(q, k, v, out, lse)
            # The call is kept without its tensors: they are saved above, where autograd
            # checks they were not modified in place before the backward pass.
            ctx.call = call.replace(q=None, k=None, v=None)
            return out, lse

        backward = staticmethod(_backward)

    _Kernel.__name__ = _Kernel.__qualname__ = f"{getattr(forward, '__name__', 'kernel')}_autograd"

    def run(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
        if not (call.q.requires_grad or call.k.requires_grad or call.v.requires_grad) or not torch.is_grad_enabled():
            return forward(call)
        out, lse = _Kernel.apply(call.q, call.k, call.v, call)
        return out, lse

    return run
