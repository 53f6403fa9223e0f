"""A compact, seeded training loop for the tiny models (and any classifier or LM).

Data is a pair ``(inputs, targets)`` (see :mod:`attnkit.models.data`). The loss is cross
entropy over the last axis of the logits (``(B, V)`` against ``(B,)`` or ``(B, T, V)``
against ``(B, T)``, skipping :data:`~attnkit.models.data.IGNORE_INDEX`) plus
``aux_loss_weight`` times :func:`attnkit.modules.aux_loss`.

Determinism: batches come from a generator seeded with ``seed``, and the global torch RNG is
forked and seeded for the run (for modules that draw random numbers in ``forward``) and
restored afterwards. On CPU the same seed, model initialisation and thread count give
bit-identical weights.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.models.data import IGNORE_INDEX
from attnkit.modules import aux_loss

__all__ = ["TrainResult", "evaluate", "train"]

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainResult:
    """What :func:`train` measured.

    :ivar losses: total loss (task + weighted aux) of every step.
    :ivar aux_losses: unweighted auxiliary loss of every step.
    :ivar steps: optimiser steps taken.
    :ivar wall_time_s: seconds spent in the loop (evaluation excluded).
    :ivar eval_accuracy: :func:`evaluate` on ``eval_data`` after training, if given.
    """

    losses: list[float] = field(default_factory=list)
    aux_losses: list[float] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    eval_accuracy: float | None = None

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (less noisy than the last step)."""
        if not self.losses:
            return math.nan
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


def _check_data(name: str, data: object) -> Pair:
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
        raise TypeError(f"{name} must be a pair (inputs, targets) of tensors, got {type(data).__name__}")
    x, y = data
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(
            f"{name}: inputs and targets need the same non-zero first axis, got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation per epoch, the short tail dropped."""
    per_epoch = max(1, n // batch_size)
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(per_epoch):
            yield order[i * batch_size : (i + 1) * batch_size]


def _task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def train(
    model: nn.Module,
    train_data: Pair,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    aux_loss_weight: float = 1.0,
    progress: bool = True,
    eval_data: Pair | None = None,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    grad_clip: float | None = 1.0,
) -> TrainResult:
    """Train ``model`` in place with AdamW and return what was measured.

    :param model: maps inputs ``(B, ...)`` to logits ``(B, ..., V)``.
    :param train_data: ``(inputs, targets)``; batches are drawn without replacement per epoch.
    :param steps: optimiser steps.
    :param batch_size: rows per step (capped at the data size).
    :param lr: peak learning rate.
    :param weight_decay: AdamW's decoupled weight decay.
    :param seed: seeds batch order and the torch RNG during the run.
    :param aux_loss_weight: weight of the modules' auxiliary losses.
    :param progress: show a tqdm bar on stderr.
    :param eval_data: if given, :func:`evaluate` on it after training.
    :param schedule: ``"cosine"`` (to zero at ``steps``) or ``"constant"``, after a linear warmup.
    :param warmup_steps: linear warmup steps.
    :param grad_clip: clip the global gradient norm to this (``None``: no clipping).
    """
    x, y = _check_data("train_data", train_data)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if eval_data is not None:
        _check_data("eval_data", eval_data)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    device = params[0].device
    batch_size = min(batch_size, x.shape[0])

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if schedule == "constant":
            return 1.0
        done = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * done))

    from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no stubs

    result = TrainResult()
    was_training = model.training
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        batches = _batches(x.shape[0], batch_size, torch.Generator().manual_seed(seed))
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
        model.train()
        start = time.perf_counter()
        bar = tqdm(range(steps), desc="train", unit="step", disable=not progress, file=sys.stderr, leave=False)
        try:
            for _ in bar:
                idx = batches.__next__()
                xb, yb = x[idx].to(device), y[idx].to(device)
                task = _task_loss(model(xb), yb)
                aux = aux_loss(model)
                loss = task + aux_loss_weight * aux
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                sched.step()
                result.losses.append(float(loss.detach()))
                result.aux_losses.append(float(aux.detach()))
                bar.set_postfix(loss=f"{result.losses[-1]:.4f}", refresh=False)
        finally:
            bar.close()
            model.train(was_training)
        result.wall_time_s = time.perf_counter() - start
        result.steps = steps
    if eval_data is not None:
        result.eval_accuracy = evaluate(model, eval_data)
    return result


@torch.no_grad()
def evaluate(model: nn.Module, data: Pair, batch_size: int = 512) -> float:
    """Share of scored targets where the argmax of the logits is right.

    :param data: ``(inputs, targets)``; targets equal to ``IGNORE_INDEX`` are skipped.
    :returns: accuracy in ``[0, 1]``.
    """
    x, y = _check_data("data", data)
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            pred = model(xb).argmax(-1)
            scored = yb != IGNORE_INDEX
            correct += int((pred.eq(yb) & scored).sum())
            total += int(scored.sum())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("data has no scored targets (all equal IGNORE_INDEX)")
    return correct / total
