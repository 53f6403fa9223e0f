"""FlexAttention backends from a ``mask_mod``: BlockMask cache, compile once, reasons.

A plugin whose attention is "dense attention under a mask" states the mask once, as a
FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool`` built by a factory from hashable
arguments, and gets:

* :func:`backend` - the flex backend itself: ``torch.compile(flex_attention)`` with the
  BlockMask of the call's shape, built once per ``(factory, args, sizes, device)`` and cached;
* :func:`can_run` - the reasons it cannot serve a call (no flex in this torch, LSE asked for,
  CPU training, an unsupported CPU dtype, ONNX export);
* :func:`dense_mask` - the same rule as a ``(H|1, N, M)`` bool tensor, evaluated in row
  chunks, for masked-SDPA peers in benchmarks and for tests.

dynamo keeps one compiled graph per input shape and, past its recompile limit (8 by
default), silently runs ``flex_attention`` eagerly: the unfused ``O(N^2)`` path a flex backend
exists to avoid. Calls made here raise the limit to :data:`RECOMPILE_LIMIT` for themselves.

Inference only on CPU: inductor's CPU template has no backward here, does not return the
LSE through this path, and takes float32 / float16 / bfloat16 only.

Shape legend: as in :mod:`attnkit.kernels.call`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from attnkit.kernels.call import KernelCall, kernel

__all__ = [
    "CPU_DTYPES",
    "RECOMPILE_LIMIT",
    "MaskRule",
    "attention",
    "backend",
    "block_mask",
    "can_run",
    "compiled_flex_attention",
    "dense_mask",
    "recompile_limit",
]

CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: dynamo's recompile limit inside flex calls: one graph per shape, up to this many shapes.
RECOMPILE_LIMIT = 64
# Above this many (query, key) pairs the BlockMask is built by a compiled create_block_mask:
# eager create_block_mask evaluates the mask_mod on the full grid with int64 intermediates
# (about 600 MB at N=4096, 16x that at N=16384); compiled, it fuses them.
EAGER_MASK_LIMIT = 1 << 26


def _flex_module() -> Any:
    from torch.nn.attention import flex_attention as module

    return module


def can_run(call: Any) -> str | None:
    """``None`` when compiled FlexAttention can serve ``call`` (an :class:`attnkit.CallInfo`)."""
    try:
        _flex_module()
    except ImportError as exc:
        return f"this torch ({torch.__version__}) has no torch.nn.attention.flex_attention: {exc}"
    if call.return_lse:
        return "the flex backend does not return the log-sum-exp (return_lse=True)"
    if call.device.type == "cpu":
        if call.requires_grad:
            return "inference only on CPU: an input requires grad (use the numba or reference backend)"
        if call.dtype not in CPU_DTYPES:
            return (
                f"FlexAttention on CPU supports float32/float16/bfloat16, not {str(call.dtype).removeprefix('torch.')}"
            )
    if call.exporting:
        return "cannot be traced for ONNX export"
    return None


@dataclass(frozen=True)
class MaskRule:
    """Which ``mask_mod`` a call uses.

    :param factory: ``factory(*args, device=device) -> mask_mod``; a module-level function, so
        it and ``args`` key the BlockMask cache.
    :param args: hashable arguments of ``factory`` that fix the mask (geometry, parameters).
    :param heads: ``None`` when the mask is the same for every head, else the number of query
        heads it distinguishes (the mask_mod then reads ``h``).
    """

    factory: Callable[..., Any]
    args: tuple[Hashable, ...]
    heads: int | None = None

    def mask_mod(self, device: torch.device | str = "cpu") -> Any:
        return self.factory(*self.args, device=device)


@functools.lru_cache(maxsize=64)
def _cached_block_mask(rule: MaskRule, q_len: int, kv_len: int, device: str) -> Any:
    flex = _flex_module()
    build = flex.create_block_mask
    if q_len * kv_len * (rule.heads or 1) > EAGER_MASK_LIMIT:
        build = torch.compile(flex.create_block_mask)
    return build(rule.mask_mod(device), None, rule.heads, q_len, kv_len, device=device)


def block_mask(rule: MaskRule, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Any:
    """The BlockMask of ``rule`` over ``q_len`` queries and ``kv_len`` keys, built once and
    cached (a model calls the same shapes again and again)."""
    return _cached_block_mask(rule, int(q_len), int(kv_len), str(torch.device(device)))


def recompile_limit() -> Any:
    """A context manager raising dynamo's recompile limit to :data:`RECOMPILE_LIMIT`."""
    import torch._dynamo

    if hasattr(torch._dynamo.config, "recompile_limit"):
        return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
    return torch._dynamo.config.patch(cache_size_limit=RECOMPILE_LIMIT)  # torch < 2.6


@functools.cache
def compiled_flex_attention() -> Any:
    """``torch.compile(flex_attention)``, one per process (dynamo keeps a graph per shape)."""
    return torch.compile(_flex_module().flex_attention, dynamic=False)


def attention(call: KernelCall, mask: Any) -> torch.Tensor:
    """Compiled FlexAttention of the flattened call under BlockMask ``mask``; GQA through
    ``enable_gqa`` (k/v are not copied). Returns ``out (B, Hq, N, Dv)``."""
    if call.return_lse:
        raise ValueError("the flex backend does not return the log-sum-exp; call with return_lse=False")
    with recompile_limit():
        return compiled_flex_attention()(
            call.q, call.k, call.v, block_mask=mask, scale=call.scale, enable_gqa=call.q_heads != call.kv_heads
        )


def backend(rule: Callable[[KernelCall], MaskRule]) -> Callable[..., Any]:
    """The flex backend implementation of a spec whose mask ``rule(call)`` gives.

    The rule stays reachable as ``impl.mask_rule`` (benchmarks build their masked-SDPA peer
    from it).
    """

    def flex_kernel(call: KernelCall) -> torch.Tensor:
        return attention(call, block_mask(rule(call), call.q_len, call.kv_len, call.device))

    flex_kernel.__name__ = f"flex_{getattr(rule, '__name__', 'kernel').lstrip('_')}"
    impl = kernel(flex_kernel)
    impl.mask_rule = rule  # type: ignore[attr-defined]
    return impl


def dense_mask(rule: MaskRule, q_len: int, kv_len: int, *, chunk: int = 1024) -> torch.Tensor:
    """``rule`` as a bool tensor ``(H|1, N, M)``, True where the query may attend.

    The ``mask_mod`` is evaluated on ``chunk`` query rows at a time, so its int64
    intermediates stay near ``chunk * M * 8`` bytes each.
    """
    fn = rule.mask_mod("cpu")
    heads = rule.heads or 1
    out = torch.empty(heads, q_len, kv_len, dtype=torch.bool)
    kv = torch.arange(kv_len)[None, None, :]
    b = torch.zeros((), dtype=torch.int64)
    for h in range(heads):
        h_t = torch.tensor(h)
        for r0 in range(0, q_len, chunk):
            q_idx = torch.arange(r0, min(q_len, r0 + chunk))[None, :, None]
            out[h, r0 : r0 + chunk] = fn(b, h_t, q_idx, kv)[0]
    return out
