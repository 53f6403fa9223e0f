"""The paper's grouped softmax written out naively, one query at a time, in float64 Python
loops: an outer softmax over the current section and the landmark logits, an inner softmax per
gated block, weights multiplied (spec S5 (b)); retrieval picks its blocks by sorting Python
lists. Independent of the package (no shared code)."""

import math

import torch


def _softmax(xs):
    m = max(xs)
    es = [math.exp(x - m) for x in xs]
    t = sum(es)
    return [e / t for e in es], m + math.log(t)


def grouped_softmax_naive(q, k, v, block_size, is_causal, top_k=None, scale=None):
    """``out (B, Hq, Tq, Dv)`` and ``lse (B, Hq, Tq)`` in float64."""
    b_, hq, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    g = hq // hkv
    scale = d**-0.5 if scale is None else scale
    out = torch.zeros(b_, hq, tq, v.shape[-1], dtype=torch.float64)
    lse = torch.full((b_, hq, tq), float("-inf"), dtype=torch.float64)
    n_full = tk // block_size
    for b in range(b_):
        for h in range(hq):
            kv = h // g
            for i in range(tq):
                t = i + tk - tq
                if t < 0:
                    continue
                qb = t // block_size

                qi, kh = q[b, h, i].double(), k[b, kv].double()

                def s(j, qi=qi, kh=kh):
                    return float(qi @ kh[j]) * scale

                def is_landmark(j):
                    return j % block_size == block_size - 1

                current = [
                    j for j in range(tk)
                    if j // block_size == qb and not is_landmark(j) and (not is_causal or j <= t)
                ]  # fmt: skip
                blocks = [j for j in range(n_full) if (j < qb if is_causal else j != qb)]
                if top_k is not None:
                    ranked = sorted(blocks, key=lambda j: (-s(j * block_size + block_size - 1), j))
                    blocks = sorted(ranked[:top_k])
                landmarks = [j * block_size + block_size - 1 for j in blocks]
                outer, row_lse = _softmax([s(c) for c in current] + [s(L) for L in landmarks])
                weights = dict(zip(current, outer))
                for j, p_l in zip(blocks, outer[len(current) :]):
                    members = list(range(j * block_size, j * block_size + block_size - 1))
                    inner, _ = _softmax([s(u) for u in members])
                    for u, p_u in zip(members, inner):
                        weights[u] = p_l * p_u
                for j, w in weights.items():
                    out[b, h, i] += w * v[b, kv, j].double()
                lse[b, h, i] = row_lse
    return out, lse
