"""FlexAttention backend of ``graph_khop``: the k-hop rule as a ``mask_mod``.

The factory turns the parameters into two captured tensors, the node of every key position
``(Tk,)`` and the flattened reach table ``((N + 1)^2,)`` (index ``N``: text), so the
``mask_mod`` is two lookups and the causal test. The BlockMask cache, ``torch.compile`` once,
dynamo's recompile limit, the ``can_run`` reasons (inference only on CPU; float32 / float16 /
bfloat16) and the padding of short key lengths around inductor's CPU template overflow (key
lengths below 128 with ``Tk % 16 == 8``, T = 40 among them) are :mod:`attnkit.kernels.flex`'s.
"""

from __future__ import annotations

from typing import Any

import torch

from attnkit.kernels import KernelCall
from attnkit.kernels.flex import MaskRule, backend
from attnkit_graph_attention.graph import node_of_positions, reach_table
from attnkit_graph_attention.params import GraphKhopParams, num_nodes

__all__ = ["graph_khop_attention", "mask_mod", "mask_rule"]


def mask_mod(
    params: GraphKhopParams, kv_len: int, causal: bool, offset: int, device: torch.device | str = "cpu"
) -> Any:
    """``mask_mod(b, h, q_idx, kv_idx)``: the k-hop rule of ``params``; query ``q_idx`` sits at
    key position ``q_idx + offset`` (``offset = Tk - Tq``)."""
    n = num_nodes(params)
    node = node_of_positions(params, kv_len, device)  # (Tk,)
    table = reach_table(params, device).reshape(-1)  # ((N + 1)^2,)
    width = torch.tensor(n + 1, device=device)
    text = torch.tensor(n, device=device)
    off = torch.tensor(offset, device=device)
    bidi = params.bidirectional

    def graph_khop(b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        pos = q_idx + off
        nq, nk = node[pos], node[kv_idx]
        ok = table[nq * width + nk]
        if not causal:
            return ok
        order = kv_idx <= pos
        if bidi:
            order = order | ((nq < text) & (nk < text))
        return ok & order

    return graph_khop


def mask_rule(call: KernelCall) -> MaskRule:
    """The k-hop mask of ``call`` (the same for every head and batch entry)."""
    return MaskRule(mask_mod, (call.params, int(call.kv_len), call.causal[0], int(call.kv_len - call.q_len)))


graph_khop_attention = backend(mask_rule)
