"""Fixtures: one intra-op thread per test, a 2-layer Llama with a planted sender -> receiver
circuit, and a brute-force path-patching reference on plain forward hooks (full-sequence
forwards, no KV cache, no attnkit) to hold the attnkit implementation against."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from attnkit.testing import torch_threads


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


# token ids of the planted model
BOS, TOK_A, TOK_B, END = 0, 1, 2, 3
SENDER, RECEIVER = (0, 1), (1, 2)
#: layer-1 heads of the other KV group: they read filler features only
OTHER_RECEIVERS = [(1, 0), (1, 1)]
# residual dimensions: 0 constant, 1 identity (A +1 / B -1), 2 END marker, 3 the sender's
# feature, 4 the receiver's output (read by the unembedding), 5.. fillers
D_ONE, D_ID, D_END, D_F1, D_OUT = 0, 1, 2, 3, 4


@dataclass
class Planted:
    model: Any
    clean: torch.Tensor
    corrupted: torch.Tensor
    answer: torch.Tensor
    wrong: torch.Tensor


def planted_model() -> Planted:
    """A float64 2-layer Llama (hidden 16, 4 query / 2 KV heads, head dim 4) whose weights are
    set by hand: head (0, 1) averages the identity feature over the prompt and writes it to
    dim 3; only head (1, 2) reads dim 3 (through its value, attending to [END] itself through
    the END marker, which RoPE cannot disturb at distance 0) and writes dim 4, which the
    unembedding turns into ``logit[A] - logit[B]``. Heads (1, 0) and (1, 1) read fillers and
    write dim 4 too, so they could move the logits, but nothing they read depends on the
    sender. MLPs write nothing; the unembedding ignores dim 3 (no direct path)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=8,
        hidden_size=16,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        tie_word_embeddings=False,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
        emb = model.model.embed_tokens.weight
        emb[:, D_ONE] = 1.0
        emb[TOK_A, D_ID], emb[TOK_B, D_ID] = 1.0, -1.0
        emb[END, D_END] = 1.0
        emb[4:, 5:] = torch.randn(4, 11, generator=g, dtype=torch.float64)
        emb[BOS, 5:] = torch.randn(11, generator=g, dtype=torch.float64)
        a0, a1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
        # layer 0: q = 0 -> uniform causal attention; KV head 0 value dim 0 reads the identity
        a0.v_proj.weight[0, D_ID] = 1.0
        a0.o_proj.weight[D_F1, 1 * 4 + 0] = 8.0  # only head 1 (the sender) writes
        # layer 1, head 2 (KV head 1): q and k read the END marker, v reads dim 3
        a1.q_proj.weight[2 * 4 + 0, D_END] = 12.0
        a1.k_proj.weight[1 * 4 + 0, D_END] = 12.0
        a1.v_proj.weight[1 * 4 + 0, D_F1] = 1.0
        a1.o_proj.weight[D_OUT, 2 * 4 + 0] = 3.0
        # layer 1, heads 0 and 1 (KV head 0): random q / k / v on the fillers, write dim 4
        a1.q_proj.weight[0:8, 5:] = torch.randn(8, 11, generator=g, dtype=torch.float64)
        a1.k_proj.weight[0:4, 5:] = torch.randn(4, 11, generator=g, dtype=torch.float64)
        a1.v_proj.weight[0:4, 5:] = torch.randn(4, 11, generator=g, dtype=torch.float64)
        a1.o_proj.weight[D_OUT, 0:8] = torch.randn(8, generator=g, dtype=torch.float64)
        model.lm_head.weight[TOK_A, D_OUT], model.lm_head.weight[TOK_B, D_OUT] = 1.0, -1.0
    g2 = torch.Generator().manual_seed(2)
    fill = torch.randint(4, 8, (3, 6), generator=g2)
    clean = torch.cat([torch.full((3, 1), BOS), torch.full((3, 1), TOK_A), fill, torch.full((3, 1), END)], 1)
    corrupted = clean.clone()
    corrupted[:, 1] = TOK_B
    return Planted(model, clean, corrupted, torch.full((3,), TOK_A), torch.full((3,), TOK_B))


@pytest.fixture(scope="session")
def planted() -> Planted:
    return planted_model()


def _attn(model: Any, layer: int) -> Any:
    return model.model.layers[layer].self_attn


def reference_z_end(model: Any, ids: torch.Tensor) -> list[torch.Tensor]:
    """Per layer ``(N, Hq, D)`` input of ``o_proj`` at the last position, full forward."""
    cfg = model.config
    hq, d = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
    d = getattr(cfg, "head_dim", d) or d
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for layer in range(cfg.num_hidden_layers):

        def pre(module, args, layer=layer):
            seen[layer] = args[0][:, -1].reshape(ids.shape[0], hq, d).clone()

        handles.append(_attn(model, layer).o_proj.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return [seen[layer] for layer in range(cfg.num_hidden_layers)]


def reference_path_patch(
    model: Any,
    clean: torch.Tensor,
    corrupted: torch.Tensor,
    senders: list[tuple[int, int]],
    receivers: list[tuple[int, int]] | None,
    inputs: str = "q",
    freeze: bool = True,
) -> torch.Tensor:
    """Last-position logits ``(N, V)`` of three-pass path patching with plain hooks on
    ``o_proj`` inputs and ``q_proj`` / ``k_proj`` / ``v_proj`` outputs (pre-RoPE: RoPE is the
    same map in both passes). ``receivers=None``: the final residual (two passes).
    ``freeze=False`` with ``receivers=None`` is activation patching."""
    cfg = model.config
    hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = cfg.head_dim
    z_clean, z_corrupt = reference_z_end(model, clean), reference_z_end(model, corrupted)
    recorded: dict[tuple[int, str], torch.Tensor] = {}

    def z_hook(layer):
        def pre(module, args):
            x = args[0].clone()
            z = x[:, -1].reshape(x.shape[0], hq, d)
            if freeze:
                z[:] = z_clean[layer]
            for lay, h in senders:
                if lay == layer:
                    z[:, h] = z_corrupt[layer][:, h]
            x[:, -1] = z.reshape(x.shape[0], hq * d)
            return (x,)

        return pre

    def record(layer, c):
        def hook(module, args, out):
            recorded[(layer, c)] = out[:, -1].clone()

        return hook

    def replace(layer, c, heads):
        def hook(module, args, out):
            out = out.clone()
            for h in heads:
                out[:, -1, h * d : (h + 1) * d] = recorded[(layer, c)][:, h * d : (h + 1) * d]
            return out

        return hook

    handles = [
        _attn(model, layer).o_proj.register_forward_pre_hook(z_hook(layer)) for layer in range(cfg.num_hidden_layers)
    ]
    if receivers:
        for layer in {lay for lay, _ in receivers}:
            for c in inputs:
                handles.append(getattr(_attn(model, layer), f"{c}_proj").register_forward_hook(record(layer, c)))
    try:
        with torch.no_grad():
            logits = model(clean).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    if not receivers:
        return logits
    handles = []
    for layer in {lay for lay, _ in receivers}:
        for c in inputs:
            heads = sorted({h if c == "q" else h // (hq // hkv) for lay, h in receivers if lay == layer})
            handles.append(getattr(_attn(model, layer), f"{c}_proj").register_forward_hook(replace(layer, c, heads)))
    try:
        with torch.no_grad():
            return model(clean).logits[:, -1]
    finally:
        for h in handles:
            h.remove()


@pytest.fixture(scope="session")
def ref() -> Any:
    """The reference functions and the planted model's constants (tests cannot import this
    conftest under ``--import-mode=importlib``)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        path_patch=reference_path_patch,
        z_end=reference_z_end,
        SENDER=SENDER,
        RECEIVER=RECEIVER,
        OTHER_RECEIVERS=OTHER_RECEIVERS,
    )
