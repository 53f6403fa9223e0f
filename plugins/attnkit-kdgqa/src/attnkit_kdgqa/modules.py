"""KDGQA, DGQA and PGQA attention modules (arXiv:2408.08454), their factories,
MHA-to-GQA conversion and reductions to plain grouped-query attention.

All three hold ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` named and shaped as in
:class:`attnkit.modules.MultiHeadAttention` with ``kv_heads < heads``, so a state dict moves
between them and plain GQA. The forward pass computes per-sample counts of query heads for
each KV head, turns them into one KV-head index per query head, gathers K/V to ``Hq`` heads
and runs attnkit's ``dense`` kernel. Gathering instead of ``torch.split`` keeps a single code
path that is exact, differentiable in K/V, batched over per-sample allocations, and
traceable for ONNX export.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from attnkit.modules import ModuleConfig, MultiHeadAttention
from attnkit_kdgqa.allocation import head_index, kdgqa_allocation, key_norms, ratio_allocation
from attnkit_kdgqa.params import DGQAParams, KDGQAParams, PGQAParams, check_against_config

__all__ = [
    "DGQAttention",
    "KDGQAttention",
    "PGQAttention",
    "build_dgqa",
    "build_kdgqa",
    "build_pgqa",
    "from_pretrained_dgqa",
    "from_pretrained_kdgqa",
    "from_pretrained_pgqa",
    "pgqa_noise",
]


class _GroupedAttention(nn.Module):
    """Shared body: projections, gather of K/V by allocation, dense attention, output."""

    spec_name = "grouped"

    def __init__(self, config: ModuleConfig, params: Any) -> None:
        super().__init__()
        from attnkit import get_spec

        check_against_config(self.spec_name, params, config.heads, config.n_kv_heads)
        self.config = config
        self.params = params
        self.kernel = get_spec("dense", "attention")
        hq, hkv, d = config.heads, config.n_kv_heads, config.d_head
        self.q_proj = nn.Linear(config.dim, hq * d, bias=config.bias)
        self.k_proj = nn.Linear(config.dim, hkv * d, bias=config.bias)
        self.v_proj = nn.Linear(config.dim, hkv * d, bias=config.bias)
        self.o_proj = nn.Linear(hq * d, config.dim, bias=config.bias)
        self.aux_loss: torch.Tensor | None = None
        #: ``(B or 1, G)`` counts used by the last forward pass, for inspection.
        self.last_counts: torch.Tensor | None = None

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``x (B, T, E)`` to ``q (B, Hq, T, D)``, ``k, v (B, G, T, D)``."""
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"x must have shape (B, T, E={self.config.dim}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(b, t, c.heads, c.d_head).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        return q, k, v

    def allocation(self, k: torch.Tensor) -> torch.Tensor:
        """Counts of query heads per KV head: ``(B, G)`` or ``(1, G)`` int64 summing to ``Hq``."""
        raise NotImplementedError

    def perturb(self, z: torch.Tensor) -> torch.Tensor:
        """Hook on the attention output ``z (B, Hq, T, D)`` before ``o_proj`` (PGQA noise)."""
        return z

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, E) -> (B, T, E)``; ``attn_mask`` as for ``MultiHeadAttention``.

        The allocation looks at every position's key, masked or not.
        """
        q, k, v = self.heads(x)
        counts = self.allocation(k)
        if not torch.compiler.is_compiling():  # a plain attribute set while exporting is a graph side effect
            self.last_counts = counts.detach()
        z = self.attend(q, k, v, counts, attn_mask)
        z = self.perturb(z)
        b, _, t, _ = z.shape
        return self.o_proj(z.transpose(1, 2).reshape(b, t, -1))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        counts: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention of ``q (B, Hq, T, D)`` over ``k, v (B, G, T, D)`` grouped by ``counts``."""
        b, hq, t, d = q.shape
        idx = head_index(counts, hq)  # (B or 1, Hq)
        idx = idx.view(idx.shape[0], hq, 1, 1).expand(b, hq, t, d)
        k_exp = torch.gather(k, 1, idx)
        v_exp = torch.gather(v, 1, idx)
        extra = {"mask": attn_mask} if attn_mask is not None else {}
        return self.kernel(q, k_exp, v_exp, is_causal=self.config.causal, **extra)


class KDGQAttention(_GroupedAttention):
    """Key-Driven GQA: each forward pass allocates query heads to KV heads in proportion to
    the min-max normalised Frobenius norms of the keys (per sample by default).

    ``forward(x (B, T, E)) -> (B, T, E)``; same in train and eval.
    """

    spec_name = "kdgqa"
    params: KDGQAParams

    def allocation(self, k: torch.Tensor) -> torch.Tensor:
        norms = key_norms(k)  # (B, G)
        if self.params.norm_scope == "batch":
            norms = norms.sum(0, keepdim=True)
        return kdgqa_allocation(norms, self.config.heads, self.params.min_queries)


class DGQAttention(_GroupedAttention):
    """Dynamic Key-Driven GQA: the allocation follows the evolution of the key norms during
    training and is frozen in eval.

    Buffers (all in the state dict): ``cache (G,)`` the decayed key-norm cache, ``counts (G,)``
    the current allocation (uniform at construction), ``step ()`` training forwards seen.
    In training, on every ``window``-th forward (``step % window == 0``, the first included)
    with ``m`` the key norms summed over the batch:
    ``counts = round_alloc(|cache - m|)`` (diff) or ``round_alloc(beta*m + (1-beta)*cache)``
    (ema), then ``cache = (cache + m) / window``. Eval never changes the buffers.
    """

    spec_name = "dgqa"
    params: DGQAParams
    cache: torch.Tensor
    counts: torch.Tensor
    step: torch.Tensor

    def __init__(self, config: ModuleConfig, params: DGQAParams) -> None:
        super().__init__(config, params)
        g = config.n_kv_heads
        self.register_buffer("cache", torch.zeros(g, dtype=torch.float64))
        self.register_buffer("counts", torch.full((g,), config.heads // g, dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def _apply(self, fn: Any, recurse: bool = True) -> DGQAttention:
        # .float()/.double() would round the cache; its rounding decides future allocations,
        # so it stays float64 whatever precision the weights take.
        cache = self.cache
        out = super()._apply(fn, recurse)
        self.cache = cache.to(device=self.counts.device, dtype=torch.float64)
        return out

    @torch.no_grad()
    def update(self, k: torch.Tensor) -> None:
        """One training-step update of the buffers from ``k (B, G, T, D)``."""
        if int(self.step) % self.params.window == 0:
            m = key_norms(k).sum(0)  # (G,)
            if self.params.form == "diff":
                weights = (self.cache - m).abs()
            else:
                weights = self.params.beta * m + (1.0 - self.params.beta) * self.cache
            self.counts.copy_(ratio_allocation(weights, self.config.heads, self.params.min_queries))
            self.cache.copy_((self.cache + m) / self.params.window)
        self.step.add_(1)

    def allocation(self, k: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(k)
        return self.counts.unsqueeze(0)


def pgqa_noise(z: torch.Tensor, groups: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The official PGQA perturbation of each group's attention output, to subtract.

    For each group, ``z`` of its ``g`` heads viewed as rows ``(B, g, T*D)``: a ``U[0, 1)``
    matrix ``(g, T*D)`` shared over the batch, entries ``[i, i]`` zeroed, each row
    standardised (unbiased std; a zero std counts as 1) and rescaled to the target row's mean
    and unbiased std, which keep their gradient.

    :param z: ``(B, Hq, T, D)`` attention output with contiguous groups of ``Hq // groups``.
    :returns: ``(B, Hq, T, D)`` noise.
    """
    b, hq, t, d = z.shape
    g = hq // groups
    rows = z.reshape(b, groups, g, t * d)
    noise = torch.rand(groups, g, t * d, generator=generator, dtype=z.dtype, device=z.device)
    n = min(g, t * d)
    diag = torch.arange(n, device=z.device)
    noise[:, diag, diag] = 0.0
    std = noise.std(-1, keepdim=True)
    noise = (noise - noise.mean(-1, keepdim=True)) / torch.where(std == 0, torch.ones_like(std), std)
    noise = noise * rows.std(-1, keepdim=True) + rows.mean(-1, keepdim=True)
    return noise.reshape(b, hq, t, d)


class PGQAttention(_GroupedAttention):
    """Perturbed GQA: static contiguous groups; in training, subtracts :func:`pgqa_noise` from
    each group's attention output. Eval is plain GQA (the official code also perturbs at
    eval, which makes inference random)."""

    spec_name = "pgqa"
    params: PGQAParams

    def allocation(self, k: torch.Tensor) -> torch.Tensor:
        g = self.config.n_kv_heads
        return torch.full((1, g), self.config.heads // g, dtype=torch.int64, device=k.device)

    def perturb(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return z
        return z - pgqa_noise(z, self.config.n_kv_heads)


def build_kdgqa(config: ModuleConfig, params: KDGQAParams) -> KDGQAttention:
    """The ``kdgqa`` factory."""
    return KDGQAttention(config, params)


def build_dgqa(config: ModuleConfig, params: DGQAParams) -> DGQAttention:
    """The ``dgqa`` factory."""
    return DGQAttention(config, params)


def build_pgqa(config: ModuleConfig, params: PGQAParams) -> PGQAttention:
    """The ``pgqa`` factory."""
    return PGQAttention(config, params)


def _from_pretrained(cls: type[_GroupedAttention], source: MultiHeadAttention, params: Any) -> Any:
    from attnkit_kdgqa.uptrain import pooled_state, target_kv_heads

    if not isinstance(source, MultiHeadAttention):
        raise TypeError(
            f"{cls.spec_name}.from_pretrained: source must be a MultiHeadAttention, got {type(source).__name__}"
        )
    if source.kernel.name != "dense":
        raise ValueError(
            f"{cls.spec_name}.from_pretrained: source runs kernel {source.kernel.name!r}; only 'dense' sources "
            "compute the attention these modules compute"
        )
    kv = target_kv_heads(cls.spec_name, source.config, params.kv_heads)
    config = dataclasses.replace(source.config, kv_heads=kv)
    module = cls(config, params)
    first = next(source.parameters(), None)
    if first is not None:
        module = module.to(device=first.device, dtype=first.dtype)
    module.load_state_dict(pooled_state(source, kv), strict=False)
    module.train(source.training)
    return module


def from_pretrained_kdgqa(source: MultiHeadAttention, params: KDGQAParams) -> KDGQAttention:
    """KDGQA from a trained MHA/GQA module: K/V heads mean-pooled into contiguous groups."""
    return _from_pretrained(KDGQAttention, source, params)


def from_pretrained_dgqa(source: MultiHeadAttention, params: DGQAParams) -> DGQAttention:
    """DGQA from a trained MHA/GQA module: K/V heads mean-pooled, fresh (uniform) state."""
    return _from_pretrained(DGQAttention, source, params)


def from_pretrained_pgqa(source: MultiHeadAttention, params: PGQAParams) -> PGQAttention:
    """PGQA from a trained MHA/GQA module: K/V heads mean-pooled into contiguous groups."""
    return _from_pretrained(PGQAttention, source, params)


def _reference_for(module: _GroupedAttention) -> MultiHeadAttention:
    reference = MultiHeadAttention(module.config, kernel="dense")
    weights = {k: v for k, v in module.state_dict().items() if k.split(".")[0].endswith("_proj")}
    reference.load_state_dict(weights)
    return reference


def reduction_kdgqa(config: ModuleConfig) -> tuple[KDGQAttention, MultiHeadAttention]:
    """KDGQA with ``min_queries = heads // kv_heads`` has only the uniform allocation: GQA."""
    module = KDGQAttention(config, KDGQAParams(min_queries=config.heads // config.n_kv_heads))
    return module, _reference_for(module)


def reduction_dgqa(config: ModuleConfig) -> tuple[DGQAttention, MultiHeadAttention]:
    """DGQA before any training step holds the uniform allocation: GQA."""
    module = DGQAttention(config, DGQAParams())
    return module, _reference_for(module)


def reduction_pgqa(config: ModuleConfig) -> tuple[PGQAttention, MultiHeadAttention]:
    """PGQA in eval (no noise) is GQA."""
    module = PGQAttention(config, PGQAParams())
    return module, _reference_for(module)
