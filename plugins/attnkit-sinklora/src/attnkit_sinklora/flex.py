"""FlexAttention backend of SF-Attn: ``torch.compile(flex_attention)`` with a ``mask_mod``.

The ``mask_mod`` is the [inferred] rule itself: same group (``(pos + shift_h) // G``, shift
``G - G // 2`` for the shifted heads of the S² variant) or a sink key, AND causal. The group size,
sink count and per-head shifts are captured as small tensors so one Python function serves
every parameter set. The BlockMask is built once per shape and cached; with ``H=None`` when
no head is shifted (the mask is the same for every head).

Inference only on CPU (no backward, no LSE); float64 is refused on CPU because inductor's CPU
FlexAttention template takes float32 / float16 / bfloat16 only.

Shape legend: ``q (B, Hq, T, D)``, ``k (B, Hkv, T, D)``, ``v (B, Hkv, T, Dv)``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from attnkit import CallInfo
from attnkit_sinklora.params import SFAttnParams, group_size, shift_of_head

__all__ = ["block_mask", "can_run", "mask_mod", "sf_attention"]

_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Above this many (query, key) pairs the BlockMask is built by a compiled create_block_mask.
_EAGER_MASK_LIMIT = 1 << 26


def _flex_module() -> Any:
    from torch.nn.attention import flex_attention as module

    return module


def can_run(call: CallInfo) -> str | None:
    """``None`` when torch has FlexAttention and the call is CPU inference (or on CUDA)."""
    try:
        _flex_module()
    except ImportError as exc:
        return f"this torch ({torch.__version__}) has no torch.nn.attention.flex_attention: {exc}"
    if call.return_lse:
        return "the flex backend does not return the log-sum-exp (return_lse=True)"
    if call.device.type == "cpu":
        if call.requires_grad:
            return "inference only on CPU: an input requires grad (use the numba or reference backend)"
        if call.dtype not in _CPU_DTYPES:
            return (
                f"FlexAttention on CPU supports float32/float16/bfloat16, not {str(call.dtype).removeprefix('torch.')}"
            )
    if call.exporting:
        return "cannot be traced for ONNX export"
    return None


def mask_mod(g: int, n_sink: int, shifts: tuple[int, ...], causal: bool, device: torch.device | str = "cpu") -> Any:
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)``: True where the query may attend.

    :param shifts: the token shift of every query head (0 or ``g - g // 2``).
    """
    per_head = any(shifts)
    shift_t = torch.tensor(shifts, dtype=torch.int64, device=device)
    g_t = torch.tensor(g, dtype=torch.int64, device=device)
    ns_t = torch.tensor(n_sink, dtype=torch.int64, device=device)

    def sf(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        # flex_attention calls the mask_mod with every real head index even when the
        # BlockMask was built with H=None, so the per-head table is only read when it exists.
        s = shift_t[h] if per_head else 0
        ok = ((q_idx + s) // g_t == (kv_idx + s) // g_t) | (kv_idx < ns_t)
        if causal:
            ok = ok & (kv_idx <= q_idx)
        return ok

    return sf


@functools.lru_cache(maxsize=32)
def _cached_block_mask(t: int, g: int, n_sink: int, shifts: tuple[int, ...], causal: bool, device: str) -> Any:
    flex = _flex_module()
    per_head = any(shifts)
    fn = mask_mod(g, n_sink, shifts, causal, device)
    build = flex.create_block_mask
    if t * t * (len(shifts) if per_head else 1) > _EAGER_MASK_LIMIT:
        # Eager create_block_mask evaluates the mask_mod on the full grid with int64
        # intermediates (gigabytes at T=16k); compiled, it fuses them.
        build = torch.compile(flex.create_block_mask)
    return build(fn, None, len(shifts) if per_head else None, t, t, device=device)


def block_mask(params: SFAttnParams, t: int, n_heads: int, is_causal: bool, device: torch.device | str) -> Any:
    """The BlockMask of one length / head count / parameter set, built once and cached."""
    g = group_size(params, t)
    shifts = tuple(shift_of_head(params, h, n_heads, g) for h in range(n_heads))
    return _cached_block_mask(t, g, params.n_sink, shifts, bool(is_causal), str(torch.device(device)))


# dynamo compiles one static graph per input shape and, past its recompile limit (8 by
# default), silently runs flex_attention eagerly: the unfused O(T^2) path this backend exists
# to avoid. Raise the limit for this backend's calls only.
RECOMPILE_LIMIT = 64


def _recompile_limit() -> Any:
    import torch._dynamo

    if hasattr(torch._dynamo.config, "recompile_limit"):
        return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)
    return torch._dynamo.config.patch(cache_size_limit=RECOMPILE_LIMIT)  # torch < 2.6


@functools.cache
def _compiled_flex() -> Any:
    # One compiled function for the process; dynamo keeps one graph per input shape.
    return torch.compile(_flex_module().flex_attention, dynamic=False)


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
) -> torch.Tensor:
    """SF-Attn through compiled FlexAttention.

    :param q: ``(B, Hq, T, D)``; ``k`` ``(B, Hkv, T, D)`` (GQA through ``enable_gqa``, no
        copy); ``v`` ``(B, Hkv, T, Dv)``.
    :returns: ``(B, Hq, T, Dv)`` in ``q.dtype``.
    """
    if return_lse:
        raise ValueError("the flex backend does not return the log-sum-exp; call with return_lse=False")
    causal = bool(is_causal[0]) if isinstance(is_causal, tuple) else bool(is_causal)
    hq, hkv, t = q.shape[1], k.shape[1], q.shape[2]
    bm = block_mask(params, t, hq, causal, q.device)
    with _recompile_limit():
        out = _compiled_flex()(q, k, v, block_mask=bm, scale=scale, enable_gqa=hq != hkv)
    return out.to(q.dtype)
