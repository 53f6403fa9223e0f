"""Tiny native models built from attnkit attention modules: a decoder-only GPT and a ViT.

Both are small enough to train on a laptop CPU in seconds. Each layer's attention is built
with :func:`attnkit.modules.build_module`, so any attention *kernel* spec (run by
:class:`~attnkit.modules.MultiHeadAttention`) or attention *module* spec can be chosen per
layer. Up-training code swaps layers with :meth:`TinyModel.replace_attention`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnkit.modules import ModuleConfig, build_module

__all__ = ["Block", "TinyGPT", "TinyModel", "TinyViT", "layer_specs"]


def layer_specs(attention: Any, attention_params: Any, layers: int) -> list[tuple[Any, dict[str, Any]]]:
    """Expand ``attention`` / ``attention_params`` to one ``(spec, params)`` pair per layer.

    :param attention: a spec (name or object) for every layer, or a list with one per layer.
    :param attention_params: ``None``, one dict for every layer, or a list with one per layer.
    :raises ValueError: when a list's length is not ``layers``.
    :raises TypeError: when an entry of ``attention_params`` is not a dict or ``None``.
    """
    if isinstance(attention, (list, tuple)):
        if len(attention) != layers:
            raise ValueError(f"attention has {len(attention)} entries but the model has layers={layers}")
        specs = list(attention)
    else:
        specs = [attention] * layers
    if isinstance(attention_params, (list, tuple)):
        if len(attention_params) != layers:
            raise ValueError(f"attention_params has {len(attention_params)} entries but the model has layers={layers}")
        params = list(attention_params)
    else:
        params = [attention_params] * layers
    for i, p in enumerate(params):
        if p is not None and not isinstance(p, dict):
            raise TypeError(f"attention_params[{i}] must be a dict or None, got {type(p).__name__}")
    return [(s, dict(p or {})) for s, p in zip(specs, params)]


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``.

    ``forward(x (B, T, E)) -> (B, T, E)``.
    """

    def __init__(self, config: ModuleConfig, spec: Any, params: dict[str, Any], mlp_ratio: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim)
        self.attn = build_module(spec, config, **params)
        self.ln2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, mlp_ratio * config.dim),
            nn.GELU(),
            nn.Linear(mlp_ratio * config.dim, config.dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyModel(nn.Module):
    """What the tiny models share: a stack of :class:`Block` in ``self.blocks``."""

    blocks: nn.ModuleList

    def _build_blocks(self, config: ModuleConfig, attention: Any, attention_params: Any, layers: int) -> None:
        _positive("layers", layers)
        self.blocks = nn.ModuleList(Block(config, s, p) for s, p in layer_specs(attention, attention_params, layers))

    def attention_modules(self) -> list[nn.Module]:
        """The attention module of each layer, first layer first."""
        return [block.attn for block in self.blocks if isinstance(block, Block)]

    def replace_attention(self, layer: int, module: nn.Module) -> None:
        """Put ``module`` (``(B, T, E) -> (B, T, E)``) in place of layer ``layer``'s attention."""
        if not -len(self.blocks) <= layer < len(self.blocks):
            raise ValueError(f"layer must be in [0, {len(self.blocks)}), got {layer}")
        block = self.blocks[layer]
        assert isinstance(block, Block)  # _build_blocks only puts Blocks there
        block.attn = module


class TinyGPT(TinyModel):
    """Decoder-only language model: token + learned position embeddings, pre-norm causal
    blocks, final LayerNorm, LM head.

    :param vocab_size: number of token ids ``V``.
    :param dim: model width ``E``.
    :param layers: number of blocks.
    :param heads: query heads per layer.
    :param kv_heads: key/value heads (default ``heads``; fewer gives GQA).
    :param max_len: longest sequence (size of the position table).
    :param attention: spec name (or object) for every layer, or a list with one per layer.
    :param attention_params: that spec's parameters: one dict, or a list with one per layer.
    :param tie_weights: share the LM head's weight with the token embedding.

    ``forward(tokens (B, T) int64) -> logits (B, T, V)``.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        kv_heads: int | None = None,
        max_len: int = 128,
        attention: Any = "dense",
        attention_params: Any = None,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        _positive("vocab_size", vocab_size)
        _positive("max_len", max_len)
        self.vocab_size, self.max_len = vocab_size, max_len
        config = ModuleConfig(dim=dim, heads=heads, kv_heads=kv_heads, causal=True)
        self.config = config
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Parameter(torch.zeros(max_len, dim))
        self._build_blocks(config, attention, attention_params, layers)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        # Small embeddings keep early logits near uniform, which trains faster at this scale.
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        if tie_weights:
            self.head.weight = self.tok_emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be an int tensor of shape (B, T), got {tokens.dtype} {tuple(tokens.shape)}")
        t = tokens.shape[1]
        if not 1 <= t <= self.max_len:
            raise ValueError(f"tokens has T={t} positions; this model takes 1 to max_len={self.max_len}")
        x = self.tok_emb(tokens) + self.pos_emb[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class TinyViT(TinyModel):
    """Vision transformer: non-overlapping patch embedding, CLS token, learned position
    embeddings, pre-norm encoder blocks (non-causal), LayerNorm and a linear head on CLS.

    :param image_size: side of the square input ``H = W``.
    :param patch_size: side of a patch; must divide ``image_size``.
    :param channels: input channels ``C``.
    :param num_classes: output classes.
    :param dim: model width ``E``.
    :param layers: number of blocks.
    :param heads: query heads per layer.
    :param kv_heads: key/value heads (default ``heads``; fewer gives GQA).
    :param attention: spec name (or object) for every layer, or a list with one per layer.
    :param attention_params: that spec's parameters: one dict, or a list with one per layer.

    ``forward(images (B, C, H, W)) -> logits (B, num_classes)``; the encoder sees
    ``T = 1 + (H / patch_size)^2`` tokens, CLS first.
    """

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 2,
        channels: int = 1,
        num_classes: int = 10,
        dim: int = 64,
        layers: int = 4,
        heads: int = 8,
        kv_heads: int | None = None,
        attention: Any = "dense",
        attention_params: Any = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("image_size", image_size),
            ("patch_size", patch_size),
            ("channels", channels),
            ("num_classes", num_classes),
        ):
            _positive(name, value)
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        self.image_size, self.channels = image_size, channels
        self.num_patches = (image_size // patch_size) ** 2
        config = ModuleConfig(dim=dim, heads=heads, kv_heads=kv_heads, causal=False)
        self.config = config
        # A strided convolution is exactly "flatten each patch, then a shared linear map".
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_emb = nn.Parameter(torch.zeros(1 + self.num_patches, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)
        self._build_blocks(config, attention, attention_params, layers)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expect = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expect:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expect))}), got {tuple(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, E), patches row-major
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_emb
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x[:, 0]))
