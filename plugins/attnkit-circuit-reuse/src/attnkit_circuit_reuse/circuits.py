"""One task's circuit on a model: per-head activation patching, path patching to the logits
and to the first stage's heads, pooled over prompts of several lengths.

Stage 1 keeps the top heads of path patching -> logits (movers / negative movers in the
paper's IOI circuit); they are the receivers of stage 2, path patching -> their inputs
(S-inhibition heads in IOI, by the queries). The circuit is the union of both stages, as in
the paper's union over path-patching stages.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnkit_circuit_reuse import patching as P
from attnkit_circuit_reuse.overlap import top_heads
from attnkit_circuit_reuse.tasks import TaskBatch

__all__ = ["TaskCircuit", "accuracy", "find_circuit", "n_top"]

Head = tuple[int, int]


def n_top(top_frac: float, n_heads: int) -> int:
    """Heads a stage keeps: ``ceil(top_frac * n_heads)``, at least one."""
    return max(1, math.ceil(top_frac * n_heads - 1e-9))


@dataclass
class TaskCircuit:
    """What :func:`find_circuit` measured on one task.

    :ivar activation: ``(L, H)`` activation-patching score per head (NaN: not a sender).
    :ivar to_logits: ``(L, H)`` path-patching score head -> logits.
    :ivar to_receivers: ``(L, H)`` path-patching score head -> stage-1 heads' inputs (NaN: not
        a screened candidate).
    """

    task: str
    ld_clean: float
    ld_corrupt: float
    accuracy: float
    n: int
    activation: torch.Tensor
    to_logits: torch.Tensor
    to_receivers: torch.Tensor
    stage1: list[Head] = field(default_factory=list)
    stage2: list[Head] = field(default_factory=list)
    candidates: list[Head] = field(default_factory=list)

    @property
    def circuit(self) -> list[Head]:
        return sorted(set(self.stage1) | set(self.stage2))

    def to_dict(self) -> dict[str, Any]:
        def table(t: torch.Tensor) -> list[list[float | None]]:
            return [[None if math.isnan(float(v)) else round(float(v), 5) for v in row] for row in t]

        return {
            "task": self.task,
            "n": self.n,
            "ld_clean": self.ld_clean,
            "ld_corrupt": self.ld_corrupt,
            "accuracy": self.accuracy,
            "stage1_to_logits": [list(h) for h in self.stage1],
            "stage2_to_receivers": [list(h) for h in self.stage2],
            "circuit": [list(h) for h in self.circuit],
            "stage2_candidates": [list(h) for h in self.candidates],
            "activation_patching": table(self.activation),
            "path_to_logits": table(self.to_logits),
            "path_to_receivers": table(self.to_receivers),
        }


def accuracy(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: the answer (column 0 of ``candidates (N, C)``) has the largest logit
    among the candidates; ``B`` a multiple of ``N``."""
    reps = logits.shape[0] // candidates.shape[0]
    picked = logits.gather(1, candidates.repeat(reps, 1))
    return picked.argmax(1) == 0


def _pooled(
    fn: Callable[[TaskBatch, P.EndState, P.EndState], torch.Tensor],
    batches: Sequence[tuple[TaskBatch, P.EndState, P.EndState]],
    n_groups: int,
) -> torch.Tensor:
    """``(G,)`` mean logit difference over every prompt of every batch; ``fn`` returns the
    ``(G, N, V)`` patched logits of a batch."""
    total = torch.zeros(n_groups, dtype=torch.float64)
    count = 0
    for batch, clean, corrupt in batches:
        logits = fn(batch, clean, corrupt)
        ld = P.logit_diff(logits.reshape(-1, logits.shape[-1]), batch.answer, batch.wrong).view(n_groups, -1)
        total += ld.sum(1)
        count += len(batch)
    return total / count


def _table(
    values: torch.Tensor, heads: Sequence[Head], shape: tuple[int, int], ld_clean: float, ld_corrupt: float
) -> torch.Tensor:
    out = torch.full(shape, float("nan"), dtype=torch.float64)
    for (layer, h), v in zip(heads, values.tolist()):
        out[layer, h] = P.score(v, ld_clean, ld_corrupt)
    return out


def find_circuit(
    model: Any,
    batches: Sequence[TaskBatch],
    *,
    first_layer: int = 0,
    top_frac: float = 0.02,
    n_candidates: int = 27,
    receiver_inputs: str = "q",
    max_rows: int = 384,
    progress: Callable[[Any, str], Any] = lambda it, desc: it,
) -> TaskCircuit:
    """Activation patching and both path-patching stages of one task's ``batches``."""
    cfg = model.config
    n_layers, hq = int(cfg.num_hidden_layers), int(cfg.num_attention_heads)
    if not 0 <= first_layer < n_layers:
        raise ValueError(f"first_layer must be in [0, {n_layers}), got {first_layer}")
    task = batches[0].task
    states = [(b, P.end_state(model, b.clean), P.end_state(model, b.corrupted)) for b in batches]
    n = sum(len(b) for b in batches)
    ld_clean = float(sum(P.logit_diff(c.logits, b.answer, b.wrong).sum() for b, c, _ in states)) / n
    ld_corrupt = float(sum(P.logit_diff(x.logits, b.answer, b.wrong).sum() for b, _, x in states)) / n
    acc = float(sum(accuracy(c.logits, b.candidates).sum() for b, c, _ in states)) / n

    senders = [(layer, h) for layer in range(first_layer, n_layers) for h in range(hq)]
    groups = [[s] for s in senders]
    shape = (n_layers, hq)

    def bar(desc: str) -> Callable[[Any], Any]:
        return lambda it: progress(it, f"{task}: {desc}")

    ap = _pooled(
        lambda b, c, x: P.activation_patch(model, c, x, groups, max_rows, bar("activation patching")),
        states,
        len(groups),
    )
    activation = _table(ap, senders, shape, ld_clean, ld_corrupt)
    pl = _pooled(
        lambda b, c, x: P.path_patch_to_logits(model, c, x, groups, max_rows, bar("path -> logits")),
        states,
        len(groups),
    )
    to_logits = _table(pl, senders, shape, ld_clean, ld_corrupt)
    k = n_top(top_frac, len(senders))
    stage1 = top_heads(to_logits.tolist(), k)

    deepest = max(layer for layer, _ in stage1)
    eligible = [s for s in senders if s[0] < deepest]
    candidates = top_heads(activation.tolist(), min(n_candidates, len(eligible)), eligible)
    to_receivers = torch.full(shape, float("nan"), dtype=torch.float64)
    stage2: list[Head] = []
    if candidates:
        pr = _pooled(
            lambda b, c, x: P.path_patch_to_heads(
                model, c, x, [[s] for s in candidates], stage1, receiver_inputs, max_rows, bar("path -> receivers")
            ),
            states,
            len(candidates),
        )
        to_receivers = _table(pr, candidates, shape, ld_clean, ld_corrupt)
        stage2 = top_heads(to_receivers.tolist(), min(k, len(candidates)))
    return TaskCircuit(
        task=task,
        ld_clean=ld_clean,
        ld_corrupt=ld_corrupt,
        accuracy=acc,
        n=n,
        activation=activation,
        to_logits=to_logits,
        to_receivers=to_receivers,
        stage1=stage1,
        stage2=stage2,
        candidates=candidates,
    )
