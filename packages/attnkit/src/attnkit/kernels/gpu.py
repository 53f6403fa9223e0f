"""Triton kernels of a plugin: lazy loading, interpreter detection, reasons, launch sizes.

A plugin keeps its ``@triton.jit`` kernels in one module (``<plugin>._triton_kernels``) and
describes it with a :class:`TritonKernels`, which knows

* whether the kernels run under the Triton interpreter (``TRITON_INTERPRET=1`` when they were
  decorated): on CPU that is the only way they run, and what the tests use;
* :meth:`~TritonKernels.can_run`: the reasons they cannot serve a call (triton missing, a CPU
  call without the interpreter, bfloat16 under the interpreter, a dtype or head dim the
  kernels do not take);
* :meth:`~TritonKernels.meta`: the block sizes, warps and dot precision of a launch, and
  :meth:`~TritonKernels.launch` to run one kernel over a grid;

and :func:`triton_backend` makes the backend from the plugin's kernel launches.

Importing this module imports torch, not triton.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from attnkit.kernels.autograd import Backward, Forward, differentiable
from attnkit.kernels.call import KernelCall, kernel

__all__ = ["TritonKernels", "cdiv", "empty_outputs", "pow2_at_least", "strides", "triton_backend"]


def cdiv(n: int, d: int) -> int:
    """``ceil(n / d)`` for a launch grid."""
    return -(-n // d)


def pow2_at_least(n: int, floor: int = 16) -> int:
    """The smallest power of two ``>= n`` and ``>= floor`` (``tl.dot`` needs 16 or more)."""
    return max(floor, 1 << (int(n) - 1).bit_length())


def strides(*tensors: torch.Tensor) -> tuple[int, ...]:
    """Every stride of ``tensors``, in order: the stride arguments of a Triton launch whose
    kernel takes each input's and output's strides (so inputs are never copied)."""
    return tuple(s for t in tensors for s in t.stride())


def empty_outputs(call: KernelCall, *, filled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``out (B, Hq, N, Dv)`` in ``q``'s dtype and ``lse (B, Hq, N)`` float32 (what the
    kit's Triton blocks store) on ``q``'s device. ``filled``: zeros and ``-inf`` (the rule
    for rows with no key) for a kernel that skips such rows instead of writing them."""
    shape = (call.batch, call.q_heads, call.q_len)
    if filled:
        out = torch.zeros(*shape, call.value_dim, dtype=call.dtype, device=call.device)
        return out, torch.full(shape, float("-inf"), dtype=torch.float32, device=call.device)
    out = torch.empty(*shape, call.value_dim, dtype=call.dtype, device=call.device)
    return out, torch.empty(shape, dtype=torch.float32, device=call.device)


def _interpret_env() -> bool:
    try:  # triton >= 3.4 parses the variable in one place; use its reading when there is one
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


class TritonKernels:
    """The Triton kernels in module ``module``, loaded on first use.

    :param module: ``"<plugin>._triton_kernels"``, the module holding the ``@triton.jit``
        functions.
    :param probe: the name of one kernel in it; its type tells whether the module was
        decorated under the interpreter.
    :param install: how to install triton, for the "not installed" reason.
    :param dtypes: the dtypes the kernels take.
    :param max_head_dim: the largest ``D`` (and ``Dv``) the kernels' register tiles hold.
    :param interpreter_blocks: ``(BLOCK_M, BLOCK_N)`` under the interpreter. It pays per op
        and per program, not per element, so wide tiles are its fast case; tests narrow them
        (an attribute, so ``monkeypatch.setattr`` works) to cross tile borders.
    :param cuda_blocks: ``(BLOCK_M, BLOCK_N, num_warps)`` on CUDA.
    """

    def __init__(
        self,
        module: str,
        probe: str,
        *,
        install: str = "pip install triton",
        dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32),
        max_head_dim: int = 256,
        interpreter_blocks: tuple[int, int] = (64, 64),
        cuda_blocks: tuple[int, int, int] = (64, 64, 4),
    ) -> None:
        self.module = module
        self.probe = probe
        self.install = install
        self.dtypes = dtypes
        self.max_head_dim = max_head_dim
        self.interpreter_blocks = interpreter_blocks
        self.cuda_blocks = cuda_blocks

    def load(self) -> Any:
        """Import and return the kernels' module."""
        return importlib.import_module(self.module)

    def interpreting(self) -> bool:
        """Whether the kernels are (or, once imported, will be) run by the Triton interpreter."""
        mod = sys.modules.get(self.module)
        if mod is not None:
            from triton.runtime.interpreter import InterpretedFunction

            return isinstance(getattr(mod, self.probe), InterpretedFunction)
        return _interpret_env()

    def can_run(self, call: Any) -> str | None:
        """``None`` when the kernels can serve ``call`` (an :class:`attnkit.CallInfo`)."""
        if importlib.util.find_spec("triton") is None:
            return f"triton is not installed ({self.install})"
        if call.device.type == "cpu":
            if not self.interpreting():
                return (
                    "CPU tensors run only under the Triton interpreter, and TRITON_INTERPRET=1 was not set "
                    "when the kernels were imported"
                )
            if call.dtype == torch.bfloat16:
                return "the Triton interpreter has no bfloat16"
        elif call.device.type != "cuda":
            return f"runs on cuda (or cpu under TRITON_INTERPRET=1), not {call.device.type}"
        if call.dtype not in self.dtypes:
            have = "/".join(str(d).removeprefix("torch.") for d in self.dtypes)
            return f"the Triton kernels take {have}, not {str(call.dtype).removeprefix('torch.')}"
        if call.q_shape is not None and call.q_shape[-1] > self.max_head_dim:
            return f"head dim {call.q_shape[-1]} exceeds {self.max_head_dim}"
        return None

    def blocks(self, device: torch.device) -> tuple[int, int, int]:
        """``(BLOCK_M, BLOCK_N, num_warps)`` for a launch on ``device``."""
        if device.type == "cpu":
            return (*self.interpreter_blocks, 1)
        return self.cuda_blocks

    def meta(self, q: torch.Tensor, v: torch.Tensor) -> dict[str, Any]:
        """Launch keywords for attention over ``q (.., D)`` and ``v (.., Dv)``: ``BLOCK_M``,
        ``BLOCK_N``, ``BLOCK_D``, ``BLOCK_DV``, ``PRECISION`` and ``num_warps``."""
        bm, bn, warps = self.blocks(q.device)
        return {
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "BLOCK_D": pow2_at_least(q.shape[-1]),
            "BLOCK_DV": pow2_at_least(v.shape[-1]),
            # float32 callers expect float32 accuracy, not TF32's 10-bit mantissa.
            "PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
            "num_warps": warps,
        }

    def launch(self, name: str, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
        """Run kernel ``name`` of the module over ``grid``."""
        getattr(self.load(), name)[grid](*args, **kwargs)


def triton_backend(
    forward: Forward,
    *,
    backward: Backward | None = None,
    recompute: Callable[[KernelCall], Any] | None = None,
    contiguous: bool = True,
) -> Callable[..., Any]:
    """A Triton backend implementation from its kernel launches.

    ``forward(call) -> (out, lse)`` runs on the flattened call (made contiguous first unless
    ``contiguous=False``: kernels that take every stride can skip the copy); gradients come
    from ``backward`` (marked once-differentiable: a Triton backward has no backward of its
    own) or ``recompute`` (see :func:`attnkit.kernels.autograd.differentiable`).
    """
    run = differentiable(forward, backward=backward, recompute=recompute, once_differentiable=True)

    def triton_kernel(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
        if contiguous:
            call = call.replace(q=call.q.contiguous(), k=call.k.contiguous(), v=call.v.contiguous())
        return run(call)

    triton_kernel.__name__ = getattr(forward, "__name__", "triton_kernel")
    triton_kernel.__doc__ = forward.__doc__
    return kernel(triton_kernel)
