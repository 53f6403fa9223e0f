"""The backend kit: what every kernel plugin's backends share, so a plugin holds its
parameters, its reference math, its mask rule and its kernels, and nothing else.

=============================  ==============================================================
module                         what it holds
=============================  ==============================================================
:mod:`attnkit.kernels.call`    :class:`KernelCall` (the canonical, flattened call) and
                               :func:`kernel` (a backend's math -> the registry's signature)
:mod:`~.backends`              :func:`standard_backends`: the usual backend set in one call
:mod:`~.autograd`              a backward for kernels written outside autograd
:mod:`~.cpu`                   numba: checks, thread limits, launch, ``numba_backend``
:mod:`~.flex`                  FlexAttention from a ``mask_mod``: BlockMask cache, compile once
:mod:`~.gpu`                   Triton: interpreter detection, reasons, launch sizes
:mod:`~.triton_blocks`         ``@triton.jit`` steps of a forward kernel (needs triton)
:mod:`~.onnx`                  traceable masked and gathered formulations for export
:mod:`~.bench`                 a declared, side-by-side benchmark against flex / SDPA / matmul
:mod:`~.numba_exp`             a vectorisable ``exp`` for numba kernels
=============================  ==============================================================

Importing this package (and :mod:`~.call`, :mod:`~.backends`) imports neither torch nor
numba, so plugin entry points may use it; the other modules import torch, and numba or triton
only when a kernel first runs.
"""

from attnkit.kernels.backends import BACKEND_ORDER, standard_backends
from attnkit.kernels.call import KernelCall, kernel

__all__ = ["BACKEND_ORDER", "KernelCall", "kernel", "standard_backends"]
