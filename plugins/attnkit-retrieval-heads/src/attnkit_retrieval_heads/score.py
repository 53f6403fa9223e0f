"""The retrieval score of every query head (paper section 2, ``retrieval_calculate``).

At each decode step a head's top-1 attended key position ``i`` is read from the step's
attention pattern. When ``i`` lies in the needle answer span ``[s, e)`` and the token at ``i``
is the token generated at that step (token-id equality: the head copy-pastes it), the head
gains ``1 / (e - s)``; a head that copies the whole answer scores 1.0. An instance counts only
when the answer's ROUGE-1 recall against the needle exceeds 0.5, and a head's score is the
mean over counted instances. GQA models are scored per *query* head.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attnkit.hookspecs import hookimpl
from attnkit_retrieval_heads.params import RetrievalScoreParams

__all__ = ["RetrievalScore", "RetrievalScores", "build", "instance_scores", "load_scores"]

SITE = "blocks.{l}.attn.hook_pattern@decode"


def instance_scores(
    top1: torch.Tensor, sequence: Sequence[int], generated: Sequence[int], span: tuple[int, int]
) -> torch.Tensor:
    """Retrieval scores of one instance.

    :param top1: ``(S, L, H)`` int, the top-1 attended key position of each decode step,
        layer and query head; step ``j`` is the forward pass that produced ``generated[j]``.
    :param sequence: token ids the positions index (the prompt, then any generated tokens).
    :param generated: ``(S,)`` the token produced at each step.
    :param span: ``(s, e)`` the needle answer tokens ``sequence[s:e]``.
    :returns: ``(L, H)`` float64.
    :raises ValueError: when the steps and tokens disagree in number, or the span is empty or
        outside ``sequence``.
    """
    if top1.dim() != 3:
        raise ValueError(f"top1 must be (S, L, H) positions, got shape {tuple(top1.shape)}")
    s, e = span
    if not 0 <= s < e <= len(sequence):
        raise ValueError(f"span must satisfy 0 <= s < e <= len(sequence) = {len(sequence)}, got {span}")
    if top1.shape[0] != len(generated):
        raise ValueError(f"top1 has {top1.shape[0]} decode steps but generated has {len(generated)} tokens")
    seq = torch.as_tensor(list(sequence), dtype=torch.long)
    gen = torch.as_tensor(list(generated), dtype=torch.long).view(-1, 1, 1)
    pos = top1.long()
    inside = (pos >= s) & (pos < e)
    # Positions beyond the sequence (generated tokens not passed in) cannot be in the span.
    token_at = seq[pos.clamp(0, len(seq) - 1)]
    copies = inside & (token_at == gen)
    return copies.sum(0).to(torch.float64) / (e - s)


@dataclass
class RetrievalScores:
    """Retrieval scores of every query head.

    :ivar scores: ``(L, H)`` mean score over counted (successful) instances; zeros when none
        counted.
    :ivar per_instance: ``(N, L, H)`` scores of every counted instance.
    :ivar recalls: ROUGE-1 recall of every instance seen (counted or not).
    :ivar threshold: score above which a head is a retrieval head.
    """

    scores: np.ndarray
    per_instance: np.ndarray
    recalls: list[float] = field(default_factory=list)
    threshold: float = 0.1

    @property
    def n_layers(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.scores.shape[1])

    @property
    def n_counted(self) -> int:
        return int(self.per_instance.shape[0])

    def fraction_above(self, threshold: float | None = None) -> float:
        """Share of heads scoring above ``threshold`` (default: :attr:`threshold`)."""
        t = self.threshold if threshold is None else threshold
        return float((self.scores > t).mean())

    def ranked(self) -> list[tuple[tuple[int, int], float]]:
        """Every ``((layer, head), score)``, best first (ties: lower layer, then head)."""
        flat = [
            ((layer, h), float(self.scores[layer, h])) for layer in range(self.n_layers) for h in range(self.n_heads)
        ]
        return sorted(flat, key=lambda item: (-item[1], item[0]))

    def top(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` best heads as ``(layer, head)``."""
        return [head for head, _ in self.ranked()[:k]]

    def heads_above(self, threshold: float | None = None) -> list[tuple[int, int]]:
        t = self.threshold if threshold is None else threshold
        return [head for head, score in self.ranked() if score > t]

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "shape": [self.n_layers, self.n_heads],
            "n_instances": len(self.recalls),
            "n_counted": self.n_counted,
            "fraction_above_threshold": self.fraction_above(),
            "scores": {
                f"{layer}-{h}": float(self.scores[layer, h])
                for layer in range(self.n_layers)
                for h in range(self.n_heads)
            },
            "per_instance": {
                f"{layer}-{h}": [float(x) for x in self.per_instance[:, layer, h]]
                for layer in range(self.n_layers)
                for h in range(self.n_heads)
            },
            "recalls": list(self.recalls),
        }


def load_scores(source: Any) -> dict[tuple[int, int], float]:
    """Head scores ``{(layer, head): score}`` from a JSON path or a mapping.

    Accepts this plugin's JSON (``{"scores": {"l-h": score}, ...}``), a plain ``{"l-h": score}``
    mapping, and the paper's ``head_score/*.json`` (``{"l-h": [per-instance scores]}``, averaged).
    """
    if isinstance(source, (str, Path)) or hasattr(source, "__fspath__"):
        data = json.loads(Path(source).read_text())
    elif isinstance(source, dict):
        data = source
    else:
        raise TypeError(f"scores must be a JSON path or a mapping 'layer-head' -> score, got {type(source).__name__}")
    if isinstance(data.get("scores"), dict):
        data = data["scores"]
    out: dict[tuple[int, int], float] = {}
    for key, value in data.items():
        parts = str(key).split("-")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"scores keys must look like 'layer-head', got {key!r}")
        if isinstance(value, (list, tuple)):
            value = sum(value) / len(value) if value else 0.0
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"score of head {key!r} must be a finite number, got {value!r}")
        out[(int(parts[0]), int(parts[1]))] = float(value)
    return out


class RetrievalScore:
    """Run-time analysis: records each decode step's top-1 key per layer and query head, and
    turns them into retrieval scores when told what was generated.

    Use with :func:`attnkit.patch`; after each generation call :meth:`add_instance`::

        rs = RetrievalScore()
        with attnkit.patch(model, analyses=[rs]):
            ...  # prefill prompt[:-1], then decode from prompt[-1] (see detect.greedy_generate)
            rs.add_instance(prompt, generated, span, recall)
        rs.result().scores  # (L, H)

    Steps pair with tokens in order: the ``j``-th recorded decode step must be the forward pass
    whose logits gave ``generated[j]`` (prefill all but the last prompt token, as the paper does,
    so that the first answer token also comes from a decode step). Batch size 1 only.

    :param threshold: score above which a head is a retrieval head.
    :param min_recall: ROUGE-1 recall an answer must exceed for its instance to count.
    """

    name = "retrieval_score"

    def __init__(self, threshold: float = 0.1, min_recall: float = 0.5) -> None:
        RetrievalScoreParams(threshold=threshold, min_recall=min_recall)
        self.threshold, self.min_recall = float(threshold), float(min_recall)
        self._steps: list[dict[int, torch.Tensor]] = []
        self._step_ids: list[int] = []
        self._counted: list[np.ndarray] = []
        self.recalls: list[float] = []
        self.shape: tuple[int, int] | None = None

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [SITE]

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor, run: Any) -> None:
        if layer is None or getattr(run, "phase", "decode") != "decode":
            return
        if tensor.dim() != 4 or tensor.shape[0] != 1:
            raise ValueError(
                f"retrieval scoring needs batch size 1 patterns (1, H, Tq, Tk), got {tuple(tensor.shape)} at {site}"
            )
        step = int(getattr(run, "step", len(self._step_ids)))
        if not self._step_ids or self._step_ids[-1] != step:
            self._steps.append({})
            self._step_ids.append(step)
        # argmax returns the first of tied maxima, matching topk(1) on the paper's CPU path
        self._steps[-1][layer] = tensor[0, :, -1].argmax(-1).to("cpu")

    def pending_top1(self) -> torch.Tensor:
        """``(S, L, H)`` top-1 positions of the decode steps recorded since the last instance."""
        if not self._steps:
            return torch.zeros(0, *(self.shape or (0, 0)), dtype=torch.long)
        n_layers = 1 + max(max(step) for step in self._steps)
        rows = []
        for j, step in enumerate(self._steps):
            if len(step) != n_layers:
                raise ValueError(f"decode step {j} recorded layers {sorted(step)}, expected all {n_layers}")
            rows.append(torch.stack([step[layer] for layer in range(n_layers)]))
        return torch.stack(rows)

    def discard(self) -> None:
        """Forget the recorded steps (a generation that is not to be scored)."""
        self._steps.clear()
        self._step_ids.clear()

    def add_instance(
        self, sequence: Sequence[int], generated: Sequence[int], span: tuple[int, int], recall: float
    ) -> torch.Tensor:
        """Score the recorded steps against ``generated`` and keep the result if ``recall`` (the
        answer's ROUGE-1 recall) exceeds ``min_recall``; clears the recorded steps.

        :returns: ``(L, H)`` scores of this instance (returned even when not counted).
        """
        top1 = self.pending_top1()
        self.discard()
        scores = instance_scores(top1, sequence, generated, span)
        if self.shape is None:
            self.shape = (int(scores.shape[0]), int(scores.shape[1]))
        elif tuple(scores.shape) != self.shape:
            raise ValueError(f"instance scores have shape {tuple(scores.shape)}, earlier instances {self.shape}")
        self.recalls.append(float(recall))
        if recall > self.min_recall:
            self._counted.append(scores.numpy())
        return scores

    def result(self) -> RetrievalScores:
        shape = self.shape or (0, 0)
        per = np.stack(self._counted) if self._counted else np.zeros((0, *shape))
        mean = per.mean(0) if len(per) else np.zeros(shape)
        return RetrievalScores(scores=mean, per_instance=per, recalls=list(self.recalls), threshold=self.threshold)


def build(params: RetrievalScoreParams | None = None) -> RetrievalScore:
    """Factory of the ``retrieval_score`` analysis spec."""
    params = params or RetrievalScoreParams()
    if not isinstance(params, RetrievalScoreParams):
        raise TypeError(f"params must be a RetrievalScoreParams, got {type(params).__name__}")
    return RetrievalScore(threshold=params.threshold, min_recall=params.min_recall)
