"""An independent float64 reference of grouped attention under a given allocation (loops over
samples and query heads, plain softmax), shared by the tests."""

from __future__ import annotations

import math

import torch


def project(module: torch.nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """q (B, T, Hq, D), k, v (B, T, G, D) in float64 from the module's weights."""
    c = module.config
    x = x.double()

    def lin(layer: torch.nn.Linear) -> torch.Tensor:
        y = x @ layer.weight.detach().double().T
        return y + layer.bias.detach().double() if layer.bias is not None else y

    b, t, _ = x.shape
    q = lin(module.q_proj).view(b, t, c.heads, c.d_head)
    k = lin(module.k_proj).view(b, t, c.n_kv_heads, c.d_head)
    v = lin(module.v_proj).view(b, t, c.n_kv_heads, c.d_head)
    return q, k, v


def reference_output(
    module: torch.nn.Module, x: torch.Tensor, counts: list[list[int]], noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Loop over samples and query heads: query head ``h`` of sample ``b`` reads the KV head
    its contiguous range in ``counts[b]`` names; plain softmax attention in float64."""
    c = module.config
    q, k, v = project(module, x)
    b, t = x.shape[:2]
    z = torch.zeros(b, t, c.heads, c.d_head, dtype=torch.float64)
    for i in range(b):
        owner = [j for j, n in enumerate(counts[i]) for _ in range(n)]
        assert len(owner) == c.heads
        for h in range(c.heads):
            j = owner[h]
            s = q[i, :, h] @ k[i, :, j].T / math.sqrt(c.d_head)
            if c.causal:
                s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
            z[i, :, h] = torch.softmax(s, dim=-1) @ v[i, :, j]
    if noise is not None:
        z = z - noise.double().transpose(1, 2)
    o = module.o_proj
    out = z.reshape(b, t, -1) @ o.weight.detach().double().T
    return out + o.bias.detach().double() if o.bias is not None else out


def norms_per_sample(module: torch.nn.Module, x: torch.Tensor) -> list[list[float]]:
    _, k, _ = project(module, x)
    return [[math.sqrt(float((k[i, :, j] ** 2).sum())) for j in range(k.shape[2])] for i in range(k.shape[0])]
