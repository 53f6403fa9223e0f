"""CCA-Attention written out with Python loops from the paper's definition (float64), sharing
no code with the plugin: the oracle of ``test_core_context.py``.

For query ``t`` (0-based, ``r = t + 1``): core token ``i`` (group ``[i g, (i + 1) g)``) is
visible iff ``r > s`` and ``i + 1 <= floor((r - s) / g)``; raw token ``c`` (1-based) is
visible iff ``n_pool(r) < c <= r`` with ``n_pool(r) = max(floor((r - s) / g) g, 0)``
(official ``generate_mask``, 1-based as there).
"""

from __future__ import annotations

import torch


def visible(r: int, g: int, s: int) -> tuple[int, list[int]]:
    """``(core tokens seen, 0-based raw tokens seen)`` of the query at 1-based position ``r``."""
    n_core = (r - s) // g if r > s else 0
    n_pool = max(((r - s) // g) * g, 0) if r > s else 0
    return n_core, [c - 1 for c in range(1, r + 1) if n_pool < c <= r]


def cca(q, k, v, g, s, pool="cca", scale=None):
    """``out (B, Hq, L, Dv)`` float64 for ``q (B, Hq, L, D)``, ``k/v (B, Hkv, L, D)``."""
    b_n, hq, n, d = q.shape
    grp = hq // k.shape[1]
    scale = d**-0.5 if scale is None else scale
    q, k, v = q.double(), k.double(), v.double()
    rows = {}
    for b in range(b_n):
        for h in range(hq):
            kv = h // grp
            cores = []
            for i in range(n // g):
                idx = list(range(i * g, (i + 1) * g))
                if pool == "mean":
                    w = [1.0 / g] * g
                else:
                    last = q[b, h, (i + 1) * g - 1]
                    logits = [(last @ k[b, kv, j]) * scale for j in idx]
                    mx = max(float(x.detach()) for x in logits)
                    e = [torch.exp(x - mx) for x in logits]
                    w = [x / sum(e) for x in e]
                kc = sum(wj * k[b, kv, j] for wj, j in zip(w, idx))
                vc = sum(wj * v[b, kv, j] for wj, j in zip(w, idx))
                cores.append((kc, vc))
            for t in range(n):
                n_core, raw = visible(t + 1, g, s)
                keys = [cores[i] for i in range(n_core)] + [(k[b, kv, j], v[b, kv, j]) for j in raw]
                logits = [(q[b, h, t] @ kk) * scale for kk, _ in keys]
                mx = max(float(x.detach()) for x in logits)
                e = [torch.exp(x - mx) for x in logits]
                rows[b, h, t] = sum(ei * vv for ei, (_, vv) in zip(e, keys)) / sum(e)
    return torch.stack(
        [torch.stack([torch.stack([rows[b, h, t] for t in range(n)]) for h in range(hq)]) for b in range(b_n)]
    )
