"""The MoH attention module (Mixture-of-Head attention, arXiv:2410.11842).

``MoHAttention(config, params)`` maps ``x (B, T, E)`` to ``(B, T, E)``:

    out = o_proj( concat_i g_i(x_t) · head_i(x)_t )

with heads ``0 .. h_s-1`` shared (every token) and heads ``h_s .. H-1`` routed (``top_k`` per
token). Two ways of computing the heads, same result:

* ``gather`` (the CPU fast path): shared heads over every token; for each routed head, only
  the queries of the tokens that picked it are projected (``x_t @ W_q,h``), gathered into a
  padded ``(B, E, M, D)`` block (``M`` = most tokens any head got in a batch row), attend to
  that head's full K/V in one SDPA call, and are scattered back. Query projection and
  attention FLOPs so scale with the active heads; K/V and ``o_proj`` stay dense.
* ``masked``: every head over every token, then multiply by the gates (the paper code's
  formulation, no saving); traceable, so it is what ONNX export and ``torch.compile`` see.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.modules import ModuleConfig, MultiHeadAttention
from attnkit_moh.params import HeadLayout, MoHParams, resolve_layout
from attnkit_moh.routing import Routing, learned_routing, load_balance_loss, query_norm_routing

__all__ = ["MoHAttention", "build", "contract_params", "from_pretrained", "reduction"]


def _tracing() -> bool:
    """Export and compile cannot follow data-dependent shapes (the gather path's ``M``)."""
    try:
        if torch.compiler.is_exporting() or torch.compiler.is_compiling():
            return True
    except AttributeError:  # torch < 2.6 has no is_exporting
        pass
    return bool(torch.onnx.is_in_onnx_export())


class MoHAttention(nn.Module):
    """Mixture-of-Head attention with shared and top-k routed heads (GQA allowed).

    :param config: sizes; ``kv_heads < heads`` gives GQA.
    :param params: a :class:`~attnkit_moh.params.MoHParams` (or ``None`` for defaults).

    Attributes after a forward pass: ``aux_loss`` (``β · l_aux`` in training with the learned
    router, else ``None``), ``last_head_usage`` (``(E,)`` share of tokens that picked each
    routed head, detached) and ``last_routing`` (the :class:`~attnkit_moh.routing.Routing`,
    detached, for inspection).
    """

    kv_index: torch.Tensor  # (H,) kv head of each query head; a buffer

    def __init__(self, config: ModuleConfig, params: MoHParams | None = None) -> None:
        super().__init__()
        from attnkit import get_spec

        params = params if params is not None else MoHParams()
        self.config = config
        self.params = params
        self.layout: HeadLayout = resolve_layout(params, config.heads)
        self.kernel = get_spec(params.kernel, "attention")
        self.kernel_params = self.kernel.make_params(**dict(params.kernel_params))
        hq, hkv, d, c = config.heads, config.n_kv_heads, config.d_head, config.dim
        self.q_proj = nn.Linear(c, hq * d, bias=config.bias)
        self.k_proj = nn.Linear(c, hkv * d, bias=config.bias)
        self.v_proj = nn.Linear(c, hkv * d, bias=config.bias)
        self.o_proj = nn.Linear(hq * d, c, bias=config.bias)
        lay = self.layout
        learned = params.router == "learned"
        # Names follow the paper code: wg = W_r, wg_1 = W_s, wg_0 = W_h (two-stage balance).
        # W_s only for h_s > 1 (one shared head has the constant gate 1); W_h only when both
        # groups exist. No biases, as in the paper code.
        self.wg = nn.Linear(c, lay.routed, bias=False) if learned and lay.top_k > 0 else None
        self.wg_1 = nn.Linear(c, lay.shared, bias=False) if learned and lay.shared > 1 else None
        self.wg_0 = nn.Linear(c, 2, bias=False) if learned and lay.shared > 0 and lay.top_k > 0 else None
        group = hq // hkv
        self.register_buffer("kv_index", torch.arange(hq) // group, persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.last_head_usage: torch.Tensor | None = None
        self.last_routing: Routing | None = None

    def extra_repr(self) -> str:
        lay = self.layout
        return (
            f"heads={lay.heads}, shared={lay.shared}, routed={lay.routed}, top_k={lay.top_k}, "
            f"router={self.params.router!r}, path={self.params.path!r}"
        )

    # -- routing -----------------------------------------------------------------------------

    def _weight(self, layer: nn.Linear | None) -> torch.Tensor | None:
        return None if layer is None else layer.weight

    def route(self, x2: torch.Tensor, q: torch.Tensor | None = None) -> Routing:
        """Gates for tokens ``x2 (N, C)``; the query-norm router needs ``q (N, H, D)``."""
        lay = self.layout
        if self.params.router == "query_norm":
            assert q is not None
            return query_norm_routing(q[:, lay.shared :], lay.shared, lay.top_k)
        return learned_routing(
            x2, self._weight(self.wg), self._weight(self.wg_1), self._weight(self.wg_0), lay.shared, lay.top_k
        )

    def choose_path(self, seq_len: int | None = None) -> str:
        """``"gather"`` or ``"masked"`` for a call on ``seq_len`` tokens."""
        path = self.params.path
        if path == "auto":
            long_enough = seq_len is None or seq_len >= self.params.gather_min_tokens
            dense = self.params.kernel == "dense"
            return "gather" if dense and long_enough and self.layout.top_k > 0 and not _tracing() else "masked"
        return path

    # -- forward -----------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x (B, T, E) -> (B, T, E)``."""
        c, lay = self.config, self.layout
        if attn_mask is not None:
            raise ValueError("moh: attn_mask is not supported (causal masking comes from ModuleConfig.causal)")
        if x.dim() != 3 or x.shape[-1] != c.dim:
            raise ValueError(f"x must have shape (B, T, E={c.dim}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        x2 = x.reshape(b * t, c.dim)
        path = self.choose_path(t)
        q_all = q_shared = None
        if path == "masked" or self.params.router == "query_norm":
            q_all = self.q_proj(x).view(b, t, c.heads, c.d_head)
            k = self.k_proj(x).view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
            v = self.v_proj(x).view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        else:
            k, v, q_shared = self._kv_and_shared_q(x2, b, t)
        routing = self.route(x2, None if q_all is None else q_all.reshape(b * t, c.heads, c.d_head))
        self._record(routing)
        gates = routing.gates.view(b, t, c.heads)
        if path == "masked":
            assert q_all is not None
            z = self._run_kernel(q_all.transpose(1, 2), k, v)  # (B, H, T, D)
            z = z.transpose(1, 2) * gates.unsqueeze(-1)
        else:
            out = self._gathered_heads(x, q_all, q_shared, k, v, gates, routing.selected.view(b, t, lay.routed))
            return out.view(b, t, c.dim)
        return self.o_proj(z.reshape(b, t, c.heads * c.d_head))

    def _kv_and_shared_q(
        self, x2: torch.Tensor, b: int, t: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """K, V ``(B, Hkv, T, D)`` and the shared heads' queries ``(B, h_s, T, D)`` from one
        GEMM: one pass over ``x`` instead of three, which measurably helps on CPU."""
        c, hs = self.config, self.layout.shared
        kvd, qd = c.n_kv_heads * c.d_head, hs * c.d_head
        weights = [self.k_proj.weight, self.v_proj.weight, self.q_proj.weight[:qd]]
        biases = [self.k_proj.bias, self.v_proj.bias, None if self.q_proj.bias is None else self.q_proj.bias[:qd]]
        bias = None if any(bb is None for bb in biases) else torch.cat(biases)
        kvq = F.linear(x2, torch.cat(weights), bias)
        k = kvq[:, :kvd].view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        v = kvq[:, kvd : 2 * kvd].view(b, t, c.n_kv_heads, c.d_head).transpose(1, 2)
        q_s = kvq[:, 2 * kvd :].view(b, t, hs, c.d_head).transpose(1, 2) if hs > 0 else None
        return k, v, q_s

    def _record(self, routing: Routing) -> None:
        lay = self.layout
        if routing.probs is not None and self.training and self.params.router == "learned":
            self.aux_loss = self.params.aux_loss_weight * load_balance_loss(routing.probs, routing.selected)
        else:
            self.aux_loss = None
        if lay.top_k > 0 and not _tracing():
            self.last_head_usage = routing.selected.float().mean(0).detach()
            self.last_routing = Routing(
                routing.gates.detach(), routing.selected, None if routing.probs is None else routing.probs.detach()
            )

    def _run_kernel(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.kernel(q, k, v, is_causal=self.config.causal, params=self.kernel_params)

    def _kv_for(self, heads: slice, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of query heads ``heads``: a slice when they cover whole kv groups (GQA kept),
        else one kv head per query head."""
        c = self.config
        group = c.heads // c.n_kv_heads
        start, stop = heads.start, heads.stop
        if start % group == 0 and stop % group == 0:
            return k[:, start // group : stop // group], v[:, start // group : stop // group]
        idx = self.kv_index[start:stop]
        return k.index_select(1, idx), v.index_select(1, idx)

    def _gathered_heads(
        self,
        x: torch.Tensor,
        q_all: torch.Tensor | None,
        q_shared: torch.Tensor | None,
        k: torch.Tensor,
        v: torch.Tensor,
        gates: torch.Tensor,
        selected: torch.Tensor,
    ) -> torch.Tensor:
        """Heads computed only where used, through ``o_proj``; returns ``(B * T, E)``.

        ``o_proj`` is split by heads too: the shared heads' slice is one dense GEMM, each routed
        head's slice multiplies only its picked rows, and the results are added per token.
        """
        c, lay = self.config, self.layout
        b, t, _ = x.shape
        d, hs, e = c.d_head, lay.shared, lay.routed
        w_o, b_o = self.o_proj.weight, self.o_proj.bias
        if hs > 0:
            q_s = q_all[:, :, :hs].transpose(1, 2) if q_all is not None else q_shared
            assert q_s is not None
            k_s, v_s = self._kv_for(slice(0, hs), k, v)
            z_s = self._run_kernel(q_s, k_s, v_s).transpose(1, 2) * gates[..., :hs, None]  # (B, T, hs, D)
            out = F.linear(z_s.reshape(b * t, hs * d), w_o[:, : hs * d], b_o)
        elif b_o is not None:
            out = b_o.expand(b * t, c.dim).clone()
        else:
            out = x.new_zeros(b * t, c.dim)
        # Per (routed head, batch row): the tokens that picked it first, in token order, cut at
        # M = the largest such count. The slots past a head's count hold tokens that did not
        # pick it, whose gate is exactly 0: they are computed and then add nothing.
        counts = selected.sum(1)  # (B, E)
        m = int(counts.max())
        order = torch.sort(selected.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :m]
        order = order.permute(2, 0, 1)  # (E, B, M) token index
        rows = torch.arange(b, device=x.device).view(1, b, 1)
        flat = (rows * t + order).reshape(-1)  # (E * B * M,) row of x (B * T, C)
        if q_all is not None:
            heads = torch.arange(hs, c.heads, device=x.device).repeat_interleave(b * m)
            q_r = q_all.reshape(b * t, c.heads, d)[flat, heads].view(e, b, m, d)
        else:
            # index_select copies whole rows; advanced indexing with broadcast index tensors
            # was several times slower here.
            xg = x.reshape(b * t, c.dim).index_select(0, flat).view(e, b * m, c.dim)
            w_q = self.q_proj.weight[hs * d :].view(e, d, c.dim).transpose(1, 2)  # (E, C, D)
            if self.q_proj.bias is not None:
                q_r = torch.baddbmm(self.q_proj.bias[hs * d :].view(e, 1, d), xg, w_q)
            else:
                q_r = torch.bmm(xg, w_q)
            q_r = q_r.view(e, b, m, d)
        # (B, Hkv, T, D) -> one K/V per routed head, as (E, B, T, D) views where GQA allows.
        if c.n_kv_heads == c.heads:
            k_r, v_r = k[:, hs:].transpose(0, 1), v[:, hs:].transpose(0, 1)
        else:
            kv_idx = self.kv_index[hs:]
            k_r, v_r = k.index_select(1, kv_idx).transpose(0, 1), v.index_select(1, kv_idx).transpose(0, 1)
        mask = None
        if c.causal:
            mask = torch.arange(t, device=x.device) <= order.unsqueeze(-1)  # (E, B, M, T)
        z_r = F.scaled_dot_product_attention(q_r, k_r, v_r, attn_mask=mask, scale=1.0 / math.sqrt(d))
        g_r = gates[..., hs:].permute(2, 0, 1).reshape(e, b * t).gather(1, (rows * t + order).view(e, b * m))
        z_r = z_r.reshape(e, b * m, d) * g_r.unsqueeze(-1)
        # A contiguous (E, D, C) copy of the routed o_proj columns: the strided view made bmm
        # markedly slower, and the copy is only E * D * C values.
        w_or = w_o[:, hs * d :].reshape(c.dim, e, d).permute(1, 2, 0).contiguous()
        y = torch.bmm(z_r, w_or)  # (E, B*M, C)
        return out.index_add_(0, flat, y.view(-1, c.dim))


# -- spec functions ----------------------------------------------------------------------------


def build(config: ModuleConfig, params: MoHParams) -> MoHAttention:
    """The ``moh`` factory."""
    return MoHAttention(config, params)


def from_pretrained(source: MultiHeadAttention, params: MoHParams) -> MoHAttention:
    """An MoH module holding copies of ``source``'s q/k/v/o weights.

    The router starts so that a converted layer starts near MHA: ``W_s`` and ``W_h`` are zero
    (shared gates exactly 1, ``α = (1, 1)``), ``W_r`` is small random (a zero router would
    tie and send every token to the lowest-index heads) and the picked routed gates then sum
    to ``top_k`` as MHA's ones would.

    :raises ValueError: when ``source`` runs a kernel other than ``params.kernel`` or its
        state does not match.
    """
    if source.kernel.name != params.kernel:
        raise ValueError(
            f"moh.from_pretrained: source runs kernel {source.kernel.name!r} but params.kernel={params.kernel!r}"
        )
    module = build(source.config, params)
    first = next(source.parameters(), None)
    if first is not None:
        module = module.to(device=first.device, dtype=first.dtype)
    state = source.state_dict()
    missing, unexpected = module.load_state_dict(state, strict=False)
    router = {n for n, _ in module.named_parameters() if n.startswith("wg")}
    if set(missing) - router or unexpected:
        raise ValueError(
            f"moh.from_pretrained: source state does not match q/k/v/o of config {source.config}; "
            f"missing {sorted(set(missing) - router)}, unexpected {sorted(unexpected)}"
        )
    with torch.no_grad():
        for layer in (module.wg_1, module.wg_0):
            if layer is not None:
                layer.weight.zero_()
        if module.wg is not None:
            module.wg.weight.normal_(0.0, 0.02)
    module.train(source.training)
    return module


def reduction(config: ModuleConfig) -> tuple[MoHAttention, MultiHeadAttention]:
    """The paper's MHA limit: every head shared (``h_s = H``, ``top_k = 0``) and ``W_s = 0``,
    so every gate is ``softmax(0) · H = 1``; the reference holds the same q/k/v/o weights."""
    module = build(config, MoHParams(shared_heads=config.heads, top_k=0))
    if module.wg_1 is not None:
        with torch.no_grad():
            module.wg_1.weight.zero_()
    reference = MultiHeadAttention(config, kernel="dense")
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("wg")}
    reference.load_state_dict(state)
    return module, reference


def contract_params() -> list[dict[str, Any]]:
    from attnkit_moh.params import contract_params as sets

    return sets()
