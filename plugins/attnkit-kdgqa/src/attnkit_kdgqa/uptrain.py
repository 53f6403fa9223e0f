"""MHA -> GQA up-training initialisation (arXiv:2408.08454, after Ainslie et al. 2023):
mean-pool the K and V projections of each contiguous group of heads; Q and O are copied.

``to_gqa(mha, kv_heads)`` gives the static GQA baseline as a plain attnkit
:class:`~attnkit.modules.MultiHeadAttention`; the ``kdgqa``/``dgqa``/``pgqa`` specs use the
same pooling in their ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses

import torch

from attnkit.modules import ModuleConfig, MultiHeadAttention

__all__ = ["mean_pool_heads", "pooled_state", "target_kv_heads", "to_gqa"]


def mean_pool_heads(param: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    """Mean over each contiguous group of ``heads // groups`` heads of a K or V projection.

    :param param: weight ``(heads * D, E)`` or bias ``(heads * D,)``; rows are head-major
        (rows ``[h*D, (h+1)*D)`` belong to head ``h``), which is why it is viewed as
        ``(heads, D, ...)`` and never ``(D, heads, ...)``.
    :returns: ``(groups * D, E)`` or ``(groups * D,)``.
    """
    if heads % groups:
        raise ValueError(f"kv_heads={groups} must divide the source's KV heads ({heads})")
    if param.shape[0] % heads:
        raise ValueError(f"param rows {param.shape[0]} are not a multiple of heads={heads}")
    d = param.shape[0] // heads
    rest = tuple(param.shape[1:])
    return param.reshape(groups, heads // groups, d, *rest).mean(dim=1).reshape(groups * d, *rest)


def target_kv_heads(spec: str, config: ModuleConfig, kv_heads: int | None) -> int:
    """The KV heads of the converted module: ``kv_heads``, else the source's when it is
    already grouped, else ``heads // 2`` (the official code's default)."""
    src = config.n_kv_heads
    if kv_heads is None:
        kv_heads = src if src < config.heads else config.heads // 2
    if kv_heads < 1 or kv_heads >= config.heads:
        raise ValueError(f"{spec}: kv_heads must be in [1, heads={config.heads}), got {kv_heads}")
    if src % kv_heads:
        raise ValueError(f"{spec}: kv_heads={kv_heads} must divide the source's kv_heads={src} (heads={config.heads})")
    return kv_heads


def pooled_state(source: MultiHeadAttention, kv_heads: int) -> dict[str, torch.Tensor]:
    """``source``'s projection weights with K/V mean-pooled to ``kv_heads`` (copies)."""
    src = source.config.n_kv_heads
    state: dict[str, torch.Tensor] = {}
    for name, value in source.state_dict().items():
        proj = name.split(".")[0]
        if proj in ("k_proj", "v_proj"):
            state[name] = mean_pool_heads(value.detach(), src, kv_heads).clone()
        elif proj in ("q_proj", "o_proj"):
            state[name] = value.detach().clone()
    return state


def to_gqa(mha: MultiHeadAttention, kv_heads: int) -> MultiHeadAttention:
    """Static GQA from a trained ``mha`` (its kernel, parameters and backend kept), with K/V
    of each contiguous group of heads mean-pooled.

    :raises ValueError: ``kv_heads`` does not divide the source's KV heads.
    """
    if not isinstance(mha, MultiHeadAttention):
        raise TypeError(f"to_gqa: mha must be a MultiHeadAttention, got {type(mha).__name__}")
    if isinstance(kv_heads, bool) or not isinstance(kv_heads, int):
        raise TypeError(f"to_gqa: kv_heads must be an int, got {type(kv_heads).__name__}")
    if kv_heads < 1 or mha.config.n_kv_heads % kv_heads:
        raise ValueError(f"to_gqa: kv_heads={kv_heads} must divide the source's kv_heads={mha.config.n_kv_heads}")
    config = dataclasses.replace(mha.config, kv_heads=kv_heads)
    out = MultiHeadAttention(config, kernel=mha.kernel.name, kernel_params=dataclasses.asdict(mha.kernel_params))
    out.backend = mha.backend
    first = next(mha.parameters(), None)
    if first is not None:
        out = out.to(device=first.device, dtype=first.dtype)
    out.load_state_dict(pooled_state(mha, kv_heads))
    out.train(mha.training)
    return out
