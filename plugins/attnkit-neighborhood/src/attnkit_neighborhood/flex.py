"""FlexAttention backend of neighborhood attention: ``torch.compile(flex_attention)`` with a
BlockMask built from NATTEN's neighbourhood rule.

The token axes are flattened row-major to ``N = prod(S)``; the ``mask_mod`` decodes each flat
index back into per-axis coordinates with div/mod, applies the per-axis window test (dilation
group, shifted non-causal window or causal window) and ANDs the axes. Inputs of 1 or 2 token
axes are viewed as 3 axes with size-1 leading axes (kernel 1, dilation 1), and the geometry
lives in small int64 tensors captured by the ``mask_mod``: one Python function then serves
every rank and parameter set, so dynamo does not retrace it per parameter set (only per
shape, ``dynamic=False``). The BlockMask cache, the compiled function, dynamo's recompile
limit and the ``can_run`` reasons are :mod:`attnkit.kernels.flex`'s.

Shape legend: ``q (B, Hq, *S, D)``, ``k (B, Hkv, *S, D)``, ``v (B, Hkv, *S, Dv)``,
``N = prod(S)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.flex import MaskRule, backend
from attnkit_neighborhood.params import normalize

__all__ = ["mask_mod", "mask_rule", "neighborhood_attention"]


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


def mask_rule(call: KernelCall) -> MaskRule:
    """The neighbourhood of ``call``'s token axes and parameters (the same for every head)."""
    ks, dl, causal = normalize(call.params, call.spatial, call.causal)
    return MaskRule(mask_mod, (tuple(call.spatial), ks, dl, causal))


#: The flex backend: ``q (B, Hq, *S, D)``, ``k/v (B, Hkv, *S, D|Dv)`` (GQA through
#: ``enable_gqa``, no copy) -> ``(B, Hq, *S, Dv)``.
neighborhood_attention = backend(mask_rule)
