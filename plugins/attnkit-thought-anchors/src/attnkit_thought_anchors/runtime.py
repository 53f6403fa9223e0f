"""The run-time object of ``thought_anchors`` for ``attnkit.patch(model, analyses=[...])``.

It reads the prefill attention pattern of every layer and reduces each one at once to
sentence x sentence block means (so a ``T x T`` pattern per layer is never kept), then
:meth:`SentenceAttention.result` gives vertical scores, kurtosis and receiver heads.

>>> sa = SentenceAttention(spans=[(70, 82), (82, 95), (95, 120)])  # doctest: +SKIP
>>> with attnkit.patch(model, analyses=[sa]):  # doctest: +SKIP
...     model(input_ids=ids)
>>> sa.result().receiver_heads  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from attnkit.hookspecs import hookimpl
from attnkit_thought_anchors.params import ThoughtAnchorsParams

__all__ = ["SITE", "SentenceAttention", "SentenceAttentionResult", "build"]

SITE = "blocks.{l}.attn.hook_pattern@prefill"


@dataclass(frozen=True)
class SentenceAttentionResult:
    """Sentence-level attention of one sequence.

    :ivar matrices: ``(L, H, n, n)`` float64 block means (row = attending sentence).
    :ivar vertical: ``(L, H, n)`` vertical scores (NaN for the last ``P`` sentences).
    :ivar kurtosis: ``(L, H)`` kurtosis of each head's vertical scores.
    :ivar receiver_heads: top-k ``(layer, head)`` by kurtosis.
    :ivar receiver_scores: ``(n,)`` mean vertical score over the receiver heads.
    """

    matrices: torch.Tensor
    vertical: torch.Tensor
    kurtosis: torch.Tensor
    receiver_heads: list[tuple[int, int]]
    receiver_scores: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        def fl(x: torch.Tensor) -> list[Any]:
            return [None if v != v else float(v) for v in x.flatten().tolist()]

        return {
            "kurtosis": [fl(row) for row in self.kurtosis],
            "receiver_heads": [list(h) for h in self.receiver_heads],
            "receiver_scores": fl(self.receiver_scores),
        }


class SentenceAttention:
    """Capture of the prefill patterns of every layer, reduced to sentence matrices.

    :param params: analysis parameters (``proximity_ignore``, ``control_depth``, ``top_k``).
    :param spans: absolute token spans ``[(start, end), ...]`` of the sentences; ``None``
        makes every token a sentence of its own.
    :param batch: which sequence of a batch to read.
    """

    name = "thought_anchors"

    def __init__(
        self,
        params: ThoughtAnchorsParams | None = None,
        spans: Sequence[tuple[int, int]] | None = None,
        batch: int = 0,
    ) -> None:
        self.params = params or ThoughtAnchorsParams()
        if not isinstance(self.params, ThoughtAnchorsParams):
            raise TypeError(f"params must be a ThoughtAnchorsParams, got {type(self.params).__name__}")
        self.spans = None if spans is None else [(int(s), int(e)) for s, e in spans]
        self.batch = batch
        self.matrices: dict[int, torch.Tensor] = {}

    def __repr__(self) -> str:
        n = "tokens" if self.spans is None else len(self.spans)
        return f"{type(self).__name__}(sentences={n}, params={self.params})"

    @hookimpl
    def attnkit_sites(self) -> list[str]:
        return [SITE]

    @hookimpl
    def attnkit_capture(self, site: str, layer: int | None, tensor: torch.Tensor) -> None:
        from attnkit_thought_anchors.receivers import sentence_matrix

        if layer is None or not site.endswith("attn.hook_pattern"):
            return
        if tensor.dim() != 4 or tensor.shape[-1] != tensor.shape[-2]:
            raise ValueError(f"{site}: expected a prefill pattern (B, H, T, T), got {tuple(tensor.shape)}")
        if not 0 <= self.batch < tensor.shape[0]:
            raise ValueError(f"batch={self.batch} out of range for a batch of {tensor.shape[0]}")
        t = tensor.shape[-1]
        spans = self.spans if self.spans is not None else [(k, k + 1) for k in range(t)]
        # a later prefill (a new sequence) replaces the earlier one
        self.matrices[layer] = sentence_matrix(tensor[self.batch].detach(), spans).cpu()

    def reset(self) -> None:
        self.matrices.clear()

    def result(self) -> SentenceAttentionResult | None:
        """Vertical scores, kurtosis and receiver heads of the last prefill (``None`` before
        any). Layers that were not patched are left out (their index is not a row)."""
        from attnkit_thought_anchors.receivers import kurtosis, receiver_heads, receiver_scores, vertical_scores

        if not self.matrices:
            return None
        m = torch.stack([self.matrices[layer] for layer in sorted(self.matrices)])
        v = vertical_scores(m, self.params.proximity_ignore, self.params.control_depth)
        k = kurtosis(v)
        heads = receiver_heads(k, self.params.top_k)
        rec = receiver_scores(v, heads) if heads else torch.full((m.shape[-1],), float("nan"), dtype=torch.float64)
        return SentenceAttentionResult(m, v, k, heads, rec)


def build(params: ThoughtAnchorsParams | None = None) -> SentenceAttention:
    """The spec's factory: a fresh :class:`SentenceAttention` (every token a sentence until
    spans are set)."""
    return SentenceAttention(params)
