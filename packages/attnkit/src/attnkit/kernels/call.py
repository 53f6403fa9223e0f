"""One attention call in canonical form, and the decorator that turns a backend's math into
the implementation the registry calls.

Every backend of a kernel spec is called by :meth:`attnkit.AttentionSpec.__call__` as
``impl(q, k, v, *, params, is_causal, scale, return_lse, mask=None)`` with ``q, k, v`` already
validated, in the ``(B, H, *S, D)`` layout and with the scale resolved. What each backend
then did by hand (flatten the token axes, view the query heads per key/value head, turn the
causal flag into one flag per axis, cast the output back, reshape it, return the LSE or not)
is done once here: a backend is written as ``fn(call: KernelCall) -> out`` or
``-> (out, lse)`` on flattened tensors, and :func:`kernel` makes it callable by the registry.

Shape legend: ``B`` batch, ``Hq`` / ``Hkv`` query / key-value heads (``G = Hq // Hkv``),
``*S`` the query token axes (one to three) with ``N = prod(S)``, ``M`` key tokens, ``D`` /
``Dv`` head dims.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch

__all__ = ["KernelCall", "KernelFn", "kernel"]


@dataclass(frozen=True)
class KernelCall:
    """The inputs of one call, flattened to one token axis.

    :param q: ``(B, Hq, N, D)``, a view of the caller's ``(B, Hq, *S, D)`` when it can be.
    :param k: ``(B, Hkv, M, D)``.
    :param v: ``(B, Hkv, M, Dv)``.
    :param spatial: the query token axes ``S`` (ints, or symbolic sizes while exporting).
    :param kv_spatial: the key token axes.
    :param params: the spec's validated parameter dataclass.
    :param causal: one causal flag per token axis.
    :param scale: the logit scale.
    :param return_lse: whether the caller wants the log-sum-exp.
    :param mask: the validated boolean mask ``(B|1, Hq|1, N, M)``, or ``None``.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    spatial: tuple[Any, ...]
    kv_spatial: tuple[Any, ...]
    params: Any
    causal: tuple[bool, ...]
    scale: float
    return_lse: bool = False
    mask: torch.Tensor | None = None

    @classmethod
    def from_inputs(
        cls,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        params: Any,
        is_causal: bool | tuple[bool, ...],
        scale: float,
        return_lse: bool = False,
        mask: torch.Tensor | None = None,
    ) -> KernelCall:
        """Flatten ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S_kv, D)``, ``v (B, Hkv, *S_kv, Dv)``."""
        spatial = tuple(q.shape[2:-1])
        kv_spatial = tuple(k.shape[2:-1])
        if isinstance(is_causal, (tuple, list)):
            causal = tuple(bool(c) for c in is_causal)
        else:
            causal = (bool(is_causal),) * len(spatial)
        b, hq, hkv = q.shape[0], q.shape[1], k.shape[1]
        return cls(
            q=q.reshape(b, hq, -1, q.shape[-1]),
            k=k.reshape(b, hkv, -1, k.shape[-1]),
            v=v.reshape(b, hkv, -1, v.shape[-1]),
            spatial=spatial,
            kv_spatial=kv_spatial,
            params=params,
            causal=causal,
            scale=float(scale),
            return_lse=bool(return_lse),
            mask=mask,
        )

    # -- sizes ------------------------------------------------------------------------------

    @property
    def batch(self) -> Any:
        return self.q.shape[0]

    @property
    def q_heads(self) -> Any:
        return self.q.shape[1]

    @property
    def kv_heads(self) -> Any:
        return self.k.shape[1]

    @property
    def group(self) -> Any:
        """Query heads per key/value head, ``G = Hq // Hkv``."""
        return self.q.shape[1] // self.k.shape[1]

    @property
    def q_len(self) -> Any:
        """``N``, the flattened query tokens."""
        return self.q.shape[2]

    @property
    def kv_len(self) -> Any:
        """``M``, the flattened key tokens."""
        return self.k.shape[2]

    @property
    def head_dim(self) -> Any:
        return self.q.shape[-1]

    @property
    def value_dim(self) -> Any:
        return self.v.shape[-1]

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def is_causal(self) -> bool:
        """Whether any token axis is causal (the one flag of a single-axis spec)."""
        return any(self.causal)

    # -- views and results -------------------------------------------------------------------

    def grouped_q(self) -> torch.Tensor:
        """``q`` as ``(B, Hkv, G, N, D)``: the query heads that share each key/value head,
        so GQA broadcasts against ``k.unsqueeze(2)`` instead of copying k/v to ``Hq`` heads."""
        return self.q.reshape(self.batch, self.kv_heads, self.group, self.q_len, self.head_dim)

    def replace(self, **changes: Any) -> KernelCall:
        """A copy with some fields changed (new tensors for a backward pass, say)."""
        return dataclasses.replace(self, **changes)

    def result(self, out: torch.Tensor, lse: torch.Tensor | None = None) -> Any:
        """Return what the caller asked for from the flattened ``out (B, Hq, N, Dv)`` and
        ``lse (B, Hq, N)``: ``out`` in ``q``'s dtype reshaped to ``(B, Hq, *S, Dv)``, plus
        ``lse (B, Hq, *S)`` when ``return_lse``."""
        out = out.reshape(self.batch, self.q_heads, *self.spatial, out.shape[-1])
        if out.dtype != self.dtype:
            out = out.to(self.dtype)
        if not self.return_lse:
            return out
        if lse is None:
            raise ValueError("this backend does not compute the log-sum-exp; call with return_lse=False")
        return out, lse.reshape(self.batch, self.q_heads, *self.spatial)


#: A backend's math: ``(call) -> out`` or ``(call) -> (out, lse)`` on flattened tensors.
KernelFn = Callable[[KernelCall], Union["torch.Tensor", tuple["torch.Tensor", "torch.Tensor | None"]]]


def kernel(fn: KernelFn, *, check: Callable[..., None] | None = None) -> Callable[..., Any]:
    """Wrap ``fn(call: KernelCall)`` as a backend implementation the registry calls as
    ``impl(q, k, v, *, params, is_causal, scale, return_lse, mask=None)``.

    ``fn`` returns ``out (B, Hq, N, Dv)``, or ``(out, lse)`` with ``lse (B, Hq, N)`` (``None``
    when it has none). The wrapper reshapes both back to the caller's token axes and casts
    ``out`` to ``q``'s dtype. ``fn`` stays reachable as ``impl.kernel_fn``.

    :param fn: the backend's math on a :class:`KernelCall`.
    :param check: ``check(q, k, v)`` run on the caller's tensors first, raising
        ``TypeError`` / ``ValueError``: for kernels that index without bounds checks and may
        be called without the registry's validation.
    :returns: the implementation to name in a :class:`~attnkit.Backend`'s ``impl``.
    """

    @functools.wraps(fn)
    def impl(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        params: Any,
        is_causal: bool | tuple[bool, ...],
        scale: float,
        return_lse: bool,
        mask: torch.Tensor | None = None,
        **_: Any,
    ) -> Any:
        if check is not None:
            check(q, k, v)
        call = KernelCall.from_inputs(
            q, k, v, params=params, is_causal=is_causal, scale=scale, return_lse=return_lse, mask=mask
        )
        got = fn(call)
        if isinstance(got, tuple):
            return call.result(*got)
        return call.result(got)

    impl.kernel_fn = fn  # type: ignore[attr-defined]
    return impl
