"""The tiny GPT the analysis trains: a transformers ``LlamaForCausalLM`` (so
:func:`attnkit.patch` and every run-time site work on it) over ASCII bytes, pretrained on
Python's documentation, then post-trained (SFT) on written-out addition.

Training is seeded: the same seed, thread count and parameters give the same weights on CPU.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from attnkit_thinking_sparks.tasks import ByteTokenizer

__all__ = ["Checkpoint", "TaskBatch", "build_tiny_gpt", "encode_items", "lm_windows", "train_steps"]

IGNORE = -100


@dataclass
class Checkpoint:
    """A named copy of the weights.

    :ivar name: ``"base"``, ``"sft-150"`` ...
    :ivar step: post-training steps taken (0 for the base model).
    :ivar state: the ``state_dict`` (cloned tensors).
    """

    name: str
    step: int
    state: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class TaskBatch:
    """Token ids of task items with the target positions marked.

    :ivar ids: ``(N, T)`` int64, prompt then target.
    :ivar labels: ``(N, T)`` int64: the next token where a target token is predicted, else -100
        (``labels[:, t]`` is the token at ``t + 1``).
    """

    ids: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def subset(self, index: torch.Tensor | slice) -> TaskBatch:
        return TaskBatch(self.ids[index], self.labels[index])


def build_tiny_gpt(n_layers: int = 3, d_model: int = 64, n_heads: int = 4, seed: int = 0, max_len: int = 128) -> Any:
    """A randomly initialised transformers Llama over the 128 ASCII bytes: ``n_layers``
    blocks, ``n_heads`` query heads (as many KV heads), head dim ``d_model // n_heads``, MLP
    ``4 * d_model``, tied embeddings, float32.

    :raises ValueError: naming ``d_model`` when it is not a multiple of ``n_heads`` (or the
        head dim is odd, which RoPE cannot rotate).
    """
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads}) with an even head dim")
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=ByteTokenizer().vocab_size,
        hidden_size=d_model,
        intermediate_size=4 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ByteTokenizer().eos_token_id,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(config)
    model.set_attn_implementation("sdpa")
    return model.float().eval()


def encode_items(items: Sequence[tuple[str, str]], tokenizer: Any = None) -> TaskBatch:
    """Encode ``(prompt, target)`` items with the byte tokenizer; targets are scored.

    :raises ValueError: naming ``items`` when they are empty or differ in length (the task
        generators make equal lengths; a batch is never padded).
    """
    tok = tokenizer or ByteTokenizer()
    if not items:
        raise ValueError("items must not be empty")
    rows, labels = [], []
    for prompt, target in items:
        p, t = tok.encode(prompt), tok.encode(target)
        ids = p + t
        lab = [IGNORE] * len(ids)
        for i in range(len(p) - 1, len(ids) - 1):
            lab[i] = ids[i + 1]
        rows.append(ids)
        labels.append(lab)
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(f"items must encode to one length, got lengths {lengths}")
    return TaskBatch(torch.tensor(rows), torch.tensor(labels))


def lm_windows(text: str, n: int, length: int, generator: torch.Generator) -> TaskBatch:
    """``n`` random windows of ``length + 1`` bytes of ``text``; every next byte is a label."""
    data = torch.tensor(ByteTokenizer().encode(text))
    if len(data) <= length + 1:
        raise ValueError(f"text of {len(data)} bytes is too short for windows of {length + 1}")
    start = torch.randint(0, len(data) - length - 1, (n,), generator=generator)
    win = torch.stack([data[s : s + length + 1] for s in start.tolist()])
    labels = win.clone()
    labels[:, :-1] = win[:, 1:]
    labels[:, -1] = IGNORE
    return TaskBatch(win, labels)


def token_losses(model: Any, batch: TaskBatch) -> torch.Tensor:
    """``(N, T)`` float cross-entropy per position (0 where ``labels == -100``)."""
    logits = model(batch.ids).logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), batch.labels.reshape(-1), ignore_index=IGNORE, reduction="none"
    )
    return ce.reshape(batch.labels.shape)


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_steps(
    model: Any,
    batches: Callable[[int], TaskBatch],
    steps: int,
    *,
    lr: float,
    seed: int,
    checkpoint_at: Iterable[int] = (),
    name: str = "sft",
    progress: Callable[..., Any] | None = None,
) -> tuple[list[float], list[Checkpoint]]:
    """AdamW (weight decay 0.01, warmup then cosine to lr/10, gradient clip 1) for ``steps``
    steps on ``batches(step)``; mean target cross-entropy is the loss.

    :param checkpoint_at: step counts after which a :class:`Checkpoint` ``f"{name}-{step}"`` is
        kept.
    :returns: ``(losses per step, checkpoints)``; the model ends in eval mode.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    keep = set(checkpoint_at)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, min(50, steps // 10))
    losses: list[float] = []
    checkpoints: list[Checkpoint] = []
    model.train()
    bar = progress(range(steps), desc=f"train {name}", leave=False) if progress else range(steps)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr, warmup)
        batch = batches(step)
        ce = token_losses(model, batch)
        loss = ce.sum() / (batch.labels != IGNORE).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if hasattr(bar, "set_postfix") and step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step + 1 in keep:
            checkpoints.append(Checkpoint(f"{name}-{step + 1}", step + 1, copy.deepcopy(model.state_dict())))
    model.eval()
    return losses, checkpoints
