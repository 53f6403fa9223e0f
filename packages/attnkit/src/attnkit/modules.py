"""Attention modules: the config every module spec is built from, the built-in multi-head
attention module, and the one channel through which modules report auxiliary losses.

A module maps hidden states ``x (B, T, E)`` to ``(B, T, E)``. Module specs
(:class:`~attnkit.AttentionModuleSpec`) build one from a :class:`ModuleConfig` and their own
parameters; an attention *kernel* spec can stand in for a module too, through
:class:`MultiHeadAttention` running that kernel, so a model can choose "any attention kernel or
module spec" per layer with :func:`build_module`.

Auxiliary losses (load balancing and the like): a module sets ``self.aux_loss`` to a scalar
tensor during its forward pass (or leaves it ``None``); :func:`aux_loss` sums them over a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "ModuleConfig",
    "MultiHeadAttention",
    "attention_flops",
    "aux_loss",
    "build_module",
    "from_pretrained_attention",
]


@dataclass(frozen=True)
class ModuleConfig:
    """Shape of an attention module.

    :param dim: model width ``E``.
    :param heads: query heads ``Hq``.
    :param kv_heads: key/value heads ``Hkv`` (default ``heads``); ``heads % kv_heads == 0``.
    :param head_dim: per-head width ``D`` (default ``dim // heads``).
    :param causal: causal self-attention (decoder) or not (encoder).
    :param bias: whether the projections have biases.
    """

    dim: int
    heads: int
    kv_heads: int | None = None
    head_dim: int | None = None
    causal: bool = False
    bias: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModuleConfig.{name} must be a positive int, got {value!r}")
        for name in ("causal", "bias"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(
                    f"ModuleConfig.{name} must be a bool (True or False), got {type(value).__name__} {value!r}"
                )
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        if self.head_dim is None:
            if self.dim % self.heads:
                raise ValueError(
                    f"ModuleConfig: dim={self.dim} is not divisible by heads={self.heads}; pass head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.dim // self.heads)
        kv, hd = self.kv_heads, self.head_dim
        if not isinstance(kv, int) or kv < 1 or self.heads % kv:
            raise ValueError(f"ModuleConfig.kv_heads must divide heads={self.heads}, got {kv!r}")
        if not isinstance(hd, int) or hd < 1:
            raise ValueError(f"ModuleConfig.head_dim must be a positive int, got {hd!r}")

    @property
    def n_kv_heads(self) -> int:
        assert self.kv_heads is not None  # set in __post_init__
        return self.kv_heads

    @property
    def d_head(self) -> int:
        assert self.head_dim is not None  # set in __post_init__
        return self.head_dim


class MultiHeadAttention(nn.Module):
    """Multi-head (and grouped-query) self-attention running any attnkit attention kernel.

    :param config: sizes; ``kv_heads < heads`` gives GQA (k/v never expanded).
    :param kernel: name of an attention kernel spec (``"dense"``, ``"neighborhood"`` ...).
    :param kernel_params: that spec's parameters (``{"kernel_size": 7}`` ...).
    :param backend: force a backend of the kernel; default: the registry chooses.

    ``forward(x (B, T, E), attn_mask=None) -> (B, T, E)``; ``attn_mask`` is a boolean
    "may attend" mask broadcastable to ``(B, Hq, T, T)``.
    """

    def __init__(
        self,
        config: ModuleConfig,
        kernel: str = "dense",
        kernel_params: dict[str, Any] | None = None,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        from attnkit import get_spec

        self.config = config
        self.kernel = get_spec(kernel, "attention")
        self.kernel_params = self.kernel.make_params(**(kernel_params or {}))
        self.backend = backend
        hq, hkv, d = config.heads, config.n_kv_heads, config.d_head
        self.q_proj = nn.Linear(config.dim, hq * d, bias=config.bias)
        self.k_proj = nn.Linear(config.dim, hkv * d, bias=config.bias)
        self.v_proj = nn.Linear(config.dim, hkv * d, bias=config.bias)
        self.o_proj = nn.Linear(hq * d, config.dim, bias=config.bias)
        self.aux_loss: torch.Tensor | None = None

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x (B, T, E)`` to ``q (B, Hq, T, D)``, ``k, v (B, Hkv, T, D)``.

        :raises TypeError: ``x`` is not a tensor, or its dtype is not the weights' dtype
            outside ``torch.autocast`` (cast one of them: ``module.double()`` or ``x.float()``).
        :raises ValueError: ``x`` is not ``(B, T, E)``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor (B, T, E), got {type(x).__name__}")
        weight_dtype = self.q_proj.weight.dtype
        if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x has dtype {x.dtype} but the module's weights are {weight_dtype}; "
                f"cast x (x.to({weight_dtype})) or the module (module.to({x.dtype}))"
            )
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"x must have shape (B, T, E={self.config.dim}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(b, t, c.heads, c.d_head).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self.heads(x)
        extra = {"mask": attn_mask} if attn_mask is not None else {}
        z = self.kernel(
            q, k, v, backend=self.backend, is_causal=self.config.causal, params=self.kernel_params, **extra
        )  # (B, Hq, T, D)
        b, _, t, _ = z.shape
        return self.o_proj(z.transpose(1, 2).reshape(b, t, -1))


def build_module(
    spec: Any, config: ModuleConfig | Mapping[str, Any], params: Mapping[str, Any] | None = None, **kwargs: Any
) -> nn.Module:
    """Build an attention module from a module spec, or from a kernel spec via
    :class:`MultiHeadAttention`.

    :param spec: a spec object or name; a kernel spec's ``params`` are the kernel's.
    :param config: the module's sizes: a :class:`ModuleConfig`, or a mapping of its fields
        (``{"dim": 64, "heads": 4}``).
    :param params: the spec's parameters as a mapping; keyword arguments are merged into it
        (``build_module("mha", cfg, {"kernel": "dense"})`` or ``build_module("mha", cfg,
        kernel="dense")``).
    :raises TypeError: ``config`` or ``params`` of another type, naming what is expected.
    """
    from attnkit import get_spec
    from attnkit.registry import AttentionModuleSpec, AttentionSpec, resolve

    if isinstance(config, Mapping):
        config = ModuleConfig(**config)
    elif not isinstance(config, ModuleConfig):
        raise TypeError(
            f"build_module: config must be a ModuleConfig or a mapping of its fields (dim, heads, ...), "
            f"got {type(config).__name__}"
        )
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(
            f"build_module: params must be a mapping of parameter names to values, got {type(params).__name__}"
        )
    params = {**(params or {}), **kwargs}
    if isinstance(spec, str):
        spec = get_spec(spec)
    if isinstance(spec, AttentionSpec):
        backend = params.pop("backend", None)
        return MultiHeadAttention(config, kernel=spec.name, kernel_params=params, backend=backend)
    if isinstance(spec, AttentionModuleSpec):
        return resolve(spec.factory)(config, spec.make_params(**params))
    raise TypeError(f"build_module needs an attention or module spec, got {type(spec).__name__}")


def from_pretrained_attention(spec: Any, source: MultiHeadAttention, **params: Any) -> nn.Module:
    """Build a module of ``spec`` from a trained :class:`MultiHeadAttention`, copying or
    pooling its weights (the spec's ``from_pretrained`` decides how).

    :raises ValueError: when the spec cannot be built from a pretrained module.
    """
    from attnkit import get_spec
    from attnkit.registry import AttentionModuleSpec, resolve

    if isinstance(spec, str):
        spec = get_spec(spec)
    if not isinstance(spec, AttentionModuleSpec) or spec.from_pretrained is None:
        raise ValueError(f"spec {getattr(spec, 'name', spec)!r} cannot be built from a pretrained attention module")
    if not isinstance(source, MultiHeadAttention):
        raise TypeError(f"source must be an attnkit MultiHeadAttention, got {type(source).__name__}")
    return resolve(spec.from_pretrained)(source, spec.make_params(**params))


def aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the ``aux_loss`` every submodule set in its last forward pass (0 if none)."""
    total: torch.Tensor | None = None
    for m in model.modules():
        loss = getattr(m, "aux_loss", None)
        if isinstance(loss, torch.Tensor):
            total = loss if total is None else total + loss
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return total


def attention_flops(config: ModuleConfig, seq_len: int, active_heads: float | None = None) -> float:
    """Multiply-add FLOPs of the attention core (logits and ``P @ V``) for one sequence:
    ``4 * H * T^2 * D`` (``active_heads`` replaces ``H`` for head-sparse modules)."""
    h = config.heads if active_heads is None else active_heads
    return 4.0 * h * seq_len * seq_len * config.d_head * (0.5 if config.causal else 1.0)
