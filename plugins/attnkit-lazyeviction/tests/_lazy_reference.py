"""A plain-Python reference of LazyEviction, written from the official code
(``TempCache.record_recurrence``, ``Window_LAZYKVCluster.update_kv_in_decoding``) token by token:
one list of token records per sequence and KV head, float64 softmax over the tokens a query
may see, Python floats for the score, ``sorted`` for the choice. Nothing of the plugin is used.

Also: a cumulative-attention (H2O) reference, and :func:`drive`, which feeds the same forwards
to a policy object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def score(last: int, mri: int, step: int) -> float:
    """The MRI-centric score in Python floats (``exp`` of a huge argument taken as infinite)."""

    def logistic2(x: float) -> float:  # 2 / (1 + exp(x))
        return 0.0 if x > 700 else 2.0 / (1.0 + math.exp(x))

    bonus = 0.0 if mri == 0 else logistic2(mri - 1.0)
    return logistic2(1.0 + (step - last) / (mri + 1e-5)) + bonus


@dataclass
class Token:
    pos: int
    key: torch.Tensor  # (D,)
    value: torch.Tensor  # (Dv,)
    last: int
    mri: int = 0
    mass: float = 0.0  # cumulative attention (for the H2O reference)


@dataclass
class Row:
    """One sequence and KV head."""

    tokens: list[Token] = field(default_factory=list)


@dataclass
class Reference:
    """LazyEviction over ``B x Hkv`` rows; ``forward`` takes what a model layer would give.

    :param budget: int, or a float ratio of the prompt length.
    """

    budget: int | float
    window: int
    alpha: float
    aggregation: str = "mean"
    prefill: str = "compress"
    scaling: float = 1.0
    rows: dict[tuple[int, int], Row] = field(default_factory=dict)
    seen: int = 0
    step: int = 0
    resolved: int | None = None
    evicted_at: list[int] = field(default_factory=list)

    def forward(self, key: torch.Tensor, value: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``key``/``value`` ``(B, Hkv, n, D)``, ``query`` ``(B, Hq, n, D)``; returns the
        attention output ``(B, Hq, n, Dv)`` over the tokens kept so far plus the new ones."""
        b, hkv, n, _ = key.shape
        g = query.shape[1] // hkv
        prefill = self.seen == 0
        if prefill:
            self.resolved = self.budget if isinstance(self.budget, int) else max(1, math.floor(self.budget * n))
        prev = self.step if not prefill else -1
        if not prefill:
            self.step += n
        out = torch.zeros(b, query.shape[1], n, value.shape[-1], dtype=torch.float64)
        for bi in range(b):
            for h in range(hkv):
                row = self.rows.setdefault((bi, h), Row())
                for i in range(n):
                    p = self.seen + i
                    last = self.seen + n - 1 if (prefill and self.prefill == "keep") else p - 1
                    row.tokens.append(Token(p, key[bi, h, i].double(), value[bi, h, i].double(), last))
                for i in range(n):
                    t = self.seen + i
                    visible = [tok for tok in row.tokens if tok.pos <= t]
                    ks = torch.stack([tok.key for tok in visible])
                    vs = torch.stack([tok.value for tok in visible])
                    probs = []
                    for qh in range(h * g, (h + 1) * g):
                        pr = torch.softmax((ks @ query[bi, qh, i].double()) * self.scaling, dim=0)
                        out[bi, qh, i] = pr @ vs
                        probs.append(pr)
                    stacked = torch.stack(probs)
                    agg = stacked.mean(0) if self.aggregation == "mean" else stacked.amax(0)
                    for tok, a in zip(visible, agg.tolist()):
                        tok.mass += a
                    if prefill and self.prefill == "keep":
                        continue
                    for tok, a in zip(visible, agg.tolist()):
                        if a >= self.alpha:
                            tok.mri = max(tok.mri, t - tok.last)
                            tok.last = t
        self.seen += n
        due = (self.step // self.window > prev // self.window) and not (prefill and self.prefill == "keep")
        if due:
            assert self.resolved is not None
            now = self.seen - 1
            did = False
            for row in self.rows.values():
                if len(row.tokens) <= self.resolved:
                    continue
                did = True
                recent = min(self.window, self.resolved)
                by_pos = sorted(row.tokens, key=lambda tok: tok.pos)
                keep = by_pos[len(by_pos) - recent :]
                rest = by_pos[: len(by_pos) - recent]
                rest.sort(key=lambda tok: (-score(tok.last, tok.mri, now), tok.pos))
                keep += rest[: self.resolved - recent]
                row.tokens = sorted(keep, key=lambda tok: tok.pos)
            if did:
                self.evicted_at.append(self.step)
        return out

    def kept(self, b: int, h: int) -> list[int]:
        return [tok.pos for tok in self.rows[(b, h)].tokens]

    def stats(self, b: int, h: int) -> dict[int, tuple[int, int]]:
        """``{position: (last, mri)}`` of the tokens kept in row ``(b, h)``."""
        return {tok.pos: (tok.last, tok.mri) for tok in self.rows[(b, h)].tokens}


def h2o_reference(
    forwards: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], budget: int, recent: int, scaling: float = 1.0
) -> list[list[int]]:
    """Cumulative-attention eviction (H2O) on a ``B = Hkv = 1``, one-query-head stream: after
    every forward keep the ``recent`` newest tokens and the ``budget - recent`` older ones with
    the most attention received so far (ties to the earlier token). Returns the kept positions
    after each forward."""
    tokens: list[Token] = []
    seen = 0
    kept: list[list[int]] = []
    for key, value, query in forwards:
        n = key.shape[2]
        for i in range(n):
            tokens.append(Token(seen + i, key[0, 0, i].double(), value[0, 0, i].double(), 0))
        for i in range(n):
            t = seen + i
            visible = [tok for tok in tokens if tok.pos <= t]
            ks = torch.stack([tok.key for tok in visible])
            pr = torch.softmax((ks @ query[0, 0, i].double()) * scaling, dim=0)
            for tok, a in zip(visible, pr.tolist()):
                tok.mass += a
        seen += n
        if len(tokens) > budget:
            by_pos = sorted(tokens, key=lambda tok: tok.pos)
            keep = by_pos[len(by_pos) - recent :]
            rest = sorted(by_pos[: len(by_pos) - recent], key=lambda tok: (-tok.mass, tok.pos))
            tokens = sorted(keep + rest[: budget - recent], key=lambda tok: tok.pos)
        kept.append([tok.pos for tok in tokens])
    return kept


def drive(policy: object, forwards: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], scaling: float = 1.0):
    """Feed ``forwards`` (key, value, query) to ``policy`` on layer 0 like a model layer does
    (``append``, then ``observe(attend=True)``); returns, per forward, the attention output (the
    policy's own, or dense attention over what ``append`` returned when it gives none), the
    kept positions ``(B, Hkv, ...)`` after it and the keys attention used per row ``(B, Hkv)``."""
    outs, kept, attended = [], [], []
    for key, value, query in forwards:
        keys, values = policy.append(0, key, value)  # type: ignore[attr-defined]
        out = policy.observe(0, query, scaling, attend=True)  # type: ignore[attr-defined]
        pos = policy.key_positions(0)  # type: ignore[attr-defined]
        attended.append((pos >= 0).sum(-1))
        if out is None:
            out = dense(query, keys, values, pos, scaling)
        outs.append(out)
        kept.append(policy.kept_positions(0).clone())  # type: ignore[attr-defined]
    return outs, kept, attended


def dense(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pos: torch.Tensor, scaling: float):
    """Causal float64 attention of the last ``Tq`` positions over slots with positions ``pos``."""
    b, hq, tq, _ = query.shape
    hkv = keys.shape[1]
    g = hq // hkv
    qpos = pos.max() - tq + 1 + torch.arange(tq)
    out = torch.zeros(b, hq, tq, values.shape[-1], dtype=torch.float64)
    for bi in range(b):
        for qh in range(hq):
            h = qh // g
            logits = (keys[bi, h].double() @ query[bi, qh].double().T).T * scaling  # (tq, Tk)
            ok = (pos[bi, h].view(1, -1) >= 0) & (pos[bi, h].view(1, -1) <= qpos.view(-1, 1))
            out[bi, qh] = torch.softmax(logits.masked_fill(~ok, float("-inf")), dim=-1) @ values[bi, h].double()
    return out


def rows_of(kept: torch.Tensor) -> list[list[list[int]]]:
    """``(B, Hkv, S)`` kept positions -> nested lists without the ``-1`` padding."""
    return [[[p for p in row if p >= 0] for row in seq] for seq in kept.tolist()]
