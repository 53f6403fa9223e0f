"""FlexAttention backend of neighborhood attention: ``torch.compile(flex_attention)`` with a
BlockMask built from NATTEN's neighbourhood rule.

The token axes are flattened row-major to ``N = prod(S)``; the ``mask_mod`` decodes each flat
index back into per-axis coordinates with div/mod, applies the per-axis window test (dilation
group, shifted non-causal window or causal window) and ANDs the axes. Inputs of 1 or 2 token
axes are viewed as 3 axes with size-1 leading axes (kernel 1, dilation 1), and the geometry
lives in small int64 tensors captured by the ``mask_mod``: one Python function then serves
every rank and parameter set, so dynamo does not retrace it per parameter set (only per
shape, ``dynamic=False``).

Inference only on CPU: compiled FlexAttention's CPU backward is not what this backend is for,
and it does not return the LSE here. float64 is refused on CPU because inductor's CPU
FlexAttention template only takes float32 / float16 / bfloat16.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``,
``N = prod(S)``.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from attnkit import CallInfo
from attnkit_neighborhood.params import NeighborhoodParams, normalize

__all__ = ["block_mask", "can_run", "mask_mod", "neighborhood_attention"]

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


def _geometry(
    spatial: tuple[int, ...], ks: tuple[int, ...], dl: tuple[int, ...], causal: tuple[bool, ...]
) -> tuple[tuple[int, ...], ...]:
    """Per-axis ``(n, kernel, dilation, causal, stride)`` padded to 3 axes at the front."""
    pad = 3 - len(spatial)
    n3 = (1,) * pad + tuple(spatial)
    k3 = (1,) * pad + tuple(ks)
    d3 = (1,) * pad + tuple(dl)
    c3 = (0,) * pad + tuple(int(c) for c in causal)
    stride = tuple(math.prod(n3[a + 1 :]) for a in range(3))
    return n3, k3, d3, c3, stride


def mask_mod(
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
    device: torch.device | str = "cpu",
) -> Any:
    """A FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` over flattened tokens: True where the
    query may attend to the key under NATTEN's rule (see :mod:`attnkit_neighborhood.masks`)."""
    geo = [torch.tensor(g, dtype=torch.int64, device=device) for g in _geometry(spatial, kernel_size, dilation, causal)]
    n_t, k_t, d_t, c_t, s_t = geo

    def neighbourhood(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        ok = q_idx >= 0  # all True, with the broadcast shape of the indices
        for a in range(3):
            n, kk, d, c, s = n_t[a], k_t[a], d_t[a], c_t[a], s_t[a]
            qc = (q_idx // s) % n
            kc = (kv_idx // s) % n
            g = qc % d
            same_group = g == kc % d
            qi = qc // d
            kj = kc // d
            # Causal: the K keys ending at the query (fewer near the start).
            causal_ok = (kj <= qi) & (kj > qi - kk)
            # Non-causal: K keys centred on the query, shifted inward at the group's borders.
            n_g = (n - g + d - 1) // d
            before = kk // 2
            after = kk // 2 + kk % 2 - 1
            lo = torch.minimum(torch.maximum(qi, before), n_g - 1 - after) - before
            window_ok = (kj >= lo) & (kj < lo + kk)
            ok = ok & same_group & torch.where(c > 0, causal_ok, window_ok)
        return ok

    return neighbourhood


@functools.lru_cache(maxsize=32)
def _cached_block_mask(
    spatial: tuple[int, ...],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    causal: tuple[bool, ...],
    device: str,
) -> Any:
    flex = _flex_module()
    n = math.prod(spatial)
    fn = mask_mod(spatial, kernel_size, dilation, causal, device)
    build = flex.create_block_mask
    if n * n > _EAGER_MASK_LIMIT:
        # Eager create_block_mask evaluates the mask_mod on the full (N, N) grid with int64
        # intermediates (about 600 MB at N=4096, 16x that at N=16384); compiled, it fuses them.
        build = torch.compile(flex.create_block_mask)
    # B=None, H=None: the neighbourhood is the same for every batch entry and head.
    return build(fn, None, None, n, n, device=device)


def block_mask(
    spatial: tuple[int, ...], params: NeighborhoodParams, is_causal: bool | tuple[bool, ...], device: torch.device | str
) -> Any:
    """The BlockMask of one shape / parameter set, built once and cached.

    :param spatial: the token axes ``S`` (1 to 3 sizes).
    """
    ks, dl, causal = normalize(params, tuple(spatial), is_causal)
    return _cached_block_mask(tuple(spatial), ks, dl, causal, str(torch.device(device)))


# dynamo compiles one static graph per input shape and, past its recompile limit (8 by
# default), silently runs flex_attention eagerly: the unfused O(N^2) path this backend exists to
# avoid. Raise the limit for this backend's calls only.
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


def neighborhood_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    params: NeighborhoodParams,
    is_causal: bool | tuple[bool, ...],
    scale: float,
    return_lse: bool,
    **_: Any,
) -> torch.Tensor:
    """Neighborhood attention through compiled FlexAttention.

    :param q: ``(B, Hq, *S, D)``.
    :param k: ``(B, Hkv, *S, D)``, ``Hq % Hkv == 0`` (GQA through ``enable_gqa``, no copy).
    :param v: ``(B, Hkv, *S, Dv)``.
    :returns: ``(B, Hq, *S, Dv)`` in ``q.dtype``.
    """
    if return_lse:
        raise ValueError("the flex backend does not return the log-sum-exp; call with return_lse=False")
    spatial = tuple(q.shape[2:-1])
    b, hq, d = q.shape[0], q.shape[1], q.shape[-1]
    hkv, dv = k.shape[1], v.shape[-1]
    n = math.prod(spatial)
    bm = block_mask(spatial, params, is_causal, q.device)
    qf = q.reshape(b, hq, n, d)
    kf = k.reshape(b, hkv, n, d)
    vf = v.reshape(b, hkv, n, dv)
    with _recompile_limit():
        out = _compiled_flex()(qf, kf, vf, block_mask=bm, scale=scale, enable_gqa=hq != hkv)
    return out.reshape(b, hq, *spatial, dv).to(q.dtype)
