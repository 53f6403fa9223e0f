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

Non-finite input: FlexAttention drops NaN logits block by block (a NaN row may come out as
zeros, or as a finite mix of the other blocks) and spreads a NaN value to rows that may not
attend to it. :func:`backend` therefore checks its inputs first (one sum and one max per
tensor: a host sync on GPU) and, only when something is not finite or the logits could
overflow float32, runs flex on zeroed non-finite rows, finds the query rows that may attend
to one with a second flex call on indicator values (same shapes, so no recompile) and sets
them to NaN, and recomputes the rows whose logits could overflow with the dense reference
over their allowed keys: the rule of :mod:`attnkit.reference.dense`.

Short key lengths on CPU: inductor's CPU template (torch 2.13) computes ``q @ k.T`` with a
micro-GEMM of 16-column blocks; on a CPU whose float vectors hold 8 lanes (AVX2), a last block
of exactly 8 columns reads 8 keys past the block and writes 8 logits past its row. When the
key length is below the template's 128-key block and ``kv_len % 16 == 8`` (8, 24, ..., 120), the
last row's overflow lands on the running row maxima of the first 8 query rows, which then hold
whatever followed the keys in memory: those rows come out wrong (often zeros), differently from
run to run. :func:`attention` therefore pads such key lengths by 8 zero keys that the mask
refuses (:func:`cpu_kv_padding`, :func:`padded_rule`); the padded length takes the safe path.

Shape legend: as in :mod:`attnkit.kernels.call`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

from attnkit.kernels.call import KernelCall, kernel
from attnkit.reference.dense import attention as reference_attention
from attnkit.tensors import logit_bound, non_finite_rows

__all__ = [
    "CPU_DTYPES",
    "RECOMPILE_LIMIT",
    "MaskRule",
    "attention",
    "backend",
    "block_mask",
    "can_run",
    "compiled_flex_attention",
    "cpu_kv_padding",
    "dense_mask",
    "padded_rule",
    "recompile_limit",
]

CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: dynamo's recompile limit inside flex calls: one graph per shape, up to this many shapes.
RECOMPILE_LIMIT = 64
# Above this many (query, key) pairs the BlockMask is built by a compiled create_block_mask:
# eager create_block_mask evaluates the mask_mod on the full grid with int64 intermediates
# (about 600 MB at N=4096, 16x that at N=16384); compiled, it fuses them.
EAGER_MASK_LIMIT = 1 << 26
#: inductor's CPU flex template block (keys per block when kv_len is at least this long).
CPU_KV_BLOCK = 128


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
    :param batch: ``None`` when the mask is the same for every batch entry, else the batch
        size it distinguishes (the mask_mod then reads ``b``: a data-dependent selection).
    :param cache: keep the BlockMask for the next call with the same rule (the default: a
        model calls the same geometry again and again). ``False`` for a rule whose ``args``
        hold a tensor computed from this call's inputs: it would never be asked for again,
        and a cache would keep it alive.
    """

    factory: Callable[..., Any]
    args: tuple[Hashable, ...]
    heads: int | None = None
    batch: int | None = None
    cache: bool = True

    def mask_mod(self, device: torch.device | str = "cpu") -> Any:
        return self.factory(*self.args, device=device)


def cpu_kv_padding(kv_len: int, device: torch.device | str) -> int:
    """Zero keys to append on ``device`` so that compiled flex avoids the CPU template's
    8-column tail overflow (module docstring): 8 when ``kv_len < 128`` and ``kv_len % 16 == 8``."""
    if torch.device(device).type != "cpu":
        return 0
    return 8 if kv_len < CPU_KV_BLOCK and kv_len % 16 == 8 else 0


def _padded_mask_mod(factory: Callable[..., Any], args: tuple[Hashable, ...], kv_len: int, device: Any = "cpu") -> Any:
    inner = factory(*args, device=device)
    last = kv_len - 1

    def padded(b, h, q_idx, kv_idx):  # type: ignore[no-untyped-def]
        # Clamped so that a mask_mod indexing a tensor by kv_idx never reads past it.
        return inner(b, h, q_idx, kv_idx.clamp(max=last)) & (kv_idx <= last)

    return padded


def padded_rule(rule: MaskRule, kv_len: int) -> MaskRule:
    """``rule`` over ``kv_len`` real keys followed by padding keys that every query refuses."""
    return MaskRule(_padded_mask_mod, (rule.factory, rule.args, int(kv_len)), rule.heads, rule.batch, rule.cache)


def _build_block_mask(rule: MaskRule, q_len: int, kv_len: int, device: str) -> Any:
    flex = _flex_module()
    build = flex.create_block_mask
    if q_len * kv_len * (rule.heads or 1) * (rule.batch or 1) > EAGER_MASK_LIMIT:
        build = torch.compile(flex.create_block_mask)
    return build(rule.mask_mod(device), rule.batch, rule.heads, q_len, kv_len, device=device)


_cached_block_mask = functools.lru_cache(maxsize=64)(_build_block_mask)


def block_mask(rule: MaskRule, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> Any:
    """The BlockMask of ``rule`` over ``q_len`` queries and ``kv_len`` keys, built once and
    cached (a model calls the same shapes again and again) unless ``rule.cache`` is False.

    On CPU, for the key lengths :func:`cpu_kv_padding` names, the mask covers that many more
    keys, all refused; :func:`attention` pads k and v to match.
    """
    build = _cached_block_mask if rule.cache else _build_block_mask
    pad = cpu_kv_padding(int(kv_len), device)
    if pad:  # the CPU template's tail overflow (module docstring); attention() pads k and v
        return build(padded_rule(rule, int(kv_len)), int(q_len), int(kv_len) + pad, str(torch.device(device)))
    return build(rule, int(q_len), int(kv_len), str(torch.device(device)))


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
    ``enable_gqa`` (k/v are not copied). Returns ``out (B, Hq, N, Dv)``.

    A ``mask`` over more keys than the call has (built from :func:`padded_rule`) gets k and v
    padded with zero keys to its length; the mask must refuse them.
    """
    if call.return_lse:
        raise ValueError("the flex backend does not return the log-sum-exp; call with return_lse=False")
    k, v = call.k, call.v
    pad = int(mask.seq_lengths[1]) - call.kv_len
    if pad < 0:
        raise ValueError(f"block_mask covers {mask.seq_lengths[1]} keys, fewer than the call's kv_len={call.kv_len}")
    if pad:
        k = torch.nn.functional.pad(k, (0, 0, 0, pad))
        v = torch.nn.functional.pad(v, (0, 0, 0, pad))
    with recompile_limit():
        return compiled_flex_attention()(
            call.q, k, v, block_mask=mask, scale=call.scale, enable_gqa=call.q_heads != call.kv_heads
        )


def backend(rule: Callable[[KernelCall], MaskRule]) -> Callable[..., Any]:
    """The flex backend implementation of a spec whose mask ``rule(call)`` gives.

    The rule stays reachable as ``impl.mask_rule`` (benchmarks build their masked-SDPA peer
    from it). Non-finite input and overflowing logits follow attnkit's rule (see the module
    docstring); finite input in range costs one check of the inputs.
    """

    def flex_kernel(call: KernelCall) -> torch.Tensor:
        r = rule(call)
        mask = block_mask(r, call.q_len, call.kv_len, call.device)
        if _in_range(call):
            return attention(call, mask)
        return _guarded(call, r, mask)

    flex_kernel.__name__ = f"flex_{getattr(rule, '__name__', 'kernel').lstrip('_')}"
    impl = kernel(flex_kernel)
    impl.mask_rule = rule  # type: ignore[attr-defined]
    return impl


def _in_range(call: KernelCall) -> bool:
    """Whether every input entry is finite and no logit can overflow (one host sync)."""
    bound, limit = logit_bound(call.q, call.k, call.scale)
    # The bound is finite only where q and k are (max|.| keeps NaN and infinities); v's sum is
    # finite only if v is.
    v_sum = call.v.sum(dtype=torch.float64 if call.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(v_sum) & (bound < limit).all())


def _guarded(call: KernelCall, rule: MaskRule, mask: Any) -> torch.Tensor:
    """Flex under attnkit's non-finite rule: zeroed non-finite rows, NaN where a query may
    attend to one, and the rows that may overflow recomputed by the dense reference."""
    q, k, v = call.q, call.k, call.v
    bad_q = non_finite_rows(q)  # (B, Hq, N)
    bad_kv = non_finite_rows(k) | non_finite_rows(v)  # (B, Hkv, M)
    clean = call.replace(
        q=q.masked_fill(bad_q.unsqueeze(-1), 0.0),
        k=k.masked_fill(bad_kv.unsqueeze(-1), 0.0),
        v=v.masked_fill(bad_kv.unsqueeze(-1), 0.0),
    )
    out = attention(clean, mask)
    if bool(bad_q.any() | bad_kv.any()):
        # All-zero q and k: each row averages the indicators uniformly over its allowed keys.
        marks = torch.zeros_like(v)
        marks[..., 0] = bad_kv.to(v.dtype)
        if marks.shape[-1] > 1:
            marks[..., 1] = 1.0
        flags = attention(call.replace(q=torch.zeros_like(q), k=torch.zeros_like(k), v=marks), mask)
        if marks.shape[-1] > 1:
            has_key = flags[..., 1] > 0.5
        else:
            ones = torch.ones_like(v)
            has_key = attention(call.replace(q=torch.zeros_like(q), k=torch.zeros_like(k), v=ones), mask)[..., 0] > 0.5
        poisoned = (flags[..., 0] > 0) | (bad_q & has_key)
        out = out.masked_fill(poisoned.unsqueeze(-1), float("nan"))
    bound, limit = logit_bound(clean.q, clean.k, call.scale)
    risky = ~(bound < limit)
    if bool(risky.any()):
        out = _recompute_rows(call, rule, out, risky)
    return out


def _recompute_rows(call: KernelCall, rule: MaskRule, out: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``out`` with the query rows ``rows (B, Hq, N)`` recomputed by the dense reference
    over the keys ``rule`` allows them (few rows: the slow path of overflowing logits)."""
    fn = rule.mask_mod(call.device)
    kv_idx = torch.arange(call.kv_len, device=call.device)[None, None, :]
    out = out.clone()
    for b, h in torch.nonzero(rows.any(dim=-1)).tolist():
        idx = torch.nonzero(rows[b, h]).squeeze(-1)
        b_t, h_t = torch.tensor(b, device=call.device), torch.tensor(h, device=call.device)
        allowed = fn(b_t, h_t, idx[None, :, None], kv_idx)[0]  # (R, M)
        hk = h // call.group
        res = reference_attention(
            call.q[b : b + 1, h : h + 1, idx],
            call.k[b : b + 1, hk : hk + 1],
            call.v[b : b + 1, hk : hk + 1],
            mask=allowed.expand(len(idx), call.kv_len),
            scale=call.scale,
        )
        out[b, h, idx] = res[0, 0].to(out.dtype)
    return out


def dense_mask(rule: MaskRule, q_len: int, kv_len: int, *, chunk: int = 1024, batch_entry: int = 0) -> torch.Tensor:
    """``rule`` as a bool tensor ``(H|1, N, M)``, True where the query may attend (for batch
    entry ``batch_entry`` of a rule that distinguishes them).

    The ``mask_mod`` is evaluated on ``chunk`` query rows at a time, so its int64
    intermediates stay near ``chunk * M * 8`` bytes each.
    """
    fn = rule.mask_mod("cpu")
    heads = rule.heads or 1
    out = torch.empty(heads, q_len, kv_len, dtype=torch.bool)
    kv = torch.arange(kv_len)[None, None, :]
    b = torch.tensor(int(batch_entry), dtype=torch.int64)
    for h in range(heads):
        h_t = torch.tensor(h)
        for r0 in range(0, q_len, chunk):
            q_idx = torch.arange(r0, min(q_len, r0 + chunk))[None, :, None]
            out[h, r0 : r0 + chunk] = fn(b, h_t, q_idx, kv)[0]
    return out
