"""Passkey retrieval beyond the trained length: a tiny GPT trained with landmark attention
against the same GPT with plain causal attention.

The paper (Mohtashami & Jaggi 2023, section 4.2) fine-tunes LLaMA-7B with landmarks at 512
tokens and retrieves a passkey at up to 32K tokens with block retrieval, where the base model
fails beyond its context. This module is the CPU-sized analogue: a synthetic passkey task,
two tiny GPTs trained from scratch at a short length, evaluated at 1x, 4x and 8x that length.

**Task** (:func:`passkey_batch`). A row of ``length`` regular tokens: random filler tokens,
somewhere a marker token ``MARK`` followed by the passkey (``digits`` random digit tokens),
more filler, then a query token ``QUERY`` followed by the passkey again and a few unscored
filler tokens (a random number per row, so the query sits at any offset in its block). The
model is scored
on the answer only (teacher forcing: every answer digit must be the argmax of the logits
before it, which is what greedy decoding would emit). Filler, digits and the two markers use
disjoint token ids, so the passkey cannot be guessed from the filler; chance is
``10 ** -digits``. The passkey is planted inside one landmark block (it does not straddle a
landmark) at a uniformly random block and offset before the query.

**Landmarks** (:func:`attnkit_landmark.tokens.insert_landmarks`). The landmark model reads
the same rows with a landmark token after every ``block_size - 1`` regular tokens (the paper's
``add_mem_tokens``), so its sequences are ``length + length // (block_size - 1)`` tokens.

**Models** (:class:`PasskeyGPT`). Pre-norm GPT with rotary position embeddings (RoPE) and
no learned position table. The core's :class:`attnkit.models.TinyGPT` has a learned absolute
position table of ``max_len`` rows, which cannot be evaluated past the training length at all,
hence a small model here (same block layout: :class:`attnkit.models.tiny.Block` style pre-norm
attention + GELU MLP, tied embeddings).

* ``plain``: dense causal attention (``spec="dense"``) with RoPE at global positions
  ``0..T-1``, the standard decoder.
* ``landmark``: the grouped softmax (``spec="landmark"``) in training; at evaluation
  ``spec="landmark.retrieval"`` (each query and head gates only its ``top_k`` blocks by
  landmark logit, the paper's ``per_token_and_head`` inference), and also the full grouped
  softmax without retrieval. RoPE at **block-local** positions ``t mod block_size``: every
  block (and its landmark) gets positions ``0..block_size-1``. This is how positions stay in
  range here: the relative distance between a query and any key it attends is always within
  ``(-block_size, block_size)``, as in training, whatever the sequence length. The paper keeps
  retrieved blocks in range by re-indexing them to positions just before the current chunk
  (spec S5 (f), ``rotary_mem_jump`` / ``mem_indices``); block-local positions are a simpler
  scheme with the same aim (retrieved blocks at a fixed place relative to the query), chosen
  because ``landmark.retrieval`` takes post-RoPE keys and re-indexes nothing.
* ``plain-block`` (ablation, ``--ablation``): dense causal attention with the landmark
  model's block-local positions, no landmark tokens, to separate what the position scheme does
  from what the landmarks do.

Run: ``python -m attnkit_landmark.experiment --out results/passkey.json`` (``--help`` for
sizes). One thread (``torch.set_num_threads(1)``) unless ``--threads``; results go to JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnkit.models.data import IGNORE_INDEX
from attnkit_landmark.tokens import insert_landmarks

__all__ = [
    "Config",
    "PasskeyBatch",
    "PasskeyGPT",
    "Vocab",
    "apply_rope",
    "block_positions",
    "grouped_softmax_attention",
    "main",
    "passkey_accuracy",
    "passkey_batch",
    "run",
]


@dataclass(frozen=True)
class Vocab:
    """Token ids of the passkey task: ``filler`` ids ``0..filler-1``, then the ten digits,
    ``MARK``, ``QUERY`` and ``LANDMARK``."""

    filler: int = 32

    @property
    def digit0(self) -> int:
        return self.filler

    @property
    def mark(self) -> int:
        return self.filler + 10

    @property
    def query(self) -> int:
        return self.filler + 11

    @property
    def landmark(self) -> int:
        return self.filler + 12

    @property
    def size(self) -> int:
        return self.filler + 13


@dataclass
class PasskeyBatch:
    """Rows of the passkey task.

    :ivar inputs: ``(n, T)`` token ids the model reads (``T = length - 1``, plus the landmarks).
    :ivar targets: ``(n, T)`` next-token targets, :data:`IGNORE_INDEX` except where the next
        token is an answer digit.
    :ivar keys: ``(n, digits)`` the passkeys (digit values ``0..9``).
    :ivar mark_pos: ``(n,)`` index of ``MARK`` among the regular tokens (before landmarks).
    :ivar query_pos: ``(n,)`` index of ``QUERY`` among the regular tokens.
    :ivar raw: ``(n, length)`` the rows without landmarks (the answer included).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    keys: torch.Tensor
    mark_pos: torch.Tensor
    query_pos: torch.Tensor
    raw: torch.Tensor


def _pos_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def passkey_batch(
    n: int,
    length: int,
    *,
    digits: int = 4,
    block_size: int = 32,
    landmarks: bool = True,
    vocab: Vocab | None = None,
    seed: int = 0,
) -> PasskeyBatch:
    """``n`` passkey rows of ``length`` regular tokens (see the module docstring).

    Each row ends with ``pad`` unscored filler tokens after its answer, ``pad`` uniform in
    ``[0, block_size - 1)`` per row, so the query falls at every offset inside a block at every
    length (with a fixed layout the query's block offset would be one value per length, which
    a model learns at the training length and then misses at the others). The marker and
    passkey (``digits + 1`` tokens) lie inside one chunk of ``block_size - 1`` regular tokens
    (one landmark block), uniformly over the chunks and offsets that end before the query.
    ``landmarks=False`` gives the plain model's rows (no landmark tokens).

    :raises ValueError: sizes that leave no room for the passkey, or ``digits + 1 >
        block_size - 1`` (a passkey that cannot fit in one block).
    """
    vocab = vocab or Vocab()
    _pos_int("n", n)
    _pos_int("digits", digits)
    _pos_int("block_size", block_size, 2)
    mem = block_size - 1
    span = digits + 1
    if span > mem:
        raise ValueError(f"digits={digits}: MARK + passkey ({span} tokens) must fit in block_size - 1 = {mem} tokens")
    _pos_int("length", length)
    tail = digits + 1  # QUERY + answer
    min_room = length - tail - (mem - 1)  # regular tokens before the query with the longest pad
    # Candidate starts: inside a chunk of `mem` regular tokens (sorted).
    starts = torch.arange(max(0, length - tail - span + 1))
    starts = starts[(starts % mem) + span <= mem]
    if min_room < span or starts.numel() == 0 or int(starts[0]) + span > min_room:
        raise ValueError(
            f"length={length} leaves no room for a {span}-token passkey in one block of {mem} tokens "
            f"before a query up to {mem - 1} tokens from the end"
        )
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, vocab.filler, (n, length), generator=g)
    keys = torch.randint(0, 10, (n, digits), generator=g)
    pad = torch.randint(0, mem, (n,), generator=g)
    query_pos = length - tail - pad  # (n,)
    # Starts ending before the query: the first `count` candidates of each row.
    count = torch.searchsorted(starts + span, query_pos, right=True)
    pick = (torch.rand(n, generator=g, dtype=torch.float64) * count).long().clamp(max=count - 1)
    mark_pos = starts[pick]
    rows = torch.arange(n)
    raw[rows, mark_pos] = vocab.mark
    for i in range(digits):
        raw[rows, mark_pos + 1 + i] = vocab.digit0 + keys[:, i]
        raw[rows, query_pos + 1 + i] = vocab.digit0 + keys[:, i]
    raw[rows, query_pos] = vocab.query
    col = torch.arange(length)[None, :]
    answer = (col > query_pos[:, None]) & (col <= query_pos[:, None] + digits)  # (n, length)
    if landmarks:
        seq = insert_landmarks(raw, block_size, vocab.landmark)
        answer = insert_landmarks(answer.long(), block_size, 0).bool()
    else:
        seq = raw
    inputs, targets = seq[:, :-1], seq[:, 1:].clone()
    targets[~answer[:, 1:]] = IGNORE_INDEX
    return PasskeyBatch(inputs, targets, keys, mark_pos, query_pos, raw)


def block_positions(length: int, block_size: int) -> torch.Tensor:
    """Block-local positions ``t mod block_size`` of ``length`` tokens (a landmark is last in its block)."""
    return torch.arange(length) % block_size


def apply_rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding of ``x (B, H, T, D)`` at ``positions (T,)`` (halves rotated, as LLaMA/GPT-NeoX)."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"apply_rope needs an even head dim, got D={d}")
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions.to(torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def grouped_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_size: int) -> torch.Tensor:
    """Causal ``landmark`` attention for training, lean and differentiable: ``q, k, v (B, H, T, D)``
    with ``T`` a multiple of ``block_size`` or not (a trailing partial block has no landmark).

    The same single softmax over rewritten logits as :mod:`attnkit_landmark.reference`
    (``s_u - lse_j + s_{L_j}`` in earlier blocks, ``s_c`` in the query's own block, landmarks
    masked), computed on the ``(T, nb, block_size)`` score grid with one additive mask and no
    non-finite bookkeeping (finite inputs only): several times fewer passes over the ``T x T``
    scores than the reference, which is what makes CPU training affordable. Tested equal to
    the reference in float64.
    """
    b, h, t, d = q.shape
    bs = block_size
    pad = (-t) % bs
    nb = (t + pad) // bs
    kp = torch.nn.functional.pad(k, (0, 0, 0, pad))
    vp = torch.nn.functional.pad(v, (0, 0, 0, pad))
    s = (q * d**-0.5) @ kp.transpose(-1, -2)  # (B, H, T, nb * bs)
    s = s.view(b, h, t, nb, bs)
    pos = torch.arange(t, device=q.device)
    qb = pos // bs
    blk = torch.arange(nb, device=q.device)
    col = torch.arange(bs, device=q.device)
    key = blk[:, None] * bs + col[None, :]  # (nb, bs)
    n_full = t // bs
    past = (blk[None, :] < qb[:, None]) & (blk[None, :] < n_full)  # (T, nb)
    own = blk[None, :] == qb[:, None]
    regular = col < bs - 1
    allowed = (past[:, :, None] | (own[:, :, None] & (key[None] <= pos[:, None, None]))) & regular
    mask = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
    lse = torch.logsumexp(s[..., : bs - 1], dim=-1)  # (B, H, T, nb)
    adj = torch.where(past, s[..., bs - 1] - lse, torch.zeros((), dtype=q.dtype, device=q.device))
    logits = (s + adj[..., None] + mask).view(b, h, t, nb * bs)
    p = torch.softmax(logits, dim=-1)
    return p @ vp


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, owner: PasskeyGPT) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self._owner = [owner]  # not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import attnkit

        b, t, e = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, e // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        m = self._owner[0]
        pos = m.positions_for(t).to(x.device)
        q, k = apply_rope(q, pos), apply_rope(k, pos)
        if m.backend == "lean":  # training path of the landmark model
            z = grouped_softmax_attention(q, k, v, m.spec_params["block_size"])
        else:
            z = attnkit.attention(q, k, v, spec=m.spec, backend=m.backend, is_causal=True, **m.spec_params)
        return self.out(z.transpose(1, 2).reshape(b, t, e))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, owner: PasskeyGPT) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads, owner)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PasskeyGPT(nn.Module):
    """Tiny pre-norm GPT with RoPE and a switchable attention spec.

    :param vocab_size: token ids.
    :param dim: width; ``heads`` must divide it and ``dim // heads`` be even.
    :param layers: blocks.
    :param heads: attention heads.
    :param spec: attention spec for every layer (``"dense"``, ``"landmark"``,
        ``"landmark.retrieval"``); change ``self.spec`` / ``self.spec_params`` / ``self.backend``
        between training and evaluation.
    :param spec_params: that spec's parameters.
    :param positions: ``"global"`` (RoPE at ``0..T-1``) or ``"block"`` (``t mod block_size``).
    :param block_size: block of the ``"block"`` positions.

    ``forward(tokens (B, T)) -> logits (B, T, vocab_size)``.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        *,
        spec: str = "dense",
        spec_params: dict[str, Any] | None = None,
        positions: str = "global",
        block_size: int = 32,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _pos_int("vocab_size", vocab_size)
        _pos_int("dim", dim)
        _pos_int("layers", layers)
        _pos_int("heads", heads)
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim={dim} must be heads={heads} times an even head dim")
        if positions not in ("global", "block"):
            raise ValueError(f"positions must be 'global' or 'block', got {positions!r}")
        _pos_int("block_size", block_size, 2)
        self.spec, self.spec_params, self.backend = spec, dict(spec_params or {}), backend
        self.positions, self.block_size = positions, block_size
        self.tok = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, self) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok.weight

    def positions_for(self, t: int) -> torch.Tensor:
        return torch.arange(t) if self.positions == "global" else block_positions(t, self.block_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, T), got {tuple(tokens.shape)}")
        x = self.tok(tokens)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


@torch.no_grad()
def passkey_accuracy(model: nn.Module, batch: PasskeyBatch, batch_size: int = 8) -> dict[str, float]:
    """Exact-match share (every answer digit the argmax) and per-digit share over ``batch``."""
    was = model.training
    model.eval()
    exact = digit = total = 0
    try:
        for i in range(0, batch.inputs.shape[0], batch_size):
            x, y = batch.inputs[i : i + batch_size], batch.targets[i : i + batch_size]
            scored = y != IGNORE_INDEX
            pred = model(x).argmax(-1)
            hit = (pred == y) | ~scored
            exact += int(hit.all(dim=-1).sum())
            digit += int(((pred == y) & scored).sum())
            total += int(scored.sum())
    finally:
        model.train(was)
    n = batch.inputs.shape[0]
    return {"exact": exact / n, "digit": digit / total}


@dataclass
class Config:
    """Sizes of one run of the experiment (the command-line defaults)."""

    length: int = 128
    factors: tuple[int, ...] = (1, 4, 8)
    block_size: int = 16
    top_k: tuple[int, ...] = (2, 4)
    digits: int = 4
    filler: int = 32
    dim: int = 64
    layers: int = 2
    heads: int = 4
    steps: int = 1500
    batch_size: int = 32
    train_rows: int = 16384
    lr: float = 3e-3
    warmup: int = 100
    n_eval: int = 100
    seed: int = 0
    ablation: bool = False
    models: tuple[str, ...] = field(default=("landmark", "plain"))


def _build(cfg: Config, kind: str, vocab: Vocab) -> PasskeyGPT:
    torch.manual_seed(cfg.seed)
    if kind == "landmark":
        return PasskeyGPT(
            vocab.size, cfg.dim, cfg.layers, cfg.heads, spec="landmark",
            spec_params={"block_size": cfg.block_size}, positions="block", block_size=cfg.block_size,
            backend="lean",
        )  # fmt: skip
    positions = "block" if kind == "plain-block" else "global"
    return PasskeyGPT(
        vocab.size, cfg.dim, cfg.layers, cfg.heads, spec="dense", positions=positions, block_size=cfg.block_size
    )


def _eval_modes(cfg: Config, kind: str) -> dict[str, tuple[str, dict[str, Any], str | None]]:
    if kind != "landmark":
        return {"full": ("dense", {}, None)}
    bs = {"block_size": cfg.block_size}
    modes: dict[str, tuple[str, dict[str, Any], str | None]] = {
        f"retrieval_top{k}": ("landmark.retrieval", {**bs, "top_k": k}, "numba") for k in cfg.top_k
    }
    modes["grouped"] = ("landmark", bs, "numba")
    return modes


def run(cfg: Config, out: Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Train every model of ``cfg.models`` and evaluate it at each length; write ``out`` after each model."""
    from attnkit.models.train import train

    vocab = Vocab(cfg.filler)
    kinds = list(cfg.models) + (["plain-block"] if cfg.ablation and "plain-block" not in cfg.models else [])
    result: dict[str, Any] = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "threads": torch.get_num_threads(),
        "chance_exact": 10.0**-cfg.digits,
        "models": {},
    }
    for kind in kinds:
        lm = kind == "landmark"
        model = _build(cfg, kind, vocab)
        data = passkey_batch(
            cfg.train_rows, cfg.length, digits=cfg.digits, block_size=cfg.block_size, landmarks=lm, vocab=vocab,
            seed=cfg.seed + 1,
        )  # fmt: skip
        tr = train(
            model, (data.inputs, data.targets), steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
            seed=cfg.seed, warmup_steps=cfg.warmup, progress=False,
        )  # fmt: skip
        entry: dict[str, Any] = {
            "attention_train": model.spec,
            "positions": model.positions,
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_tokens_per_row": int(data.inputs.shape[1]),
            "steps": tr.steps,
            "train_time_s": round(tr.wall_time_s, 1),
            "final_loss": tr.final_loss,
            "eval": {},
        }
        for factor in cfg.factors:
            length = cfg.length * factor
            ev = passkey_batch(
                cfg.n_eval, length, digits=cfg.digits, block_size=cfg.block_size, landmarks=lm, vocab=vocab,
                seed=10_000 + cfg.seed + factor,
            )  # fmt: skip
            per: dict[str, Any] = {"length": length, "tokens": int(ev.inputs.shape[1]), "n": cfg.n_eval}
            for mode, (spec, params, backend) in _eval_modes(cfg, kind).items():
                model.spec, model.spec_params, model.backend = spec, params, backend
                t0 = time.perf_counter()
                per[mode] = passkey_accuracy(model, ev, batch_size=max(1, 2048 // length))
                per[mode]["eval_time_s"] = round(time.perf_counter() - t0, 1)
            entry["eval"][f"{factor}x"] = per
            if progress:
                print(kind, f"{factor}x", json.dumps(per), file=sys.stderr, flush=True)
        result["models"][kind] = entry
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m attnkit_landmark.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    p.add_argument("--length", type=int, default=d.length, help="training length in regular tokens")
    p.add_argument("--factors", type=int, nargs="+", default=list(d.factors), help="eval lengths as multiples")
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--top-k", type=int, nargs="+", default=list(d.top_k), help="blocks retrieved (one eval each)")
    p.add_argument("--digits", type=int, default=d.digits)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--train-rows", type=int, default=d.train_rows)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--n-eval", type=int, default=d.n_eval)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--models", nargs="+", default=list(d.models), choices=["landmark", "plain", "plain-block"])
    p.add_argument("--ablation", action="store_true", help="also train plain-block (dense, block-local RoPE)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(a.threads))
    cfg = Config(
        length=a.length, factors=tuple(a.factors), block_size=a.block_size, top_k=tuple(a.top_k), digits=a.digits,
        dim=a.dim, layers=a.layers, heads=a.heads, steps=a.steps, batch_size=a.batch_size,
        train_rows=a.train_rows, lr=a.lr, n_eval=a.n_eval, seed=a.seed, ablation=a.ablation,
        models=tuple(a.models),
    )  # fmt: skip
    res = run(cfg, a.out, progress=a.progress)
    for kind, e in res["models"].items():
        accs = {f: {m: v["exact"] for m, v in r.items() if isinstance(v, dict)} for f, r in e["eval"].items()}
        print(kind, f"steps={e['steps']} time={e['train_time_s']}s", json.dumps(accs))
    return 0 if all(math.isfinite(e["final_loss"]) for e in res["models"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
