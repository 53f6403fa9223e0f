"""Launching numba CPU kernels: input checks, thread limits, numpy views, outputs, backends.

What every numba backend of a kernel plugin needs besides its kernels:

* :func:`can_run` - the reasons a numba backend cannot serve a call (device, dtype, numba or
  the BLAS its ``np.dot`` calls not importable);
* :func:`check` - the input guarantees kernels that index without bounds checks rely on,
  through :mod:`attnkit.tensors`, for callers that reach the backend without the registry;
* :func:`launch` - one context manager for numba's and BLAS's threads (see its docstring);
* :func:`as_numpy`, :func:`empty_outputs` - zero-copy views and the ``(out, lse)`` buffers;
* :func:`guard_non_finite` - attnkit's non-finite rule for kernels that only propagate NaN;
* :func:`numba_backend` - the whole backend from a forward (and backward) kernel launch.

Importing this module imports torch and numpy, not numba: numba loads on the first launch.

Shape legend: as in :mod:`attnkit.kernels.call`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from attnkit.kernels.autograd import Backward, Forward, differentiable
from attnkit.kernels.call import KernelCall, kernel

__all__ = [
    "DTYPES",
    "NON_FINITE_MODES",
    "as_numpy",
    "can_run",
    "check",
    "empty_outputs",
    "guard_non_finite",
    "launch",
    "numba_backend",
]

#: The dtypes the numba kernels are compiled for.
DTYPES = (torch.float32, torch.float64)
#: How a numba backend meets the non-finite rule (see :func:`numba_backend`).
NON_FINITE_MODES = ("guard", "keys", "kernel")


def can_run(call: Any) -> str | None:
    """``None`` when a numba backend can serve ``call`` (an :class:`attnkit.CallInfo`):
    CPU, float32 or float64, and numba plus scipy's BLAS (what numba's ``np.dot`` calls)
    importable. A broken install is a reason here, so the registry moves on to the next
    backend instead of failing inside the kernel launch."""
    if call.device.type != "cpu":
        return f"runs on cpu, not {call.device.type}"
    if call.dtype not in DTYPES:
        return f"supports float32 and float64, not {str(call.dtype).removeprefix('torch.')}"
    try:
        import numba  # noqa: F401
        import scipy.linalg.cython_blas  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        return f"numba backend unavailable: {exc}"
    return None


def check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, same_tokens: bool = True) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``q, k, v`` are CPU float32/float64 tensors
    of one dtype whose sizes fit together (:func:`attnkit.tensors.check_qkv`).

    The registry validates its inputs already; this is for callers of a backend function
    itself, because numba kernels index without bounds checks.

    :param same_tokens: also require the query and key token axes to be equal
        (self-attention kernels).
    """
    from attnkit import tensors

    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"the numba backend runs on cpu; {name} is on {x.device}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in DTYPES:
        raise TypeError(
            f"the numba backend needs q, k, v all float32 or all float64; got q {q.dtype}, k {k.dtype}, v {v.dtype}"
        )
    tensors.check_qkv(q, k, v, spatial_dims=(1, 2, 3), same_spatial=same_tokens)


_BLAS: Any = None
# numba's default "workqueue" threading layer aborts the process when two Python threads
# launch parallel kernels at once, so launches are serialised.
_LAUNCH_LOCK = threading.Lock()


@contextlib.contextmanager
def launch(threads: int | None = None) -> Iterator[None]:
    """Hold the launch lock, run BLAS single-threaded, and optionally set numba's threads.

    The kernels spread their work over every core with ``prange``; a threaded BLAS inside
    each ``prange`` task would oversubscribe the cores, so BLAS gets one thread for the
    duration (through threadpoolctl, when it is installed).

    :param threads: numba threads for this launch (capped at ``NUMBA_NUM_THREADS``);
        ``None`` keeps the current setting. The previous value is restored on exit.
    """
    global _BLAS
    with _LAUNCH_LOCK, contextlib.ExitStack() as stack:
        try:
            import threadpoolctl  # type: ignore[import-untyped]
        except ImportError:
            threadpoolctl = None
        if threadpoolctl is not None:
            if _BLAS is None:
                # numba's np.dot calls scipy's BLAS: load it first so the controller sees it.
                import scipy.linalg.cython_blas  # type: ignore[import-untyped]  # noqa: F401

                _BLAS = threadpoolctl.ThreadpoolController()
            stack.enter_context(_BLAS.limit(limits=1, user_api="blas"))
        if threads is not None:
            import numba

            before = numba.get_num_threads()
            numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
            stack.callback(numba.set_num_threads, before)
        yield


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of ``x`` (a copy only when ``x`` is not contiguous)."""
    return x.detach().contiguous().numpy()


def empty_outputs(call: KernelCall, lse_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Uninitialised ``out (B, Hq, N, Dv)`` in ``q``'s dtype and ``lse (B, Hq, N)`` (in
    ``lse_dtype``, default ``q``'s) on ``q``'s device, for a kernel to write into."""
    b, hq, n = call.batch, call.q_heads, call.q_len
    out = torch.empty(b, hq, n, call.value_dim, dtype=call.dtype, device=call.device)
    lse = torch.empty(b, hq, n, dtype=lse_dtype or call.dtype, device=call.device)
    return out, lse


def guard_non_finite(call: KernelCall, *, queries: bool = True) -> KernelCall:
    """The call with attnkit's non-finite rule (:mod:`attnkit.reference.dense`) folded into
    its inputs, for kernels that only propagate NaN.

    Every key whose ``k`` or ``v`` row holds a NaN or an infinity gets a NaN ``k`` row and a
    zero ``v`` row, and (with ``queries``) every such query row becomes NaN: then a kernel
    whose softmax turns a NaN logit into a NaN row (out and LSE), and which never multiplies a
    key it masks by anything but 0, gives NaN in exactly the rows the rule says and leaves
    the other rows untouched. The check is one vectorised pass per tensor
    (:func:`attnkit.kernels.numba_exp.any_non_finite`); tensors are copied only when one is
    not finite.

    :param queries: also poison non-finite query rows. A kernel may leave them out when a
        non-finite query row already gives it NaN (every logit of that row is then NaN or
        infinite, and its softmax has no ``-inf`` shortcut for rows with keys).
    """
    from attnkit.kernels.numba_exp import any_non_finite
    from attnkit.tensors import non_finite_rows

    names = ("q", "k", "v") if queries else ("k", "v")
    if not any(any_non_finite(as_numpy(getattr(call, n))) for n in names):
        return call
    bad_kv = (non_finite_rows(call.k) | non_finite_rows(call.v)).unsqueeze(-1)
    changes = {"k": call.k.masked_fill(bad_kv, float("nan")), "v": call.v.masked_fill(bad_kv, 0.0)}
    if queries:
        changes["q"] = call.q.masked_fill(non_finite_rows(call.q).unsqueeze(-1), float("nan"))
    return call.replace(**changes)


def numba_backend(
    forward: Forward,
    *,
    backward: Backward | None = None,
    recompute: Callable[[KernelCall], Any] | None = None,
    same_tokens: bool = True,
    non_finite: str = "guard",
) -> Callable[..., Any]:
    """A numba backend implementation from its kernel launches.

    The result checks the inputs (:func:`check`), runs ``forward(call) -> (out, lse)`` on the
    flattened call, gives it gradients through ``backward`` or ``recompute`` (see
    :func:`attnkit.kernels.autograd.differentiable`) and returns what the caller asked for
    in the caller's token axes (:func:`attnkit.kernels.kernel`).

    :param same_tokens: the kernels need as many key tokens as query tokens (see :func:`check`).
    :param non_finite: how the backend meets attnkit's non-finite rule (docs/user-guide.md,
        "Non-finite input"; the contract's ``check_non_finite``). ``"guard"`` (default):
        :func:`guard_non_finite` poisons the inputs first, and the kernel need only turn a
        NaN logit into a NaN row (no clamping of NaN, no fastmath ``nnan``) and never
        multiply a masked key by anything but 0. ``"keys"``: the same for keys and values
        only (one pass less; the kernel's softmax makes non-finite query rows NaN itself).
        ``"kernel"``: the kernels implement the rule themselves.
    """
    if non_finite not in NON_FINITE_MODES:
        raise ValueError(f"non_finite must be one of {', '.join(NON_FINITE_MODES)}, got {non_finite!r}")
    fwd = forward
    if non_finite != "kernel":
        queries = non_finite == "guard"

        @functools.wraps(forward)
        def fwd(call: KernelCall) -> tuple[torch.Tensor, torch.Tensor]:
            return forward(guard_non_finite(call, queries=queries))

    impl = kernel(
        differentiable(fwd, backward=backward, recompute=recompute),
        check=functools.partial(check, same_tokens=same_tokens),
    )
    impl.__name__ = impl.__qualname__ = getattr(forward, "__name__", "numba_kernel").lstrip("_")
    impl.__doc__ = forward.__doc__
    return impl
