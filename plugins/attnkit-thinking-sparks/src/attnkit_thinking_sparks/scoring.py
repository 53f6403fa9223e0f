"""Task scoring with teacher forcing: per-item target loss and exact match, with and without
head ablations (the core's :class:`~attnkit.runtime.HeadEdit` at ``hook_z``).

An item is exactly right when every target token is the model's argmax given the true prefix,
which is the same as greedy decoding reproducing the whole target.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from attnkit_thinking_sparks.tinygpt import IGNORE, TaskBatch

__all__ = ["ablated_metrics", "encode_hf", "item_scores", "random_head_sets"]

Head = tuple[int, int]


def encode_hf(items: Sequence[tuple[str, str]], tokenizer: Any) -> list[TaskBatch]:
    """Encode ``(prompt, answer)`` items with a transformers tokenizer (no special tokens),
    grouped into equal-length batches (no padding); the answer's tokens are scored.

    :raises ValueError: naming ``items`` when a prompt's tokens are not a prefix of the
        prompt + answer tokens (the answer would merge with the prompt's last token).
    """
    groups: dict[int, tuple[list[list[int]], list[list[int]]]] = {}
    for prompt, answer in items:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        if full[: len(p)] != p or len(full) == len(p):
            raise ValueError(f"items: answer {answer!r} does not tokenize apart from prompt {prompt[-20:]!r}")
        labels = [IGNORE] * len(full)
        for i in range(len(p) - 1, len(full) - 1):
            labels[i] = full[i + 1]
        rows, labs = groups.setdefault(len(full), ([], []))
        rows.append(full)
        labs.append(labels)
    return [TaskBatch(torch.tensor(r), torch.tensor(lab)) for _, (r, lab) in sorted(groups.items())]


def item_scores(model: Any, batches: Sequence[TaskBatch]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, exact)``: ``(N,)`` float64 mean target cross-entropy per item and ``(N,)`` bool
    "every target token is the argmax", over the batches in order (one forward each)."""
    losses, exact = [], []
    for batch in batches:
        scored = batch.labels != IGNORE
        first = int(scored.any(0).nonzero()[0])
        keep = batch.ids.shape[1] - first  # only the scored positions' logits are computed
        logits = model(batch.ids, logits_to_keep=keep).logits.double()
        labels, mask = batch.labels[:, first:], scored[:, first:]
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).reshape(labels.shape)
        losses.append((ce * mask).sum(1) / mask.sum(1))
        exact.append(((logits.argmax(-1) == labels) | ~mask).all(1))
    return torch.cat(losses).cpu(), torch.cat(exact).cpu()


def ablated_metrics(model: Any, batches: Sequence[TaskBatch], heads: Sequence[Head]) -> tuple[float, float]:
    """Mean target loss and exact-match accuracy with ``heads`` zero-ablated together
    (none: the unedited model under the same patch)."""
    import attnkit
    from attnkit.runtime.interventions import HeadEdit

    analyses = [HeadEdit(list(heads), mode="zero")] if heads else []
    with torch.no_grad(), attnkit.patch(model, "dense", analyses=analyses):
        loss, exact = item_scores(model, batches)
    return float(loss.mean()), float(exact.double().mean())


def random_head_sets(
    n_layers: int, n_heads: int, size: int, count: int, seed: int, exclude: Sequence[Head] = ()
) -> list[list[Head]]:
    """``count`` seeded random sets of ``size`` heads, drawn without replacement from the
    heads not in ``exclude``.

    :raises ValueError: naming ``size`` when fewer heads than that are left to draw from.
    """
    pool = [(ly, h) for ly in range(n_layers) for h in range(n_heads) if (ly, h) not in set(exclude)]
    if size > len(pool):
        raise ValueError(f"size {size} exceeds the {len(pool)} heads left after excluding {len(exclude)}")
    rng = random.Random(seed)
    return [sorted(rng.sample(pool, size)) for _ in range(count)]
