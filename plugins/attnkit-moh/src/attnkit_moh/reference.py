"""Dense "every head, then mask" MoH reference in float64: the independent oracle of the tests.

It re-derives everything from the module's weights with plain tensor math and per-token loops
(no SDPA, no topk, no gather): routing by sorting each token's router probabilities, every
head's attention as an explicit ``softmax(q k^T · D^-1/2) v`` with K/V repeated for GQA, the
gate products, and ``o_proj``. Slow; meant for tiny sizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from attnkit_moh.module import MoHAttention

__all__ = ["ReferenceOutput", "moh_reference"]


class ReferenceOutput(NamedTuple):
    out: torch.Tensor  # (B, T, E)
    gates: torch.Tensor  # (B, T, H)
    selected: torch.Tensor  # (B, T, E_routed) bool
    lb_loss: torch.Tensor | None  # l_aux (unweighted), learned router only


def _softmax(z: torch.Tensor) -> torch.Tensor:
    z = z - z.max(dim=-1, keepdim=True).values
    e = z.exp()
    return e / e.sum(dim=-1, keepdim=True)


def moh_reference(module: MoHAttention, x: torch.Tensor) -> ReferenceOutput:
    """Float64 output of ``module`` (an :class:`~attnkit_moh.module.MoHAttention`) on
    ``x (B, T, E)``, computing every head for every token and zeroing the unpicked ones."""
    c, lay, router = module.config, module.layout, module.params.router
    x = x.detach().double()
    w = {n: p.detach().double() for n, p in module.named_parameters()}
    b, t, _ = x.shape
    h, hkv, d, hs, e, k = c.heads, c.n_kv_heads, c.d_head, lay.shared, lay.routed, lay.top_k

    def lin(name: str, inp: torch.Tensor) -> torch.Tensor:
        y = inp @ w[f"{name}.weight"].T
        return y + w[f"{name}.bias"] if f"{name}.bias" in w else y

    q = lin("q_proj", x).view(b, t, h, d)
    kk = lin("k_proj", x).view(b, t, hkv, d).repeat_interleave(h // hkv, dim=2)
    vv = lin("v_proj", x).view(b, t, hkv, d).repeat_interleave(h // hkv, dim=2)

    gates = torch.zeros(b, t, h, dtype=torch.float64)
    selected = torch.zeros(b, t, e, dtype=torch.bool)
    probs = torch.zeros(b, t, e, dtype=torch.float64)
    for bi in range(b):
        for ti in range(t):
            xt = x[bi, ti]
            if router == "query_norm":
                if k > 0:
                    norms = q[bi, ti, hs:].pow(2).sum(-1).sqrt()
                    std = ((norms - norms.mean()).pow(2).sum() / (e - 1)).sqrt()
                    p = _softmax(norms / std)
                    top = torch.argsort(p, descending=True, stable=True)[:k]
                    probs[bi, ti] = p
                    selected[bi, ti, top] = True
                    gates[bi, ti, hs + top] = 1.0
                gates[bi, ti, :hs] = 1.0
                continue
            g_s = _softmax(w["wg_1.weight"] @ xt) * hs if hs > 1 else torch.ones(hs, dtype=torch.float64)
            if k == 0:
                gates[bi, ti, :hs] = g_s
                continue
            p = _softmax(w["wg.weight"] @ xt)
            top = torch.argsort(p, descending=True, stable=True)[:k]
            probs[bi, ti] = p
            selected[bi, ti, top] = True
            g_r = torch.zeros(e, dtype=torch.float64)
            g_r[top] = p[top] / p[top].sum() * k
            if hs > 0:
                a = _softmax(w["wg_0.weight"] @ xt) * 2
                gates[bi, ti, :hs] = a[0] * g_s
                gates[bi, ti, hs:] = a[1] * g_r
            else:
                gates[bi, ti, hs:] = g_r

    logits = torch.einsum("bqhd,bkhd->bhqk", q, kk) / d**0.5
    if c.causal:
        allowed = torch.ones(t, t, dtype=torch.bool).tril()
        logits = logits.masked_fill(~allowed, float("-inf"))
    heads = torch.einsum("bhqk,bkhd->bqhd", _softmax(logits), vv)  # (B, T, H, D)
    out = lin("o_proj", (heads * gates.unsqueeze(-1)).reshape(b, t, h * d))
    lb = None
    if router == "learned" and k > 0:
        me = probs.reshape(-1, e).mean(0)
        ce = selected.reshape(-1, e).double().mean(0)
        lb = e * (me * ce).sum()
    return ReferenceOutput(out, gates, selected, lb)
