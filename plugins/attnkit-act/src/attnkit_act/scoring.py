"""Next-token label-likelihood scoring of task items under ``attnkit.patch``.

Items are batched with left padding (the last prompt token is then the last position of
every row); position ids are passed so each sequence starts at position 0 as it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnkit_act.tasks import Item

__all__ = ["Scores", "batches", "encode_batch", "label_ids", "score_items"]


@dataclass
class Scores:
    """Per-item results: ``logprob`` of the right label among the choices (log-softmax over
    the choices' first-token logits) and whether the argmax is right."""

    logprob: torch.Tensor  # (N,) float64
    correct: torch.Tensor  # (N,) bool

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean()) if self.correct.numel() else float("nan")

    @property
    def mean_logprob(self) -> float:
        return float(self.logprob.mean()) if self.logprob.numel() else float("nan")

    def metric(self, name: str) -> float:
        return self.accuracy if name == "accuracy" else self.mean_logprob


def label_ids(tok: Any, choices: Sequence[str]) -> list[int]:
    """First token id of each label; they must differ (else the choice is ambiguous).

    :raises ValueError: naming the labels that share a first token.
    """
    ids = [tok(c, add_special_tokens=False).input_ids[0] for c in choices]
    if len(set(ids)) != len(ids):
        raise ValueError(f"choices {list(choices)} share first tokens {ids}: they cannot be told apart by one token")
    return ids


def encode_batch(tok: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``(input_ids, attention_mask)``, both ``(B, T)``."""
    rows = [tok(p, add_special_tokens=True).input_ids for p in prompts]
    t = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :] = torch.tensor(r)
        mask[i, t - len(r) :] = 1
    return ids, mask


def batches(tok: Any, items: Sequence[Item], batch_size: int) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """``(item indices, input_ids, attention_mask)`` per batch, items of similar length
    together (less padding); the same order every time, so captures can be matched to items."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].prompt))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = encode_batch(tok, [items[i].prompt for i in idx])
        yield idx, ids, mask


def score_items(
    model: Any,
    tok: Any,
    items: Sequence[Item],
    analyses: Sequence[Any] = (),
    batch_size: int = 8,
    progress: Any = None,
) -> Scores:
    """Score ``items`` with ``analyses`` attached (``attnkit.patch(model, "dense", ...)``).

    :param progress: optional callable ``progress(n_done_items)`` after each batch.
    """
    import attnkit

    if not items:
        raise ValueError("items is empty: nothing to score")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    logprob = torch.empty(len(items), dtype=torch.float64)
    correct = torch.empty(len(items), dtype=torch.bool)
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=list(analyses)):
        for idx, ids, mask in batches(tok, items, batch_size):
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
            for row, i in enumerate(idx):
                cand = label_ids(tok, items[i].choices)
                lp = torch.log_softmax(logits[row, cand].double(), dim=-1)
                logprob[i] = lp[items[i].label]
                correct[i] = bool(int(lp.argmax()) == items[i].label)
            if progress is not None:
                progress(len(idx))
    return Scores(logprob, correct)
